package spool

import (
	"bytes"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// freelistSpool returns the path of a spool closed cleanly after deliveries freed pages, and
// the meta page its next Open uses.
func freelistSpool(t *testing.T) (string, boltMeta) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 4 {
		var items []Item
		for i := range 200 {
			items = append(items, Item{Key: fmt.Sprintf("k%d.%d", round, i), Data: []byte(strings.Repeat("x", 900)), Sinks: []string{"a"}})
		}
		mustAccept(t, s, t0, items...)
		s.apply.waitApplied()
		var seqs []uint64
		for _, d := range mustReady(t, s, "a", 0, 150) {
			seqs = append(seqs, d.Seq)
		}
		if err := s.Done("a", seqs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	chk, err := checkBoltFile(path, nil)
	if err != nil || len(chk.damage) > 0 {
		t.Fatalf("check: %v %v", err, chk.damage)
	}
	return path, *chk.use
}

// TestClose_KeepsFreelist: a clean Close leaves bbolt's freelist in the file, so that the next
// Open reads it rather than reading every page of the tree to rebuild it; the spool's commits
// after that Open drop it again (they do not write it), and the file checks out at every step.
func TestClose_KeepsFreelist(t *testing.T) {
	t.Parallel()
	path, m := freelistSpool(t)
	if m.freelist == boltNoFreelist {
		t.Fatal("the closed spool file has no freelist")
	}
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(mustReady(t, s, "a", 0, 1000)); n != 4*50 {
		t.Fatalf("%d deliveries ready after reopening, want 200", n)
	}
	if free := s.db.Stats().FreePageN; free == 0 {
		t.Fatal("no free pages known after the open: the freelist read was empty")
	}
	if err := settle(s.db); err != nil { // one of the spool's own commits
		t.Fatal(err)
	}
	chk, err := checkBoltFile(path, nil)
	if err != nil || len(chk.damage) > 0 {
		t.Fatalf("check: %v %v", err, chk.damage)
	}
	if chk.use.freelist != boltNoFreelist {
		t.Fatal("a commit of the open spool wrote the freelist")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOpen_FreelistOverLivePages: a kept freelist that lists a page the tree uses (bbolt would
// write over it), or lists a page twice, makes the file damaged: Open refuses it.
func TestOpen_FreelistOverLivePages(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		set  func(ids []byte, root uint64)
		want string
	}{
		{"the root page", func(ids []byte, root uint64) { ne.PutUint64(ids, root) }, "the tree uses it"},
		{"a page twice", func(ids []byte, _ uint64) { copy(ids[8:16], ids[:8]) }, "listed twice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path, m := freelistSpool(t)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			ps := int64(m.pageSize)
			page := make([]byte, ps)
			if _, err := f.ReadAt(page, int64(m.freelist)*ps); err != nil {
				t.Fatal(err)
			}
			if n := ne.Uint16(page[10:]); n < 2 || n == 0xFFFF {
				t.Fatalf("freelist of %d ids: want 2 to 0xFFFE", n)
			}
			tt.set(page[boltPageHeader:], m.root)
			if _, err := f.WriteAt(page, int64(m.freelist)*ps); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
			s, err := Open(path, Options{})
			if err == nil {
				_ = s.Close()
				t.Fatal("Open took a file whose freelist lists a page in use")
			}
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v; want ErrDamaged saying %q", err, tt.want)
			}
		})
	}
}

// TestCheckBolt_WrappingPageIDs: a meta page with a valid checksum whose high water mark and
// root are so large that their byte offsets wrap round 2^64 onto real pages (whose header is
// forged to match) is damage, in the check and in Recover's tolerant walk, never a panic.
func TestCheckBolt_WrappingPageIDs(t *testing.T) {
	t.Parallel()
	path, m := freelistSpool(t)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := uint64(m.pageSize)
	wrap := (1 << 63) / ps * 2 // (wrap+id)*ps == id*ps in uint64 (ps a power of two)
	root := wrap + m.root
	meta := raw[m.page*int(ps)+boltPageHeader:]
	ne.PutUint64(meta[16:], root)
	ne.PutUint64(meta[40:], 2*wrap)
	h := fnv.New64a()
	_, _ = h.Write(meta[:56])
	ne.PutUint64(meta[56:], h.Sum64())
	ne.PutUint64(raw[m.root*ps:], root) // the real root page says it is the wrapped id
	for _, tolerant := range []bool{false, true} {
		c, _ := checkBolt(path, bytes.NewReader(raw), int64(len(raw)), nil, tolerant)
		if len(c.damage) == 0 {
			t.Fatalf("tolerant %v: no damage found", tolerant)
		}
		t.Logf("tolerant %v: %s", tolerant, c.damage[0].What)
	}
}
