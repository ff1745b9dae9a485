package spool

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

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
// the bbolt file in the background (journal.go), and Ready sees the deliveries at once.
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
	s.jmu.Lock()
	if s.jclosed {
		s.jmu.Unlock()
		return nil, fmt.Errorf("accept: %w", ErrClosed)
	}
	s.jqueue = append(s.jqueue, c)
	s.jcond.Signal()
	s.jmu.Unlock()
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
	hash  [][]byte // hash[i]: dedupHash of items[i]'s key, when the file was asked about it
	lsn   uint64   // the frame that holds the call's items
	err   chan error
}

// pendingFrame is a journal frame not yet applied to the bbolt file.
type pendingFrame struct {
	lsn     uint64
	items   []jItem
	pitems  []*pendingItem // pitems[i] is items[i]'s pending item, nil if it has no delivery
	bytes   int64
	written time.Time // when it was synced to the journal
	applied bool
	// takenBy is the apply call that writes the frame (0: none yet), and snap what it writes:
	// the items with only the sinks still waiting for them. While a call holds the frame,
	// Done goes to the file, behind the apply.
	takenBy uint64
	snap    []jItem
}

// pendingKey is a dedup key of a pending frame: when it was accepted, and in which frame.
type pendingKey struct {
	at  int64
	lsn uint64
}

