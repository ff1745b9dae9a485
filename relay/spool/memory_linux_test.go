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
