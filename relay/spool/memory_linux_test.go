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

// A backlog read back with the memory bounded leaves no more of the file resident than the
// bound, though every item's page is read (and faulted in with its neighbours); unbounded, the
// same reads leave tens of MiB.
func TestSpool_BoundMemory(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "spool.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := bytes.Repeat([]byte("x"), 1000)
	for i := 0; i < 40000; i += 1000 { // ~40 MiB of items, several to a page
		items := make([]Item, 1000)
		for j := range items {
			items[j] = Item{Key: fmt.Sprint("k", i+j), Data: data, Sinks: []string{"s"}}
		}
		if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
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
