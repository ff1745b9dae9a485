package main

// The background work of a running relay: dedup expiry and page release (maintain), and
// watching the config file (watchFile).

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// maintain expires old dedup keys in small transactions (every minute) and hands the spool's
// mapped pages back to the OS whenever the process's file-backed resident memory has grown by
// releaseAbove since start (checked every 100 ms; every second where that cannot be read): a
// sink draining a backlog reads tens of MiB of spool a second, and resident memory must stay
// flat however large the backlog on disk grows.
func (s *server) maintain(ctx context.Context) {
	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	// The baseline is taken with the spool's pages released, so that what Open read (a
	// migration, a journal replay) does not raise the ceiling.
	if err := s.storage.releaseMemory(); err != nil {
		s.log.Warn("release spool memory", "err", err)
	}
	base, measured := fileResident()
	for n := 0; ; n++ {
		if n%int(time.Minute/tick) == 0 {
			for {
				// A minute of slack: a request is judged at the time it started, which
				// may be a little behind the clock here.
				n, err := s.storage.store.ExpireDedup(time.Now().Add(-time.Minute), 5000)
				if err != nil {
					s.log.Error("expire dedup keys", "err", err)
				}
				if n < 5000 {
					break
				}
			}
		}
		release := n%int(time.Second/tick) == 0
		if measured {
			rss, ok := fileResident()
			release = ok && rss > base+releaseAbove
		}
		if release {
			if err := s.storage.releaseMemory(); err != nil {
				s.log.Warn("release spool memory", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// releaseAbove is how much file-backed resident memory (mostly spool pages) maintain lets
// accumulate before it releases the spool's pages.
const releaseAbove = 16 << 20

// fileResident returns the process's file-backed (and shared) resident memory in bytes, read
// from /proc/self/statm; ok is false where that file does not exist.
func fileResident() (bytes int64, ok bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	pages, err := statmShared(b)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// statmShared parses the third field of /proc/<pid>/statm: resident shared pages, which are
// the file-backed ones (RssFile + RssShmem).
func statmShared(b []byte) (int64, error) {
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return 0, fmt.Errorf("statm: %d fields", len(f))
	}
	return strconv.ParseInt(f[2], 10, 64)
}

// watchFile reports on the returned channel when path's size or modification time changes,
// checking every interval (0: never). Polling keeps it dependency-free and works for files
// replaced by rename (editors, Kubernetes ConfigMap symlink swaps).
func watchFile(ctx context.Context, path string, interval time.Duration) <-chan struct{} {
	ch := make(chan struct{}, 1)
	if interval <= 0 {
		return ch
	}
	stamp := func() string {
		fi, err := os.Stat(path)
		if err != nil {
			return "missing"
		}
		return fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	}
	last := stamp()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if now := stamp(); now != last {
				last = now
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}()
	return ch
}
