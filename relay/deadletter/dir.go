package deadletter

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// replayDir is the name of the folder, inside the dead-letter directory, that the running
// relay watches for letters to deliver again.
const replayDir = "replay"

// Dir is a dead-letter directory. It holds no state besides its path: every method works on
// the files directly, so a Dir is safe for concurrent use, and several processes (the running
// relay and the deadletter CLI) may use the same directory at once.
type Dir struct {
	path   string
	replay string
}

// Open returns the dead-letter directory at dir, creating it and its replay folder (mode 0750)
// when missing.
func Open(dir string) (*Dir, error) {
	dir = filepath.Clean(dir)
	replay := filepath.Join(dir, replayDir)
	if err := os.MkdirAll(replay, 0o750); err != nil {
		return nil, fmt.Errorf("open dead-letter dir: %w", err)
	}
	return &Dir{path: dir, replay: replay}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// Write stores l as <ID>.json, atomically and durably: the letter is written to a temporary
// file in the same directory (".tmp-*", never listed), fsynced, renamed into place, and the
// directory is fsynced. Readers see either the old file or the whole new one.
//
// Write fills in l.Version, l.ID and l.DeadAt when they are zero. It requires a sink and a
// change that is valid JSON. Writing an ID that exists replaces the file, so writing the same
// letter again (after a crash between writing it and removing the delivery from the spool) is
// harmless. Write stores the attempt errors as given: redacting secrets is the caller's job.
func (d *Dir) Write(l *Letter) error {
	if l == nil {
		return errors.New("write dead letter: nil letter")
	}
	if l.Sink == "" {
		return errors.New("write dead letter: no sink")
	}
	if !json.Valid(l.Change) {
		return fmt.Errorf("write dead letter for sink %q seq %d: change is not valid JSON", l.Sink, l.Seq)
	}
	switch l.Version {
	case 0:
		l.Version = Version
	case Version:
	default:
		return fmt.Errorf("write dead letter: version %d, this build writes version %d", l.Version, Version)
	}
	if l.ID == "" {
		l.ID = d.freeID(l)
	}
	if err := checkID(l.ID); err != nil {
		return fmt.Errorf("write dead letter: %w", err)
	}
	if l.DeadAt.IsZero() {
		l.DeadAt = time.Now().UTC()
	}
	data, err := encode(l)
	if err != nil {
		return fmt.Errorf("write dead letter %s: %w", l.ID, err)
	}
	if err := writeFileAtomic(d.path, l.ID+".json", data); err != nil {
		return fmt.Errorf("write dead letter %s: %w", l.ID, err)
	}
	return nil
}

// freeID returns the generated id of l, or, when a letter of another change already has it (a
// spool started anew reuses sequence numbers), the same id with a counter: a letter never
// replaces another change's letter. The same change's letter is replaced (Write is idempotent).
func (d *Dir) freeID(l *Letter) string {
	base := generateID(l.Sink, l.Seq)
	id := base
	for n := 2; n <= 1000; n++ {
		old, err := d.Get(id)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return id
		case errors.Is(err, ErrInvalidID):
			return base // too long for a counter: Write reports it, or replaces base
		case err == nil && old.Sink == l.Sink && old.ChangeID == l.ChangeID:
			return id
		}
		// Taken by another change's letter, or by an unreadable file: try the next name.
		id = fmt.Sprintf("%s-%d", base, n)
	}
	return id
}

// Get reads the letter named id. The error wraps fs.ErrNotExist when there is none (a letter
// queued for replay is no longer there; see Pending), ErrInvalidID when id cannot name a
// letter (a path separator, "..") and ErrCorrupt when the file is not a readable letter.
func (d *Dir) Get(id string) (*Letter, error) {
	if err := checkID(id); err != nil {
		return nil, fmt.Errorf("get dead letter: %w", err)
	}
	return readLetter(d.path, id+".json", id)
}

// Remove deletes the letter named id and fsyncs the directory. The error wraps fs.ErrNotExist
// when there is no such letter.
func (d *Dir) Remove(id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("remove dead letter: %w", err)
	}
	if err := os.Remove(filepath.Join(d.path, id+".json")); err != nil {
		return fmt.Errorf("remove dead letter: %w", err)
	}
	if err := syncDir(d.path); err != nil {
		return fmt.Errorf("remove dead letter %s: %w", id, err)
	}
	return nil
}

// Filter selects letters in List. Zero fields match any letter.
type Filter struct {
	// Sink matches letters of this sink.
	Sink string
	// Rule matches letters whose Rules include this rule.
	Rule string
	// Since matches letters with DeadAt at or after it.
	Since time.Time
	// Until matches letters with DeadAt before it.
	Until time.Time
	// IDs, when set, restricts List to these letters; each one that does not exist is reported
	// in List's error (wrapping fs.ErrNotExist).
	IDs []string
}

