package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// Report is what Verify found, or what Recover did.
type Report struct {
	// Path is the spool file.
	Path string `json:"path"`
	// Segments is the number of journal segments, Frames the intact frames in them, and
	// Unapplied the intact frames not yet in the spool file, holding UnappliedItems items.
	Segments       int `json:"segments"`
	Frames         int `json:"frames"`
	Unapplied      int `json:"unapplied_frames"`
	UnappliedItems int `json:"unapplied_items"`
	// AppliedLSN is the last journal frame the spool file records.
	AppliedLSN uint64 `json:"applied_lsn"`
	// Torn lists torn tails: the last write before a crash, never acknowledged; Open drops
	// them and sets their segment aside.
	Torn []Damage `json:"torn,omitempty"`
	// Damage lists everything else that fails its checksum; Open refuses the spool while any
	// is left.
	Damage []Damage `json:"damage,omitempty"`
	// SetAside is where Recover moved the damaged files ("" when it moved none).
	SetAside string `json:"set_aside,omitempty"`
	// Lost lists, as "sink/seq", the pending deliveries Recover found in the damaged spool
	// file but could not salvage (their item's data was damaged); NOTE.txt lists them too.
	Lost []string `json:"lost,omitempty"`
}

// OK reports whether Open would take the spool as it is.
func (r *Report) OK() bool { return len(r.Damage) == 0 }

// Verify checks the spool at path without changing it: every journal frame's checksum and
// the spool file's. It returns ErrLocked while a running relay holds the spool. Damage is
// reported in the Report, not as an error.
func Verify(path string, opt Options) (*Report, error) {
	opt = opt.withDefaults()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("verify spool %s: %w", path, withoutPath(err, path))
	}
	fileDamage, err := inspectFile(path, opt)
	if err != nil {
		return nil, fmt.Errorf("verify spool %s: %w", path, err)
	}
	var applied uint64
	if len(fileDamage) == 0 {
		db, _, err := openChecked(path, &bolt.Options{ReadOnly: true, Timeout: opt.OpenTimeout}, opt.logger())
		if err != nil {
			return nil, fmt.Errorf("verify spool %s: %w", path, err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			if m := tx.Bucket(bucketMeta); m != nil {
				applied = decUint(m.Get(metaJournalLSN))
			}
			return nil
		})
		_ = db.Close()
		if err != nil {
			return nil, fmt.Errorf("verify spool %s: %w", path, err)
		}
	}
	js, err := scanJournal(journalDir(path))
	if err != nil {
		return nil, fmt.Errorf("verify spool %s: %w", path, err)
	}
	r := journalReport(path, js, applied)
	if len(fileDamage) > 0 {
		// What the journal holds is judged against a file that cannot be read: report the
		// file's damage only.
		r.Damage = fileDamage
	}
	return r, nil
}

// journalReport summarises a journal scan against the applied LSN.
func journalReport(path string, js *journalScan, applied uint64) *Report {
	r := &Report{Path: path, Segments: len(js.segs), AppliedLSN: applied, Damage: js.damage(applied)}
	for _, f := range js.frames() {
		r.Frames++
		if f.lsn > applied {
			r.Unapplied++
			r.UnappliedItems += len(f.items)
		}
	}
	for _, ss := range js.segs {
		if ss.torn {
			b := ss.bad[len(ss.bad)-1]
			r.Torn = append(r.Torn, Damage{File: ss.path, Offset: int64(b.off), Len: int64(b.end - b.off),
				What: "torn tail: the last write before a crash, never acknowledged"})
		}
	}
	return r
}

