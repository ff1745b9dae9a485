package spool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// Item is one change offered to Accept.
type Item struct {
	// Key is the dedup key; "" means the item is never deduplicated (dead-letter replays).
	Key string
	// Data is the encoded change, stored once however many sinks need it.
	Data []byte
	// Sinks names the sinks that get one delivery each. It may be empty: the key is still
	// recorded so that a repeat is dropped. A name listed twice gets one delivery.
	Sinks []string
}

// Accept records, durably and in one journal frame shared with concurrent callers, every item
// whose Key was not seen within the dedup window (in the spool or earlier in this same call):
// the key with time now, the data, and one delivery per sink numbered with a new global
// sequence number. It returns only after the frame is fsync'd; the frame is then applied to
// the bbolt file in the background (apply.go), and Ready sees the deliveries at once.
// dup[i] reports that items[i] was dropped as a repeat. On error nothing of this call is
// stored.
//
// ctx is checked before the call joins a frame and while the spool waits for the bbolt file
// to catch up with the journal; once the call has joined a frame, Accept waits for it so that
// its answer is never ambiguous.
func (s *Spool) Accept(ctx context.Context, items []Item, now time.Time) (dup []bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if err := validateItems(items); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if len(items) == 0 {
		return []bool{}, nil
	}
	if s.closed.Load() {
		return nil, fmt.Errorf("accept: %w", ErrClosed)
	}
	if err := s.waitBacklog(ctx); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	c := &acceptCall{items: items, now: now, err: make(chan error, 1)}
	c.sinks = make([][]string, len(items))
	for i, it := range items {
		c.sinks[i] = uniqueSinks(it.Sinks)
	}
	s.jq.mu.Lock()
	if s.jq.closed {
		s.jq.mu.Unlock()
		return nil, fmt.Errorf("accept: %w", ErrClosed)
	}
	s.jq.calls = append(s.jq.calls, c)
	s.jq.cond.Signal()
	s.jq.mu.Unlock()
	if err := <-c.err; err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if s.acceptHook != nil {
		s.acceptHook(int(c.lsn))
	}
	return c.dup, nil
}

// acceptCall is one Accept call waiting for its journal frame.
type acceptCall struct {
	items []Item
	sinks [][]string // items[i].Sinks without repeats
	now   time.Time
	dup   []bool
	known []bool   // known[i]: items[i]'s key was found pending or in the file, in its window or not
	hash  [][]byte // hash[i]: dedupindex.Hash of items[i]'s key, when the file was asked about it
	lsn   uint64   // the frame that holds the call's items
	err   chan error
}

// errBehind is returned by Accept when the bbolt file stays too far behind the journal.
var errBehind = errors.New("the spool file is not keeping up with the journal")

// maxPendingBytes bounds the memory held by accepted items not yet applied to the bbolt file
// (data, keys, sink names, pendingOverhead each); Accept waits (up to maxBacklogWait) while
// it is exceeded.
const maxPendingBytes = 16 << 20

// pendingOverhead is roughly what the pending state costs per item beyond its bytes.
const pendingOverhead = 160

// maxBacklogWait is how long Accept waits for the bbolt file to catch up before it fails.
const maxBacklogWait = 5 * time.Second

// waitBacklog waits while too much accepted data is not applied yet.
func (s *Spool) waitBacklog(ctx context.Context) error {
	if !s.apply.over() {
		return nil
	}
	deadline := time.Now().Add(maxBacklogWait)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if !s.apply.over() {
			return nil
		}
		if s.closed.Load() {
			return ErrClosed
		}
		if time.Now().After(deadline) {
			return errBehind
		}
	}
}

// journalLoop writes the queued Accept calls, as many as MaxBatchSize at a time, one frame per
// group. A group starts as soon as the previous one is synced, so groups grow with the load.
func (s *Spool) journalLoop() {
	q := &s.jq
	defer close(q.done)
	for {
		q.mu.Lock()
		for len(q.calls) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.calls) == 0 {
			q.mu.Unlock()
			return
		}
		if q.delay > 0 && len(q.calls) < q.maxBatch && !q.closed {
			q.mu.Unlock()
			time.Sleep(q.delay)
			q.mu.Lock()
		}
		n := min(len(q.calls), q.maxBatch)
		group := make([]*acceptCall, n)
		copy(group, q.calls)
		clear(q.calls[:n])
		q.calls = append(q.calls[:0], q.calls[n:]...)
		q.mu.Unlock()
		err := s.journalGroup(group)
		for _, c := range group {
			c.err <- err
		}
	}
}

// journalGroup dedups the group's items, writes the new ones as one frame, syncs it, makes it
// pending and hands it to the applier. It sets each call's dup and lsn.
func (s *Spool) journalGroup(group []*acceptCall) error {
	if err := s.dedupGroup(group); err != nil {
		return err
	}
	frame, held := s.newFrame(group)
	if len(frame.items) == 0 {
		return nil // every item was a repeat: nothing to store
	}
	if err := s.jr.write(frame); err != nil {
		return err
	}
	s.apply.add(frame, held)
	return nil
}