// pendingItem is a delivery-bearing item of a pending frame, as Ready returns it.
type pendingItem struct {
	seq   uint64
	at    time.Time
	data  []byte
	sinks []string // the sinks still waiting for it; Done removes them until the snapshot
	frame *pendingFrame
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
	s.pmu.Lock()
	over := s.pendingBytes > maxPendingBytes
	s.pmu.Unlock()
	if !over {
		return nil
	}
	deadline := time.Now().Add(maxBacklogWait)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		s.pmu.Lock()
		over := s.pendingBytes > maxPendingBytes
		s.pmu.Unlock()
		if !over {
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
	defer close(s.jdone)
	for {
		s.jmu.Lock()
		for len(s.jqueue) == 0 && !s.jclosed {
			s.jcond.Wait()
		}
		if len(s.jqueue) == 0 {
			s.jmu.Unlock()
			return
		}
		if s.delay > 0 && len(s.jqueue) < s.maxBatch && !s.jclosed {
			s.jmu.Unlock()
			time.Sleep(s.delay)
			s.jmu.Lock()
		}
		n := min(len(s.jqueue), s.maxBatch)
		group := make([]*acceptCall, n)
		copy(group, s.jqueue)
		clear(s.jqueue[:n])
		s.jqueue = append(s.jqueue[:0], s.jqueue[n:]...)
		s.jmu.Unlock()
		err := s.journalGroup(group)
		for _, c := range group {
			c.err <- err
		}
	}
}

// journalGroup dedups the group's items, writes the new ones as one frame, syncs it, makes it
// pending and hands it to queueApply. It sets each call's dup and lsn.
func (s *Spool) journalGroup(group []*acceptCall) error {
	// Keys of frames not applied yet are checked first, the bbolt file after: a key leaves
	// the pending set only once its apply is committed, so a key is always in one of them.
	s.pmu.Lock()
	for _, c := range group {
		c.dup = make([]bool, len(c.items))
		c.known = make([]bool, len(c.items))
		c.hash = make([][]byte, len(c.items))
		for i, it := range c.items {
			if it.Key == "" {
				continue
			}
			if pk, ok := s.pendingKeys[it.Key]; ok {
				c.known[i] = true
				c.dup[i] = c.now.Sub(time.Unix(0, pk.at)) < s.window
			}
		}
	}
	s.pmu.Unlock()
	err := s.view(func(tx *bolt.Tx) error {
		dv := s.dedup.view(tx)
		seen := map[string]bool{}
		for _, c := range group {
			cutoff := timeBits(c.now.Add(-s.window))
			for i, it := range c.items {
				if it.Key == "" || c.dup[i] {
					continue
				}
				if seen[it.Key] {
					c.dup[i] = true
					continue
				}
				seen[it.Key] = true
				c.hash[i] = dedupHash([]byte(it.Key))
				dup, known := dv.lookup(c.hash[i], cutoff)
				c.dup[i] = dup
				c.known[i] = c.known[i] || known
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

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
	frame := &jFrame{lsn: s.lastLSN + 1}
	seq := s.lastSeq
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
	if len(frame.items) == 0 {
		return nil // every item was a repeat: nothing to store
	}
	// A number is never given twice, even when the write fails: the failed frame may still
	// reach the disk, and replay must not mistake it for a later one.
	s.lastLSN, s.lastSeq = frame.lsn, seq
	if err := s.jr.write(frame); err != nil {
		return err
	}

	pf := &pendingFrame{lsn: frame.lsn, items: frame.items, pitems: make([]*pendingItem, len(frame.items)), bytes: int64(held), written: time.Now()}
	s.pmu.Lock()
	defer s.pmu.Unlock()
	// Until an apply call takes the frame, Done works on its items in memory (Reschedule has
	// the frame applied first); once one has, Done's call is queued behind it in the
	// committer, and goes back to memory if that apply fails.
	s.frames = append(s.frames, pf)
	for i := range pf.items {
		it := &pf.items[i]
		if it.key != "" {
			s.pendingKeys[it.key] = pendingKey{at: it.at, lsn: pf.lsn}
		}
		if it.seq != 0 {
			p := &pendingItem{seq: it.seq, at: time.Unix(0, it.at), data: it.data, sinks: slices.Clone(it.sinks), frame: pf}
			pf.pitems[i] = p
			s.pending = append(s.pending, p)
		}
	}
	s.pendingBytes += pf.bytes
	s.pendingLSN = frame.lsn
	s.queueApply()
	return nil
}

// Frames go to the file before their ApplyDelay when applyEarlyBytes wait (well under
// maxPendingBytes, so that a steady load never makes Accept wait), or when applyEarlyItems
// wait and the oldest is applyEarlyAge old: few enough items that a commit's dirty pages stay
// small (each new dedup key rewrites a page of its own in a large index, and bbolt holds them
// all until the commit), old enough that a healthy sink has delivered most of them. While the
// sinks keep up (the last apply not forced by a caller or the byte bound found at least half
// of its items delivered), waiting saves more than it costs, and frames wait for up to
// maxCommitWeight items instead.
const (
	applyEarlyBytes = 4 << 20
	applyEarlyItems = 256
	applyEarlyAge   = 50 * time.Millisecond
)

// queueApply queues an apply call in the spool file's commit, behind everything queued so far,
// unless one is already queued and has not started: that one takes, when it runs, the frames
// written until then. A call is queued only once the oldest frame not taken yet has waited
// ApplyDelay, or applyEarlyBytes or applyEarlyItems wait, or someone waits for the file
// (applyWaiters), or the spool is closing; until then applyTimer calls again when the frame
// is due. While applying fails, the retry queues it. Called with pmu held.
func (s *Spool) queueApply() {
	if s.applyQueued || s.applyFailing {
		return
	}
	var oldest *pendingFrame
	weight := 0 // items not taken yet
	for _, pf := range s.frames {
		if pf.takenBy == 0 {
			if oldest == nil {
				oldest = pf
			}
			weight += len(pf.items)
		}
	}
	if oldest == nil {
		return
	}
	due := oldest.written.Add(s.applyDelay)
	switch {
	case s.sinksKeepUp && weight >= maxCommitWeight:
		due = time.Time{}
	case !s.sinksKeepUp && weight >= applyEarlyItems:
		due = oldest.written.Add(min(s.applyDelay, applyEarlyAge))
	}
	// An apply that someone needs now does not say whether waiting pays: it takes frames
	// however young, so it does not judge whether the sinks keep up.
	forced := s.pendingBytes >= applyEarlyBytes || s.applyWaiters > 0 || s.closed.Load()
	if wait := time.Until(due); wait > 0 && !forced {
		if s.applyTimerAt.IsZero() || due.Before(s.applyTimerAt) {
			s.applyTimerAt = due
			if s.applyTimer == nil {
				s.applyTimer = time.AfterFunc(wait, s.applyDue)
			} else {
				s.applyTimer.Reset(wait)
			}
		}
		return
	}
	s.applyCalls++
	id := s.applyCalls
	var taken []*pendingFrame
	err := s.commits.submit(func(tx *bolt.Tx) error {
		taken = s.takeFrames(id, !forced)
		// A commit that reported a failure may still have reached the file (bbolt writes the
		// meta page before its last sync): a frame the file already records is not written
		// again.
		done := decUint(tx.Bucket(bucketMeta).Get(metaJournalLSN))
		for _, pf := range taken {
			if pf.lsn <= done {
				continue
			}
			if applyFault != nil {
				if err := applyFault(); err != nil {
					return err
				}
			}
			if err := applyItems(tx, s.dedup, pf.snap, pf.lsn, s.window); err != nil {
				return fmt.Errorf("journal frame %d: %w", pf.lsn, err)
			}
		}
		return nil
	}, func(err error) { s.applied(id, taken, err) }, weight)
	if err != nil {
		// Closing: the frames stay in the journal and the next Open applies them.
		s.log.Debug("journal frames left for the next open", "err", err)
		return
	}
	s.applyQueued = true
}

// takeFrames picks the frames apply call id writes, on the committer's goroutine as the call
// runs: the unapplied frames in order, after any taken by a call ahead of it in the same
// transaction, up to maxCommitWeight items; a call that runs again (its transaction was rolled
// back) takes its own again. Frames are applied strictly in order, so that the file's applied
// LSN always means "every frame up to here". Taking a frame fixes its snapshot: the items with
// only the sinks that have not taken them yet; a delivery done before that never reaches the
// file, only its dedup key does.
func (s *Spool) takeFrames(id uint64, judge bool) []*pendingFrame {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if id == s.applyCalls {
		s.applyQueued = false // frames written from now on need another call
	}
	if s.applyFailing {
		// A call that runs again after another one's failure gives its frames back.
		for _, pf := range s.frames {
			if pf.takenBy == id {
				pf.takenBy, pf.snap = 0, nil
			}
		}
		return nil
	}
	var out []*pendingFrame
	weight := 0
	var bearing, delivered int // items with deliveries newly taken, and those already done
	defer func() {
		if judge && bearing > 0 {
			s.sinksKeepUp = 2*delivered >= bearing
		}
	}()
	for _, pf := range s.frames {
		switch pf.takenBy {
		case id:
		case 0:
			if len(out) > 0 && weight+len(pf.items) > maxCommitWeight {
				return out
			}
			pf.takenBy = id
			pf.snap = make([]jItem, len(pf.items))
			for i, it := range pf.items {
				if p := pf.pitems[i]; p != nil {
					it.sinks = p.sinks
					bearing++
					if len(p.sinks) == 0 {
						delivered++
					}
				}
				pf.snap[i] = it
			}
		default:
			continue // an earlier call in this transaction applies it, before this one
		}
		weight += len(pf.items)
		out = append(out, pf)
	}
	return out
}

// donePending takes the deliveries of sink among seqs whose items are still pending and not
// taken by an apply: they are done in memory, and their frame's apply will not store them. It
// returns the sequence numbers left for the file.
func (s *Spool) donePending(sink string, seqs []uint64) []uint64 {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if len(s.pending) == 0 {
		return seqs
	}
	rest := seqs[:0:0]
	for _, seq := range seqs {
		if !s.doneInMemory(sink, seq) {
			rest = append(rest, seq)
		}
	}
	return rest
}

// doneInMemory removes sink from the pending item seq if its frame is not taken by an apply,
// and reports whether it did (or the item has no delivery left for sink). Called with pmu held.
func (s *Spool) doneInMemory(sink string, seq uint64) bool {
	i, ok := slices.BinarySearchFunc(s.pending, seq, func(p *pendingItem, seq uint64) int {
		return cmp.Compare(p.seq, seq)
	})
	if !ok || s.pending[i].frame.snap != nil {
		return false
	}
	p := s.pending[i]
	if j := slices.Index(p.sinks, sink); j >= 0 {
		p.sinks = slices.Delete(slices.Clone(p.sinks), j, j+1)
	}
	return true
}

// pendingFrameOf returns the unapplied frame holding item seq, or nil. Called with pmu held.
func (s *Spool) pendingFrameOf(seq uint64) *pendingFrame {
	i, ok := slices.BinarySearchFunc(s.pending, seq, func(p *pendingItem, seq uint64) int {
		return cmp.Compare(p.seq, seq)
	})
	if !ok {
		return nil
	}
	return s.pending[i].frame
}

// applied is the callback of apply call id, on the committer's goroutine. On success the taken
// frames' keys and items leave the pending state and fully applied segments are deleted. On
// failure the frames are released (their snapshots dropped, so Done works in memory again),
// no apply runs until the retry after applyRetryDelay, and Check reports the error until every
// frame written by then is applied.
func (s *Spool) applied(id uint64, taken []*pendingFrame, err error) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	defer s.pcond.Broadcast()
	if err != nil {
		for _, pf := range taken {
			if pf.takenBy == id {
				pf.takenBy, pf.snap = 0, nil
			}
		}
		if errors.Is(err, ErrClosed) || s.closed.Load() {
			s.log.Warn("apply journal frames while closing; the next open applies them", "err", err)
			s.applyFailing = true // Close stops applying; the next Open replays the journal
			return
		}
		s.log.Error("apply journal frames to the spool file", "err", err)
		s.applyErr = err
		s.failedLSN = s.pendingLSN
		if !s.applyFailing {
			s.applyFailing = true
			time.AfterFunc(applyRetryDelay, s.retryApply)
		}
		return
	}
	for _, pf := range taken {
		pf.applied = true
		for i := range pf.items {
			// A later frame may hold the key again (accepted anew after its window).
			if k := pf.items[i].key; k != "" && s.pendingKeys[k].lsn == pf.lsn {
				delete(s.pendingKeys, k)
			}
		}
		s.pendingBytes -= pf.bytes
	}
	n := 0
	for n < len(s.pending) && s.pending[n].frame.applied {
		n++
	}
	clear(s.pending[:n])
	s.pending = s.pending[n:]
	m := 0
	for m < len(s.frames) && s.frames[m].applied {
		s.appliedLSN = s.frames[m].lsn
		m++
	}
	clear(s.frames[:m])
	s.frames = s.frames[m:]
	if s.applyErr != nil && s.appliedLSN >= s.failedLSN {
		s.applyErr = nil
	}
	s.jr.removeApplied(s.appliedLSN)
	if len(s.frames) > 0 && s.frames[len(s.frames)-1].takenBy == 0 {
		s.queueApply() // frames left over by the weight bound
	}
}

// applyRetryDelay is the pause before applying is tried again after a failure (a variable so
// that tests can shorten it).
var applyRetryDelay = time.Second

// applyFault, when set by tests, is called before each frame is applied; an error fails it.
var applyFault func() error

// applyDue runs on the timer queueApply sets for when the oldest pending frame is due; the
// queueApply it calls queues the apply or sets the timer again.
func (s *Spool) applyDue() {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	s.applyTimerAt = time.Time{}
	if !s.closed.Load() {
		s.queueApply()
	}
}

// retryApply ends the pause after a failed apply and queues an apply call.
func (s *Spool) retryApply() {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	s.applyFailing = false
	if !s.closed.Load() && len(s.frames) > 0 {
		s.queueApply()
	}
}

// waitApplied waits until every frame written before the call is applied to the bbolt file,
// or applying is failing, or the spool is closing.
func (s *Spool) waitApplied() {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	target := s.pendingLSN
	s.applyWaiters++
	defer func() { s.applyWaiters-- }()
	for s.appliedLSN < target && !s.applyFailing && !s.closed.Load() {
		s.queueApply()
		s.pcond.Wait()
	}
}

// waitItemApplied waits until the frame holding item seq, if it is still pending, is applied
// to the bbolt file; it fails while applying is failing.
func (s *Spool) waitItemApplied(seq uint64) error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	s.applyWaiters++
	defer func() { s.applyWaiters-- }()
	for {
		pf := s.pendingFrameOf(seq)
		switch {
		case pf == nil || pf.applied:
			return nil
		case s.closed.Load():
			return ErrClosed
		case s.applyFailing:
			return fmt.Errorf("item %d is not in the spool file yet: %w", seq, s.applyErr)
		}
		s.queueApply()
		s.pcond.Wait()
	}
}

// applyItems stores journalled items in tx: dedup keys with their time, data, refs and one
// ready delivery per sink, with the sequence numbers the journal gave them. It records lsn as
// the last applied frame. It is also Open's replay of an unapplied journal.
func applyItems(tx *bolt.Tx, dedup *dedupIndex, items []jItem, lsn uint64, window time.Duration) error {
	b := openBuckets(tx)
	var newKeys, latest int64
	deltas := map[string]*counts{}
	readyBuckets := map[string]*bolt.Bucket{}
	maxSeq := b.items.Sequence()
	for i := range items {
		it := &items[i]
		at := time.Unix(0, it.at)
		atB := encTime(at)
		if it.key != "" {
			h := it.hash
			if h == nil { // replayed from the journal
				h = dedupHash([]byte(it.key))
			}
			added, err := dedup.add(b, h, atB, it.fresh, timeBits(at.Add(-window)))
			if err != nil {
				return err
			}
			if added {
				newKeys++
			}
			latest = max(latest, it.at)
		}
		maxSeq = max(maxSeq, it.seq)
		if it.seq == 0 || len(it.sinks) == 0 {
			continue
		}
		seqB := encUint(it.seq)
		if err := b.items.Put(seqB, it.data); err != nil {
			return fmt.Errorf("put item: %w", err)
		}
		if err := b.refs.Put(seqB, binary.AppendUvarint(nil, uint64(len(it.sinks)))); err != nil {
			return fmt.Errorf("put refs: %w", err)
		}
		meta := encMeta(nil, 0, at, nil)
		for _, sink := range it.sinks {
			rb := readyBuckets[sink]
			if rb == nil {
				var err error
				rb, err = b.ready.CreateBucketIfNotExists([]byte(sink))
				if err != nil {
					return fmt.Errorf("create ready bucket: %w", err)
				}
				rb.FillPercent = appendFill
				readyBuckets[sink] = rb
			}
			if err := rb.Put(seqB, meta); err != nil {
				return fmt.Errorf("put delivery: %w", err)
			}
			c := deltas[sink]
			if c == nil {
				c = &counts{}
				deltas[sink] = c
			}
			c.ready++
		}
	}
	if maxSeq > b.items.Sequence() {
		if err := b.items.SetSequence(maxSeq); err != nil {
			return fmt.Errorf("set sequence: %w", err)
		}
	}
	if newKeys != 0 {
		if err := addDedupN(b.meta, newKeys); err != nil {
			return err
		}
		if err := b.meta.Put(metaDedupL0N, encUint(decUint(b.meta.Get(metaDedupL0N))+uint64(newKeys))); err != nil {
			return fmt.Errorf("put dedup L0 count: %w", err)
		}
		if err := dedup.maintain(tx, timeBits(time.Unix(0, latest).Add(-window-mergeSlack))); err != nil {
			return fmt.Errorf("dedup index: %w", err)
		}
	}
	for sink, c := range deltas {
		if err := addCounts(b.stats, sink, c.ready, c.sched); err != nil {
			return err
		}
	}
	if lsn > decUint(b.meta.Get(metaJournalLSN)) {
		if err := b.meta.Put(metaJournalLSN, encUint(lsn)); err != nil {
			return fmt.Errorf("put journal lsn: %w", err)
		}
	}
	return nil
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

// dedupHash is what the file stores of a dedup key: 16 bytes of its SHA-256. Keys run to tens
// of bytes (a WhatsApp message id alone is ~60) and land at random places in the index, so
// every page they touch is rewritten at the next commit: short fixed-size keys mean several
// times fewer pages. A false repeat needs two keys among those in the window to collide in
// 128 bits.
func dedupHash(key []byte) []byte {
	h := sha256.Sum256(key)
	return h[:16]
}

// dedupTKey is a key of format 2's dedupkeyt and format 1's dedupt: the 8-byte acceptance
// time followed by the (hashed) dedup key.
func dedupTKey(at, key []byte) []byte {
	k := make([]byte, 0, len(at)+len(key))
	return append(append(k, at...), key...)
}

// addDedupN adds delta to the stored dedup key count.
func addDedupN(meta *bolt.Bucket, delta int64) error {
	n := int64(decUint(meta.Get(metaDedupN))) + delta
	if n < 0 {
		n = 0
	}
	if err := meta.Put(metaDedupN, encUint(uint64(n))); err != nil {
		return fmt.Errorf("put dedup count: %w", err)
	}
	return nil
}

// buckets holds a transaction's top-level buckets.
type buckets struct {
	items, refs, ready, sched, schedIdx, dedup, stats, meta *bolt.Bucket
}

// openBuckets looks up the top-level buckets, which Open created.
func openBuckets(tx *bolt.Tx) buckets {
	b := buckets{
		items:    tx.Bucket(bucketItems),
		refs:     tx.Bucket(bucketRefs),
		ready:    tx.Bucket(bucketReady),
		sched:    tx.Bucket(bucketSched),
		schedIdx: tx.Bucket(bucketSchedIdx),
		dedup:    tx.Bucket(bucketDedup),
		stats:    tx.Bucket(bucketStats),
		meta:     tx.Bucket(bucketMeta),
	}
	if tx.Writable() {
		// Keys of these grow with time, so new pages fill up: split them full rather
		// than half-full (bbolt's default), which halves the pages a commit writes.
		b.items.FillPercent = appendFill
		b.refs.FillPercent = appendFill
	}
	return b
}

// appendFill is the FillPercent of buckets written mostly in key order.
const appendFill = 0.95