// Match reports whether l is selected by f's Sink, Rule, Since and Until (IDs aside).
func (f *Filter) Match(l *Letter) bool { return f.match(l) }

func (f *Filter) match(l *Letter) bool {
	return (f.Sink == "" || l.Sink == f.Sink) &&
		(f.Rule == "" || slices.Contains(l.Rules, f.Rule)) &&
		(f.Since.IsZero() || !l.DeadAt.Before(f.Since)) &&
		(f.Until.IsZero() || l.DeadAt.Before(f.Until))
}

// List returns the letters that match f, sorted by DeadAt, then ID. Letters queued for replay
// are not listed (see Pending).
//
// One bad file does not hide the others: List returns every letter it could read together
// with an error joining (errors.Join) one error per file it could not read, invalid name or
// missing requested ID, each naming the file or id. Callers should show the letters and report
// the error; errors.Is finds ErrCorrupt, ErrInvalidID and fs.ErrNotExist in it. When the
// directory itself cannot be read, List returns no letters and that error.
func (d *Dir) List(f Filter) ([]*Letter, error) {
	if len(f.IDs) > 0 {
		return d.listIDs(f)
	}
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return readLetters(d.path, entries, f.match)
}

func (d *Dir) listIDs(f Filter) ([]*Letter, error) {
	var (
		letters []*Letter
		errs    []error
		seen    = make(map[string]bool, len(f.IDs))
	)
	for _, id := range f.IDs {
		if seen[id] {
			continue
		}
		seen[id] = true
		l, err := d.Get(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f.match(l) {
			letters = append(letters, l)
		}
	}
	sortLetters(letters)
	return letters, errors.Join(errs...)
}

// Count returns how many letters of sink are in the directory, or of every sink when sink is
// empty. It reads only file names, so it is cheap enough for metrics; it counts a sink's
// letters by their generated IDs ("<sink>-<20 digits>"), so letters written under a custom ID
// count only toward the total, and sinks whose sanitized names collide share a count.
func (d *Dir) Count(sink string) (int, error) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	prefix := ""
	if sink != "" {
		prefix = sinkPrefix(sink) + "-"
	}
	n := 0
	for _, e := range entries {
		id, ok := letterID(e.Name())
		if t := e.Type(); !ok || !t.IsRegular() && t&fs.ModeSymlink == 0 || checkID(id) != nil {
			continue // not a letter, or a named pipe, device… that List reports as skipped
		}
		if prefix != "" {
			seq, ok := strings.CutPrefix(id, prefix)
			if !ok || !isSeq(seq) {
				continue
			}
		}
		n++
	}
	return n, nil
}

// isSeq reports whether s is a sequence number as generated ids spell it: 20 digits.
func isSeq(s string) bool {
	if len(s) != 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// readLetters reads the letter files among entries of dir that match accepts, sorted. Files
// that vanish meanwhile (removed or queued for replay by another process) are skipped
// silently; other per-file problems are joined into the returned error.
func readLetters(dir string, entries []os.DirEntry, match func(*Letter) bool) ([]*Letter, error) {
	var (
		letters []*Letter
		errs    []error
	)
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("read dead letters: %w", err)
	}
	defer root.Close()
	for _, e := range entries {
		id, ok := letterID(e.Name())
		if !ok || e.IsDir() {
			continue
		}
		if err := checkID(id); err != nil {
			path := filepath.Join(dir, e.Name())
			errs = append(errs, fmt.Errorf("read dead letter %s: %w", path, err))
			continue
		}
		l, err := readLetterIn(root, dir, e.Name(), id)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		}
		if match == nil || match(l) {
			letters = append(letters, l)
		}
	}
	sortLetters(letters)
	return letters, errors.Join(errs...)
}

func sortLetters(letters []*Letter) {
	slices.SortFunc(letters, func(a, b *Letter) int {
		return cmp.Or(a.DeadAt.Compare(b.DeadAt), strings.Compare(a.ID, b.ID))
	})
}

// writeFileAtomic writes data to dir/name through a temporary file in dir: write, fsync,
// rename, fsync dir (Litestream's file replica client does the same). A crash leaves either
// the old file or the new one, and at worst a stray ".tmp-*" file nobody reads.
func writeFileAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, ".tmp-"+name+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	// CreateTemp makes 0600 files; let the directory's group read letters, as it can list them.
	if err = f.Chmod(0o640); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so renames and removals in it survive a crash. Windows cannot
// sync directories, and does not need to.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return f.Close()
}
