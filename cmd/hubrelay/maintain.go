package main

// The background work of a running relay: dedup expiry and the bound on spool pages (maintain), and
// watching the config file (watchFile).

import (
	"context"
	"fmt"
	"os"
	"time"
)

// maintain expires old dedup keys in small transactions (every minute), keeps an auto memory
// limit up to date with the live heap (every second; memlimit.go), and bounds the spool's
// mapped pages in the process's resident memory to releaseAbove (spool.BoundMemory: checked
// by the spool after its commits and reads of the file, and here every 100 ms for the rest,
// such as dedup lookups): a sink draining a backlog reads tens of MiB of spool a second, and
// resident memory must stay flat however large the backlog on disk grows.
func (s *server) maintain(ctx context.Context) {
	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	// The base is taken with the spool's pages released, so that what Open read (a
	// migration, a journal replay) does not raise the ceiling.
	if err := s.storage.boundMemory(releaseAbove); err != nil {
		s.log.Warn("bound spool memory", "err", err)
	}
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
		if s.memLimit != nil && n%int(time.Second/tick) == 0 {
			s.memLimit.adjust() // an auto limit follows the live heap
		}
		if err := s.storage.checkMemory(); err != nil && n%int(time.Minute/tick) == 0 {
			s.log.Warn("bound spool memory", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// releaseAbove is how much file-backed resident memory (mostly spool pages) the relay lets
// accumulate before it releases the spool's pages.
const releaseAbove = 8 << 20

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
