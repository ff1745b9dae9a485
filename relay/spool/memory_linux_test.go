package spool

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// rssFile returns the file-backed resident memory of this process in KiB.
func rssFile(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

func TestSpool_ReleaseMemory(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte("x"), 4096)
	for i := 0; i < 8000; i += 1000 { // ~32 MiB
		items := make([]Item, 1000)
		for j := range items {
			items[j] = Item{Key: fmt.Sprint("k", i+j), Data: data, Sinks: []string{"s"}}
		}
		if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	var after uint64 // read everything back through the map: its pages become resident
	for {
		ds, err := s.Ready("s", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		after = ds[len(ds)-1].Seq
	}
	before := rssFile(t)
	if err := s.ReleaseMemory(); err != nil {
		t.Fatal(err)
	}
	released := rssFile(t)
	t.Logf("RssFile %d KiB -> %d KiB", before, released)
	if before-released < 16<<10 {
		t.Errorf("RssFile went from %d KiB to %d KiB, want at least 16 MiB released", before, released)
	}
	if ds, err := s.Ready("s", 0, 10); err != nil || len(ds) != 10 || !bytes.Equal(ds[0].Data, data) {
		t.Fatalf("spool unreadable after release: %v", err)
	}
}

func TestStatmShared(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"6943 1210 834 252 0 1068 0\n", 834, true},
		{"1 2", 0, false},
		{"1 2 x 4", 0, false},
	}
	for _, tt := range tests {
		got, err := statmShared([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("statmShared(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// openBacklog opens a spool in a temporary directory holding a backlog of 40000 items of
// 1000 bytes for sink "s" (~40 MiB, several to a page), and returns it with the items' data.
func openBacklog(t *testing.T) (*Spool, []byte) {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	data := bytes.Repeat([]byte("x"), 1000)
	for i := 0; i < 40000; i += 1000 {
		items := make([]Item, 1000)
		for j := range items {
			items[j] = Item{Key: fmt.Sprint("k", i+j), Data: data, Sinks: []string{"s"}}
		}
		if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return s, data
}

// A backlog read back with the memory bounded leaves no more of the file resident than the
// bound, though every item's page is read (and faulted in with its neighbours); unbounded, the
// same reads leave tens of MiB.
func TestSpool_BoundMemory(t *testing.T) {
	s, data := openBacklog(t)
	if _, err := s.Stats(); err != nil { // every frame applied: Ready reads the file
		t.Fatal(err)
	}
	readAll := func() int {
		n := 0
		var after uint64
		for {
			ds, err := s.Ready("s", after, 256)
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) == 0 {
				return n
			}
			for _, d := range ds {
				if !bytes.Equal(d.Data, data) {
					t.Fatalf("delivery %d: data changed", d.Seq)
				}
			}
			n += len(ds)
			after = ds[len(ds)-1].Seq
		}
	}
	const bound = 4 << 20
	if err := s.BoundMemory(bound); err != nil {
		t.Fatal(err)
	}
	base := rssFile(t)
	if n := readAll(); n != 40000 {
		t.Fatalf("read %d deliveries, want 40000", n)
	}
	bounded := rssFile(t) - base
	// Unbounded, the same reads for comparison (so that the test shows what it guards).
	if err := s.BoundMemory(0); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseMemory(); err != nil {
		t.Fatal(err)
	}
	base = rssFile(t)
	readAll()
	unbounded := rssFile(t) - base
	t.Logf("RssFile growth over 40000 reads: %d KiB bounded by %d KiB, %d KiB unbounded", bounded, bound>>10, unbounded)
	if bounded > bound>>10+2<<10 {
		t.Errorf("RssFile grew by %d KiB with a bound of %d KiB", bounded, bound>>10)
	}
	if unbounded < 16<<10 {
		t.Errorf("RssFile grew by only %d KiB unbounded: the test reads too little to show the bound", unbounded)
	}
}

// One write transaction that reads the whole file (as the dedup index's sweep reads hundreds
// of partitions in one) keeps the file's resident pages within the bound when it calls
// checkMemoryIn as it goes, and what it read before a release still reads the same after it;
// without the calls the same transaction leaves tens of MiB resident until it ends.
func TestSpool_BoundMemoryInsideWriteTransaction(t *testing.T) {
	s, data := openBacklog(t)
	if _, err := s.Stats(); err != nil { // every frame applied: the items are in the file
		t.Fatal(err)
	}
	// readAll reads every item in one write transaction, calling checkMemoryIn after every
	// 256 when check is set, and returns the most the file's resident pages grew meanwhile.
	readAll := func(check bool) (grew int) {
		base := rssFile(t)
		err := s.update(func(tx *bolt.Tx) error {
			var first []byte // a value read before any release, compared at the end
			n := 0
			c := openBuckets(tx).items.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if first == nil {
					first = v
				}
				if n++; n%256 == 0 {
					grew = max(grew, rssFile(t)-base)
					if check {
						s.checkMemoryIn(tx)
					}
				}
			}
			if n < 40000 || !bytes.Contains(first, data) {
				return fmt.Errorf("read %d items; the first no longer holds its data", n)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return grew
	}
	const bound = 4 << 20
	if err := s.BoundMemory(bound); err != nil {
		t.Fatal(err)
	}
	bounded := readAll(true)
	if err := s.BoundMemory(0); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseMemory(); err != nil {
		t.Fatal(err)
	}
	unbounded := readAll(false)
	t.Logf("RssFile growth inside one write transaction reading ~40 MiB: %d KiB checked (bound %d KiB), %d KiB unchecked", bounded, bound>>10, unbounded)
	// 256 items between checks are ~256 KiB of pages, faulted in 64 KiB at a time.
	if bounded > bound>>10+2<<10 {
		t.Errorf("RssFile grew by %d KiB with a bound of %d KiB", bounded, bound>>10)
	}
	if unbounded < 16<<10 {
		t.Errorf("RssFile grew by only %d KiB unchecked: the test reads too little to show the bound", unbounded)
	}
}