// dedupGroup sets the dup, known and hash of every item of the group. Keys of frames not
// applied yet are checked first, the bbolt file after: a key leaves the pending set only once
// its apply is committed, so a key is always in one of them.
func (s *Spool) dedupGroup(group []*acceptCall) error {
	for _, c := range group {
		c.dup = make([]bool, len(c.items))
		c.known = make([]bool, len(c.items))
		c.hash = make([][]byte, len(c.items))
	}
	s.apply.checkPending(group)
	looked := 0
	defer func() {
		if looked > 0 {
			// The pages of the final level and of the final runs are read with pread
			// (dedupindex.SetPageFile), but L0's and the lower runs' are read through the map,
			// and each fault maps the 64 KiB around its page: a group's lookups may still map
			// MiBs of the file (BoundMemory).
			s.checkMemory()
		}
	}()
	return s.view(func(tx *bolt.Tx) error {
		dv := s.dedup.View(tx)
		defer dv.Release()
		seen := map[string]bool{}
		for _, c := range group {
			cutoff := c.now.Add(-s.window)
			for i, it := range c.items {
				if it.Key == "" || c.dup[i] {
					continue
				}
				if seen[it.Key] {
					c.dup[i] = true
					continue
				}
				seen[it.Key] = true
				c.hash[i] = dedupindex.Hash([]byte(it.Key))
				dup, known := dv.Lookup(c.hash[i], cutoff)
				looked++
				c.dup[i] = dup
				c.known[i] = c.known[i] || known
			}
		}
		return nil
	})
}

// newFrame numbers the group's new items and makes them the next journal frame, and returns
// it with the bytes its pending state will hold. It sets each call's lsn. A number is never
// given twice, even when the frame's write fails: the failed frame may still reach the disk,
// and replay must not mistake it for a later one.
func (s *Spool) newFrame(group []*acceptCall) (*jFrame, int) {
	size, held := 0, 0 // data bytes, and all the bytes the pending state holds
	for _, c := range group {
		for i, it := range c.items {
			if !c.dup[i] {
				size += len(it.Data)
				held += len(it.Data) + 2*len(it.Key) + pendingOverhead
				for _, sink := range c.sinks[i] {
					held += len(sink)
				}
			}
		}
	}
	arena := make([]byte, 0, size) // the pending items' data: the caller may reuse its buffers
	frame := &jFrame{lsn: s.jq.lastLSN + 1}
	seq := s.jq.lastSeq
	for _, c := range group {
		at := c.now.UnixNano()
		for i, it := range c.items {
			if c.dup[i] {
				continue
			}
			ji := jItem{at: at, key: it.Key, hash: c.hash[i], sinks: c.sinks[i], fresh: it.Key != "" && !c.known[i]}
			if len(ji.sinks) > 0 {
				seq++
				ji.seq = seq
				n := len(arena)
				arena = append(arena, it.Data...)
				ji.data = arena[n:len(arena):len(arena)]
			}
			frame.items = append(frame.items, ji)
		}
		c.lsn = frame.lsn
	}
	if len(frame.items) > 0 {
		s.jq.lastLSN, s.jq.lastSeq = frame.lsn, seq
	}
	return frame, held
}

// validateItems rejects items bbolt could not store, before they can fail a shared commit.
func validateItems(items []Item) error {
	for i, it := range items {
		if len(it.Key) > MaxKeyLen {
			return fmt.Errorf("item %d: dedup key is %d bytes, longer than %d", i, len(it.Key), MaxKeyLen)
		}
		if int64(len(it.Data)) > bolt.MaxValueSize {
			return fmt.Errorf("item %d: data is %d bytes, longer than %d", i, len(it.Data), bolt.MaxValueSize)
		}
		for _, sink := range it.Sinks {
			if sink == "" {
				return fmt.Errorf("item %d: empty sink name", i)
			}
			if len(sink) > MaxSinkLen {
				return fmt.Errorf("item %d: sink name is %d bytes, longer than %d", i, len(sink), MaxSinkLen)
			}
		}
	}
	return nil
}

// uniqueSinks returns sinks without repeats, in first-seen order. It does not allocate when
// there are none.
func uniqueSinks(sinks []string) []string {
	for i := 1; i < len(sinks); i++ {
		for j := 0; j < i; j++ {
			if sinks[i] == sinks[j] {
				out := make([]string, 0, len(sinks))
				seen := make(map[string]bool, len(sinks))
				for _, s := range sinks {
					if !seen[s] {
						seen[s] = true
						out = append(out, s)
					}
				}
				return out
			}
		}
	}
	return sinks
}
