package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// corruptBase is a spool as a crash leaves it, copied to dir: frames applied to the file and
// frames only in the journal, over several small segments.
type corruptBase struct {
	path    string            // the spool file of the pristine copy
	data    map[string]string // acknowledged item data by key
	applied uint64            // the file's applied LSN
	segs    []*segScan        // the pristine journal
	frameOf map[string]frameLoc
}

// frameLoc is where an item's frame lies in the pristine journal.
type frameLoc struct {
	seg      int
	off, end int
	lsn      uint64
}

// newCorruptBase accepts nApplied items and waits for their frames to reach the file, then
// holds the file's commits, accepts nPending more and copies the spool as a crash would leave
// it. Segments are made small, so the frames span several.
func newCorruptBase(t *testing.T, nApplied, nPending int) *corruptBase {
	t.Helper()
	s, path := openTest(t, Options{ApplyDelay: time.Nanosecond, test: testHooks{segmentSize: 700}})
	b := &corruptBase{data: map[string]string{}, frameOf: map[string]frameLoc{}}
	accept := func(i int) {
		k := fmt.Sprintf("wa:msg:shop:wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA%03d", i)
		d := fmt.Sprintf(`{"messaging_product":"whatsapp","messages":[{"id":"%s","text":{"body":"order %d"}}]}`, k, i)
		mustAccept(t, s, t0.Add(time.Duration(i)*time.Second), item(k, d))
		b.data[k] = d
	}
	for i := range nApplied {
		accept(i)
	}
	s.apply.waitApplied()
	release := holdCommits(t, s)
	for i := nApplied; i < nApplied+nPending; i++ {
		accept(i)
	}
	b.path = copySpool(t, path)
	release()

	db, err := bolt.Open(b.path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		b.applied = decUint(tx.Bucket(bucketMeta).Get(metaJournalLSN))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	js, err := scanJournal(journalDir(b.path))
	if err != nil {
		t.Fatal(err)
	}
	b.segs = js.segs
	for si, ss := range js.segs {
		if len(ss.bad) > 0 {
			t.Fatalf("pristine segment %s has bad ranges %v", ss.path, ss.bad)
		}
		for fi, f := range ss.frames {
			end := ss.size
			if fi+1 < len(ss.frames) {
				end = ss.offs[fi+1]
			}
			for _, it := range f.items {
				b.frameOf[it.key] = frameLoc{seg: si, off: ss.offs[fi], end: end, lsn: f.lsn}
			}
		}
	}
	if nPending > 0 && len(js.segs) < 3 {
		t.Fatalf("%d segments; the test wants at least 3", len(js.segs))
	}
	return b
}

// copyTo copies the pristine spool into a new directory and returns the copy's spool file.
func (b *corruptBase) copyTo(t *testing.T) string {
	t.Helper()
	to := filepath.Join(t.TempDir(), "spool.db")
	copyFile(t, b.path, to)
	if err := os.MkdirAll(journalDir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, ss := range b.segs {
		copyFile(t, ss.path, filepath.Join(journalDir(to), filepath.Base(ss.path)))
	}
	return to
}

// damageCase is one way of damaging one segment.
type damageCase struct {
	seg   int
	pos   int
	trunc bool // truncate the segment at pos; else flip the byte at pos
}

func (c damageCase) String() string {
	if c.trunc {
		return fmt.Sprintf("segment %d truncated at %d", c.seg, c.pos)
	}
	return fmt.Sprintf("segment %d byte %d flipped", c.seg, c.pos)
}

// positions picks the offsets of a segment to damage: for each frame, three of its header
// bytes (length, checksum), first payload byte, a middle one and last byte, rotating with the
// frame so that the frames together cover every kind.
func positions(ss *segScan) []int {
	var out []int
	for fi, off := range ss.offs {
		end := ss.size
		if fi+1 < len(ss.offs) {
			end = ss.offs[fi+1]
		}
		kinds := []int{off, off + 3, off + 4, off + 7, off + 8, (off + end) / 2, end - 1}
		for k := range 3 {
			out = append(out, kinds[(fi*3+k)%len(kinds)])
		}
	}
	return out
}

// corruptFigures counts what the damage cost across the cases.
type corruptFigures struct {
	cases, refused, opened                int
	acked, delivered                      int
	lostDamaged, lostTorn, lostSilent     int
	deliveredAltered, setAsideMissingFile int
}

// TestJournal_Corruption damages the journal of a crashed spool at many positions: a flipped
// byte in every frame header byte and a stride through the payloads, and a truncation at every
// frame boundary and inside every frame, in every segment (the oldest holds applied and
// unapplied frames, the newest only unapplied ones; a second spool has only applied frames).
// For each, Open either takes the spool and every acknowledged change is delivered, or it
// refuses with ErrDamaged, and Recover then delivers every change whose frame is intact or
// applied and sets the damaged segment aside. The only loss allowed is a torn tail: a
// truncation inside the newest segment, which is what a crash in the middle of a write
// leaves.
func TestJournal_Corruption(t *testing.T) {
	t.Parallel()
	var fig corruptFigures
	for _, shape := range []struct {
		name               string
		nApplied, nPending int
	}{
		{"mixed", 14, 16},
		{"applied", 20, 0},
	} {
		t.Run(shape.name, func(t *testing.T) {
			b := newCorruptBase(t, shape.nApplied, shape.nPending)
			var cases []damageCase
			for si, ss := range b.segs {
				for _, p := range positions(ss) {
					cases = append(cases, damageCase{seg: si, pos: p})
				}
				for fi, off := range ss.offs {
					end := ss.size
					if fi+1 < len(ss.offs) {
						end = ss.offs[fi+1]
					}
					cut := []int{off, off + 5, (off + end) / 2}[fi%3]
					cases = append(cases, damageCase{si, cut, true})
				}
				cases = append(cases, damageCase{si, ss.size - 1, true})
			}
			for _, c := range cases {
				b.run(t, c, &fig)
			}
		})
	}
	t.Logf("journal corruption: %d positions tried (%d refused and recovered, %d opened as they were); "+
		"%d acknowledged changes, %d delivered; lost: %d in damaged frames (reported, set aside), "+
		"%d in torn tails (truncated newest segment), %d silently; %d altered deliveries",
		fig.cases, fig.refused, fig.opened, fig.acked, fig.delivered, fig.lostDamaged, fig.lostTorn, fig.lostSilent, fig.deliveredAltered)
	if fig.lostSilent > 0 || fig.deliveredAltered > 0 || fig.setAsideMissingFile > 0 {
		t.Errorf("silent losses %d, altered deliveries %d, damaged segments not set aside %d",
			fig.lostSilent, fig.deliveredAltered, fig.setAsideMissingFile)
	}
}

// run damages a copy of b as c says and checks what Open, and Recover if Open refuses, make of
// it.
func (b *corruptBase) run(t *testing.T, c damageCase, fig *corruptFigures) {
	t.Helper()
	path := b.copyTo(t)
	seg := filepath.Join(journalDir(path), filepath.Base(b.segs[c.seg].path))
	raw, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if c.trunc {
		raw = raw[:c.pos]
	} else {
		raw[c.pos] ^= 0x5a
	}
	if err := os.WriteFile(seg, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	newest := c.seg == len(b.segs)-1
	// touched reports whether the damage reaches the frame at loc.
	touched := func(loc frameLoc) bool {
		if loc.seg != c.seg {
			return false
		}
		if c.trunc {
			return loc.end > c.pos
		}
		return c.pos >= loc.off && c.pos < loc.end
	}

	fig.cases++
	s, err := Open(path, Options{})
	refused := false
	if err != nil {
		var de *DamageError
		if !errors.Is(err, ErrDamaged) || !errors.As(err, &de) {
			t.Fatalf("%s: Open: %v, want a *DamageError", c, err)
		}
		if !strings.Contains(err.Error(), filepath.Base(seg)) {
			t.Errorf("%s: the error does not name the damaged segment: %v", c, err)
		}
		refused = true
		fig.refused++
		r, err := Recover(path, Options{})
		if err != nil {
			t.Fatalf("%s: Recover: %v", c, err)
		}
		if _, err := os.Stat(filepath.Join(r.SetAside, filepath.Base(seg))); err != nil {
			fig.setAsideMissingFile++
			t.Errorf("%s: damaged segment not set aside: %v", c, err)
		}
		if s, err = Open(path, Options{}); err != nil {
			t.Fatalf("%s: Open after Recover: %v", c, err)
		}
	} else {
		fig.opened++
	}
	got := map[string]bool{}
	for _, d := range mustReady(t, s, "a", 0, 1000) {
		got[string(d.Data)] = true
	}
	if err := s.Close(); err != nil {
		t.Fatalf("%s: Close: %v", c, err)
	}
	for k, d := range b.data {
		fig.acked++
		loc := b.frameOf[k]
		switch {
		case got[d]:
			fig.delivered++
		case refused && touched(loc) && loc.lsn > b.applied:
			fig.lostDamaged++ // reported by Open and set aside by Recover
		case !refused && newest && c.trunc && touched(loc):
			fig.lostTorn++ // the same bytes as a crash during the write leaves
		default:
			fig.lostSilent++
			t.Errorf("%s: change %s (frame %d, applied up to %d) lost (refused %v)", c, k, loc.lsn, b.applied, refused)
		}
	}
	for d := range got {
		found := false
		for _, want := range b.data {
			found = found || d == want
		}
		if !found {
			fig.deliveredAltered++
			t.Errorf("%s: delivered %q, which was never accepted", c, d)
		}
	}
}
