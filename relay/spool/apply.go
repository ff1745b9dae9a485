package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// applier is the scheduler that applies journal frames to the bbolt file. It holds the frames
// written but not yet applied, and what Ready, Done and the dedup check need of them, and
// queues apply calls in the file's group commit (committer): when the oldest frame has waited
// its delay, or enough waits, or someone needs the file. A failed apply gives its frames back
// and is retried after retryDelay.
type applier struct {
	commits *committer
	dedup   *dedupindex.Index
	jr      *journal // its applied segments are deleted
	log     *slog.Logger
	window  time.Duration // the dedup window
	delay   time.Duration // ApplyDelay
	closed  *atomic.Bool  // the spool's

	// retryDelay is the pause before applying is tried again after a failure.
	retryDelay time.Duration
	// fault, when set by tests, is called before each frame is applied; an error fails it.
	fault func() error

	mu           sync.Mutex
	cond         *sync.Cond // broadcast when a frame is applied
	frames       []*pendingFrame
	pending      []*pendingItem // in Seq order
	pendingKeys  map[string]pendingKey
	pendingBytes int64
	pendingLSN   uint64      // last frame made pending
	appliedLSN   uint64      // every frame up to this one is applied
	calls        uint64      // apply calls queued so far; the last one's id
	queued       bool        // the last apply call has not started yet
	failing      bool        // an apply failed; none runs until the retry
	timer        *time.Timer // queueApply's, for when the oldest frame is due (see applyDue)
	timerAt      time.Time   // when timer fires; zero when it is not set
	waiters      int         // callers waiting for frames to reach the file: apply them now
	sinksKeepUp  bool        // the last apply that was not forced found at least half of its items delivered (see applyEarlyItems)
	lastErr      error       // the last apply error, until every frame written by then is applied
	failedLSN    uint64

	// txs counts the file's write transactions (the spool's writeTxs). Journal segments up
	// to keepLSN, applied by the commit that made txs keepTxs, are deleted only once another
	// transaction has committed after it (see settled).
	txs     *atomic.Uint64
	keepLSN uint64
	keepTxs uint64
}

// defaultApplyRetryDelay is the applier's retryDelay unless tests set another.
const defaultApplyRetryDelay = time.Second

// newApplier returns the applier of a spool whose file has applied every frame up to lsn.
func newApplier(s *Spool, lsn uint64, delay time.Duration, h testHooks) *applier {
	a := &applier{commits: s.commits, dedup: s.dedup, jr: s.jr, log: s.log, window: s.window,
		delay: delay, closed: &s.closed, retryDelay: h.applyRetryDelay, fault: h.applyFault,
		pendingKeys: map[string]pendingKey{}, pendingLSN: lsn, appliedLSN: lsn, txs: &s.writeTxs}
	if a.retryDelay <= 0 {
		a.retryDelay = defaultApplyRetryDelay
	}
	a.cond = sync.NewCond(&a.mu)
	return a
}

// failure returns the last apply error, until every frame written by then is applied.
func (a *applier) failure() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastErr
}

// drain applies, as the spool closes, the frames still waiting for their delay, in as many
// commits as the weight bound needs, unless applying fails (the next Open replays them from
// the journal).
func (a *applier) drain() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.appliedLSN < a.pendingLSN && !a.failing {
		a.queueApply()
		a.cond.Wait()
	}
	if a.timer != nil {
		a.timer.Stop()
	}
}

// wake wakes every waiter once the committer is closed: nothing is applied any more.
func (a *applier) wake() {
	a.mu.Lock()
	a.cond.Broadcast()
	a.mu.Unlock()
}