// Recover repairs a damaged spool so that Open takes it again: it applies every journal frame
// that still checks out to the spool file, then moves every journal segment that holds
// damaged bytes (or a torn tail) into a new directory next to the spool file,
// <spool file>.damaged/<UTC time>/, with a NOTE.txt that says what was wrong, and deletes the
// intact segments, which are applied. Nothing that failed its checksum is deleted. The spool
// must not be in use (ErrLocked).
func Recover(path string, opt Options) (*Report, error) {
	opt = opt.withDefaults()
	log := opt.logger()
	fr, err := recoverSpoolFile(path, opt)
	if err != nil {
		return nil, fmt.Errorf("recover spool %s: %w", path, err)
	}
	db, dedup, pageFile, applied, err := openFile(path, opt, log)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	defer closePageFile(pageFile)
	js, err := scanJournal(journalDir(path))
	if err != nil {
		return nil, fmt.Errorf("recover spool %s: %w", path, err)
	}
	r := journalReport(path, js, applied)
	r.Damage = append(fr.Damage, r.Damage...)
	r.Lost, r.SetAside = fr.Lost, fr.SetAside
	last, nitems, err := applyFrames(db, dedup, js.frames(), applied, opt.DedupWindow)
	if err != nil {
		return r, fmt.Errorf("recover spool %s: %w", path, err)
	}
	log.Info("journal frames recovered", "items", nitems, "last_lsn", last)
	var moved []string
	var note strings.Builder
	fmt.Fprintf(&note, "hubrelay spool recover, %s\n\nThese journal segments of %s held bytes that failed their checksum.\n"+
		"Every frame in them that still checked out was applied to the spool; what is listed below was not.\n\n",
		time.Now().UTC().Format(time.RFC3339), path)
	for _, ss := range js.segs {
		damaged := len(ss.bad) > 0
		for _, d := range r.Damage {
			damaged = damaged || d.File == ss.path
		}
		if damaged {
			moved = append(moved, ss.path)
		}
	}
	for _, d := range append(append([]Damage{}, r.Damage...), r.Torn...) {
		fmt.Fprintf(&note, "- %s\n", d)
	}
	if len(moved) > 0 {
		if r.SetAside, err = setAside(path, r.SetAside, moved, note.String()); err != nil {
			return r, fmt.Errorf("recover spool %s: %w", path, err)
		}
		log.Warn("damaged journal segments set aside", "dir", r.SetAside, "segments", len(moved))
	}
	if err := settle(db); err != nil {
		return r, fmt.Errorf("recover spool %s: %w", path, err)
	}
	if err := removeSegments(js, moved); err != nil {
		return r, fmt.Errorf("recover spool %s: %w", path, err)
	}
	r.AppliedLSN = last
	return r, nil
}

// recoverSpoolFile replaces the spool file at path by what checks out of it if it is damaged
// (recoverFile), under its lock; the report says what it found.
func recoverSpoolFile(path string, opt Options) (*Report, error) {
	r := &Report{Path: path}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if d, err := inspectFile(path, opt); err != nil || len(d) == 0 {
		return r, err
	}
	unlock, err := lockFile(path, true, opt.OpenTimeout)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if r.SetAside, err = recoverFile(path, "", opt, r); err != nil {
		return nil, err
	}
	opt.logger().Warn("damaged spool file set aside and rebuilt from what checked out", "dir", r.SetAside,
		"lost_deliveries", len(r.Lost))
	return r, nil
}

// setAside moves files into dir, or a new directory <spool file>.damaged/<UTC time>/ when dir
// is "", and writes note there as NOTE.txt (after what it holds); it returns the directory.
// Every step is synced.
func setAside(path, dir string, files []string, note string) (string, error) {
	if dir == "" {
		dir = filepath.Join(path+".damaged", time.Now().UTC().Format("20060102T150405.000000000Z"))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("set damaged files aside: %w", err)
	}
	if err := appendSynced(filepath.Join(dir, "NOTE.txt"), []byte(note)); err != nil {
		return "", fmt.Errorf("set damaged files aside: %w", err)
	}
	from := map[string]bool{}
	for _, f := range files {
		if err := os.Rename(f, filepath.Join(dir, filepath.Base(f))); err != nil {
			return "", fmt.Errorf("set damaged files aside: %w", err)
		}
		from[filepath.Dir(f)] = true
	}
	for d := range from {
		if err := syncDir(d); err != nil {
			return "", fmt.Errorf("set damaged files aside: %w", err)
		}
	}
	for _, d := range []string{dir, filepath.Dir(dir), filepath.Dir(path)} {
		if err := syncDir(d); err != nil {
			return "", fmt.Errorf("set damaged files aside: %w", err)
		}
	}
	return dir, nil
}