// clean reports whether every frame written is applied.
func (a *applier) clean() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.appliedLSN == a.pendingLSN
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
// (waiters), or the spool is closing; until then timer calls again when the frame
// is due. While applying fails, the retry queues it. Called with mu held.
func (a *applier) queueApply() {
	if a.queued || a.failing {
		return
	}
	var oldest *pendingFrame
	weight := 0 // items not taken yet
	for _, pf := range a.frames {
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
	due := oldest.written.Add(a.delay)
	switch {
	case a.sinksKeepUp && weight >= maxCommitWeight:
		due = time.Time{}
	case !a.sinksKeepUp && weight >= applyEarlyItems:
		due = oldest.written.Add(min(a.delay, applyEarlyAge))
	}
	// An apply that someone needs now does not say whether waiting pays: it takes frames
	// however young, so it does not judge whether the sinks keep up.
	forced := a.pendingBytes >= applyEarlyBytes || a.waiters > 0 || a.closed.Load()
	if wait := time.Until(due); wait > 0 && !forced {
		if a.timerAt.IsZero() || due.Before(a.timerAt) {
			a.timerAt = due
			if a.timer == nil {
				a.timer = time.AfterFunc(wait, a.applyDue)
			} else {
				a.timer.Reset(wait)
			}
		}
		return
	}
	a.calls++
	id := a.calls
	var taken []*pendingFrame
	err := a.commits.submit(func(tx *bolt.Tx) error {
		taken = a.takeFrames(id, !forced)
		// A commit that reported a failure may still have reached the file (bbolt writes the
		// meta page before its last sync): a frame the file already records is not written
		// again.
		done := decUint(tx.Bucket(bucketMeta).Get(metaJournalLSN))
		for _, pf := range taken {
			if pf.lsn <= done {
				continue
			}
			if a.fault != nil {
				if err := a.fault(); err != nil {
					return err
				}
			}
			if err := applyItems(tx, a.dedup, pf.snap, pf.lsn, a.window, false); err != nil {
				return fmt.Errorf("journal frame %d: %w", pf.lsn, err)
			}
		}
		return nil
	}, func(err error) { a.applied(id, taken, err) }, weight)
	if err != nil {
		// Closing: the frames stay in the journal and the next Open applies them.
		a.log.Debug("journal frames left for the next open", "err", err)
		return
	}
	a.queued = true
}

// takeFrames picks the frames apply call id writes, on the committer's goroutine as the call
// runs: the unapplied frames in order, after any taken by a call ahead of it in the same
// transaction, up to maxCommitWeight items; a call that runs again (its transaction was rolled
// back) takes its own again. Frames are applied strictly in order, so that the file's applied
// LSN always means "every frame up to here". Taking a frame fixes its snapshot: the items with
// only the sinks that have not taken them yet; a delivery done before that never reaches the
// file, only its dedup key does.
func (a *applier) takeFrames(id uint64, judge bool) []*pendingFrame {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id == a.calls {
		a.queued = false // frames written from now on need another call
	}
	if a.failing {
		// A call that runs again after another one's failure gives its frames back.
		for _, pf := range a.frames {
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
			a.sinksKeepUp = 2*delivered >= bearing
		}
	}()
	for _, pf := range a.frames {
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

// applied is the callback of apply call id, on the committer's goroutine. On success the taken
// frames' keys and items leave the pending state and fully applied segments are deleted. On
// failure the frames are released (their snapshots dropped, so Done works in memory again),
// no apply runs until the retry after retryDelay, and Check reports the error until every
// frame written by then is applied.
func (a *applier) applied(id uint64, taken []*pendingFrame, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer a.cond.Broadcast()
	if err != nil {
		for _, pf := range taken {
			if pf.takenBy == id {
				pf.takenBy, pf.snap = 0, nil
			}
		}
		if errors.Is(err, ErrClosed) || a.closed.Load() {
			a.log.Warn("apply journal frames while closing; the next open applies them", "err", err)
			a.failing = true // Close stops applying; the next Open replays the journal
			return
		}
		a.log.Error("apply journal frames to the spool file", "err", err)
		a.lastErr = err
		a.failedLSN = a.pendingLSN
		if !a.failing {
			a.failing = true
			time.AfterFunc(a.retryDelay, a.retryApply)
		}
		return
	}
	for _, pf := range taken {
		pf.applied = true
		for i := range pf.items {
			// A later frame may hold the key again (accepted anew after its window).
			if k := pf.items[i].key; k != "" && a.pendingKeys[k].lsn == pf.lsn {
				delete(a.pendingKeys, k)
			}
		}
		a.pendingBytes -= pf.bytes
	}
	n := 0
	for n < len(a.pending) && a.pending[n].frame.applied {
		n++
	}
	clear(a.pending[:n])
	a.pending = a.pending[n:]
	m := 0
	for m < len(a.frames) && a.frames[m].applied {
		a.appliedLSN = a.frames[m].lsn
		m++
	}
	clear(a.frames[:m])
	a.frames = a.frames[m:]
	if a.lastErr != nil && a.appliedLSN >= a.failedLSN {
		a.lastErr = nil
	}
	a.settled()
	if len(a.frames) > 0 && a.frames[len(a.frames)-1].takenBy == 0 {
		a.queueApply() // frames left over by the weight bound
	}
}

// settled deletes the journal segments that are applied in both of the file's meta pages, so
// that a rollback stays recoverable. bbolt keeps two meta pages and, when the newer one is
// damaged, opens the file at the older one: the transaction before the last. A frame applied
// by the last commit is only safe to delete from the journal once a commit after it has
// written the other meta page; else Open could find the file rolled back and the frame gone
// (and notices: see journalScan.damage). So the frames an apply commit reaches are deleted at
// the first apply after another commit. Called with mu held, after a successful apply.
func (a *applier) settled() {
	n := a.txs.Load()
	if a.keepLSN > 0 && n > a.keepTxs {
		a.jr.removeApplied(a.keepLSN)
	}
	if a.appliedLSN > a.keepLSN {
		a.keepLSN, a.keepTxs = a.appliedLSN, n
	}
}

// applyDue runs on the timer queueApply sets for when the oldest pending frame is due; the
// queueApply it calls queues the apply or sets the timer again.
func (a *applier) applyDue() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.timerAt = time.Time{}
	if !a.closed.Load() {
		a.queueApply()
	}
}

// retryApply ends the pause after a failed apply and queues an apply call.
func (a *applier) retryApply() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failing = false
	if !a.closed.Load() && len(a.frames) > 0 {
		a.queueApply()
	}
}

// waitApplied waits until every frame written before the call is applied to the bbolt file,
// or applying is failing, or the spool is closing.
func (a *applier) waitApplied() {
	a.mu.Lock()
	defer a.mu.Unlock()
	target := a.pendingLSN
	a.waiters++
	defer func() { a.waiters-- }()
	for a.appliedLSN < target && !a.failing && !a.closed.Load() {
		a.queueApply()
		a.cond.Wait()
	}
}

// waitItemApplied waits until the frame holding item seq, if it is still pending, is applied
// to the bbolt file; it fails while applying is failing.
func (a *applier) waitItemApplied(seq uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.waiters++
	defer func() { a.waiters-- }()
	for {
		pf := a.pendingFrameOf(seq)
		switch {
		case pf == nil || pf.applied:
			return nil
		case a.closed.Load():
			return ErrClosed
		case a.failing:
			return fmt.Errorf("item %d is not in the spool file yet: %w", seq, a.lastErr)
		}
		a.queueApply()
		a.cond.Wait()
	}
}

// keyedItem is an item of applyItems with a dedup key, and the key's hash.
type keyedItem struct {
	h  []byte
	it *jItem
}

// applyItems stores journalled items in tx: dedup keys with their time, data, refs and one
// ready delivery per sink, with the sequence numbers the journal gave them. It records lsn as
// the last applied frame. It is also Open's replay of an unapplied journal, and Recover's of
// every frame when the file lost its applied frame: with replay, a delivery the file already
// holds (ready or scheduled) is left as it is, so that applying a frame again adds only what
// is missing.
func applyItems(tx *bolt.Tx, dedup *dedupindex.Index, items []jItem, lsn uint64, window time.Duration, replay bool) error {
	b := openBuckets(tx)
	dw := dedup.Writer(tx)
	var latest int64
	deltas := map[string]*counts{}
	readyBuckets := map[string]*bolt.Bucket{}
	maxSeq := b.items.Sequence()
	vals := newValueArena(items)
	var seqB [8]byte // bbolt copies keys, not values
	var meta []byte  // the ready record of items accepted at metaAt
	var metaAt int64
	keyed := make([]keyedItem, 0, len(items))
	for i := range items {
		it := &items[i]
		if it.key != "" {
			h := it.hash
			if h == nil { // replayed from the journal
				h = dedupindex.Hash([]byte(it.key))
			}
			keyed = append(keyed, keyedItem{h, it})
			latest = max(latest, it.at)
		}
		maxSeq = max(maxSeq, it.seq)
		if it.seq == 0 || len(it.sinks) == 0 {
			continue
		}
		binary.BigEndian.PutUint64(seqB[:], it.seq)
		sinks, have := it.sinks, uint64(0)
		if replay {
			sinks, have = missingDeliveries(b, seqB[:], it.sinks)
			if len(sinks) == 0 {
				continue
			}
		}
		if err := b.items.Put(seqB[:], appendItem(vals.take(itemLen(it.sinks, it.data)), it.seq, it.sinks, it.data)); err != nil {
			return fmt.Errorf("put item: %w", err)
		}
		if err := b.refs.Put(seqB[:], binary.AppendUvarint(vals.take(binary.MaxVarintLen64), have+uint64(len(sinks)))); err != nil {
			return fmt.Errorf("put refs: %w", err)
		}
		if meta == nil || metaAt != it.at {
			meta, metaAt = encMeta(vals.take(metaLen), 0, time.Unix(0, it.at), nil), it.at
		}
		for _, sink := range sinks {
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
			if err := rb.Put(seqB[:], meta); err != nil {
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
	// The dedup keys go into L0 in hash order: each Put searches L0's tree from its root, and
	// consecutive keys then walk the same pages (the items' keys are random hashes). A stable
	// sort keeps the order of one key's entries.
	slices.SortStableFunc(keyed, func(a, b keyedItem) int { return bytes.Compare(a.h, b.h) })
	for _, k := range keyed {
		at := time.Unix(0, k.it.at)
		if err := dw.Add(k.h, at, at.Add(-window), k.it.fresh); err != nil {
			return err
		}
	}
	if err := dw.Finish(time.Unix(0, latest), window); err != nil {
		return err
	}
	for sink, c := range deltas {
		if err := addCounts(b.stats, sink, c.ready, c.sched); err != nil {
			return err
		}
	}
	if lsn > decUint(b.meta.Get(metaJournalLSN)) {
		if err := b.meta.Put(metaJournalLSN, encLSN(lsn)); err != nil {
			return fmt.Errorf("put journal lsn: %w", err)
		}
	}
	return nil
}

// metaLen is the length of a new delivery's record (encMeta with attempt 0, no history).
const metaLen = 1 + 1 + 8

// valueArena holds the values one applyItems call puts: bbolt keeps the value slices it is
// given (it copies keys only) until the transaction commits, so each value needs memory of its
// own, and one allocation for all of them spares the three small ones per item.
type valueArena struct{ b []byte }

// newValueArena returns an arena large enough for the values applyItems puts for items.
func newValueArena(items []jItem) *valueArena {
	n := 0
	for i := range items {
		if it := &items[i]; it.seq != 0 && len(it.sinks) > 0 {
			n += itemLen(it.sinks, it.data) + binary.MaxVarintLen64 + metaLen
		}
	}
	return &valueArena{b: make([]byte, 0, n)}
}

// take returns an empty slice with room for n bytes that no other value shares; appending up
// to n bytes to it does not allocate.
func (a *valueArena) take(n int) []byte {
	if len(a.b)+n > cap(a.b) {
		return make([]byte, 0, n)
	}
	s := a.b[len(a.b) : len(a.b) : len(a.b)+n]
	a.b = a.b[:len(a.b)+n]
	return s
}

// missingDeliveries returns the sinks among sinks that have no pending delivery of item seqB
// in the file, and the item's reference count there.
func missingDeliveries(b buckets, seqB []byte, sinks []string) ([]string, uint64) {
	v := b.refs.Get(seqB)
	if v == nil {
		return sinks, 0
	}
	have, _ := binary.Uvarint(v)
	var out []string
	for _, sink := range sinks {
		name := []byte(sink)
		if getBucket(b.ready.Bucket(name), seqB) == nil && getBucket(b.schedIdx.Bucket(name), seqB) == nil {
			out = append(out, sink)
		}
	}
	return out, have
}