// appendSynced appends b to the file at path, creating it if needed, and fsyncs it.
func appendSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// replayJournal applies the intact frames of the journal of the spool file at path that come
// after the applied LSN, then deletes the journal's segments; a segment that ends in a torn
// tail is moved aside instead (setAside). It returns the last LSN, from which the journal
// continues. If any other part of the journal fails its checksum it changes nothing and
// returns a *DamageError.
func replayJournal(db *bolt.DB, dedup *dedupindex.Index, path string, applied uint64, window time.Duration, log *slog.Logger) (uint64, error) {
	js, err := scanJournal(journalDir(path))
	if err != nil {
		return 0, err
	}
	if d := js.damage(applied); len(d) > 0 {
		return 0, &DamageError{Path: path, Damage: d}
	}
	last, nitems, err := applyFrames(db, dedup, js.frames(), applied, window)
	if err != nil {
		return 0, err
	}
	if nitems > 0 {
		log.Info("journal replayed", "items", nitems, "last_lsn", last)
	}
	var torn []string
	for _, ss := range js.segs {
		if ss.torn {
			r := ss.bad[len(ss.bad)-1]
			log.Warn("journal segment ends in a torn frame (a crash during its write, never acknowledged); the segment is set aside",
				"segment", ss.path, "offset", r.off, "bytes", r.end-r.off)
			torn = append(torn, ss.path)
		}
	}
	if len(torn) > 0 {
		dir, err := setAside(path, "", torn, "torn tail of the newest journal segment: the last write before a crash, never acknowledged\n")
		if err != nil {
			return 0, err
		}
		log.Warn("torn journal segment set aside", "dir", dir)
	}
	if len(js.segs) > len(torn) {
		if err := settle(db); err != nil {
			return 0, fmt.Errorf("replay journal: %w", err)
		}
	}
	if err := removeSegments(js, torn); err != nil {
		return 0, err
	}
	return last, nil
}

// settle commits a transaction that changes nothing but the heartbeat, so that both of the
// file's meta pages record every frame applied so far: a journal segment is deleted only
// after that (see applier.settled).
func settle(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaHeartbeat, encTime(time.Now()))
	})
}

// persistFreelist commits a transaction that writes bbolt's freelist into the file, as the
// last one of a clean Close. The spool's commits do not write it (NoFreelistSync: it is
// rewritten whole at each commit otherwise), so bbolt rebuilds it when it opens the file, by
// reading every page of the tree through its map: the whole file resident in the process, and
// read again, at each start (2.7 GB at 100M dedup keys). With it kept, Open reads it instead;
// checkBoltFile has checked it against the pages the tree uses. The next commit drops it again.
func persistFreelist(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		db.NoFreelistSync = false // read by this transaction's Commit, under bbolt's writer lock
		return tx.Bucket(bucketMeta).Put(metaHeartbeat, encTime(time.Now()))
	})
}

// removeSegments deletes the segments of js except those in keep (already moved) and syncs
// the journal's directory.
func removeSegments(js *journalScan, keep []string) error {
	removed := 0
	for _, ss := range js.segs {
		if slices.Contains(keep, ss.path) {
			continue
		}
		if err := os.Remove(ss.path); err != nil {
			return fmt.Errorf("remove replayed journal segment: %w", err)
		}
		removed++
	}
	if removed > 0 {
		if err := syncDir(js.dir); err != nil {
			return fmt.Errorf("sync journal directory: %w", err)
		}
	}
	return nil
}

// applyFrames applies the frames after the applied LSN, in transactions of a bounded size. It
// returns the last LSN and the number of items applied.
func applyFrames(db *bolt.DB, dedup *dedupindex.Index, frames []*jFrame, applied uint64, window time.Duration) (uint64, int, error) {
	last := applied
	var todo []*jFrame
	nitems := 0
	for _, f := range frames {
		if f.lsn > last {
			todo = append(todo, f)
			nitems += len(f.items)
			last = f.lsn
		}
	}
	for len(todo) > 0 {
		n, size := 0, 0
		for n < len(todo) && (n == 0 || size+len(todo[n].items) <= 10000) {
			size += len(todo[n].items)
			n++
		}
		chunk := todo[:n]
		todo = todo[n:]
		err := db.Update(func(tx *bolt.Tx) error {
			for _, f := range chunk {
				if err := applyItems(tx, dedup, f.items, f.lsn, window, true); err != nil {
					return fmt.Errorf("frame %d: %w", f.lsn, err)
				}
			}
			return nil
		})
		if err != nil {
			return 0, 0, fmt.Errorf("replay journal: %w", err)
		}
	}
	return last, nitems, nil
}
