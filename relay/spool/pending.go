package spool

import (
	"cmp"
	"slices"
	"time"
)

// The applier's pending state: the journal frames written but not yet applied to the bbolt
// file, and what Ready, Done and the dedup check need of them.

// over reports whether the accepted data not applied yet exceeds maxPendingBytes.
func (a *applier) over() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pendingBytes > maxPendingBytes
}

// checkPending marks, for each item of the group whose key a pending frame holds, that the
// key is known, and whether it is a repeat (younger than the window).
func (a *applier) checkPending(group []*acceptCall) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range group {
		for i, it := range c.items {
			if it.Key == "" {
				continue
			}
			if pk, ok := a.pendingKeys[it.Key]; ok {
				c.known[i] = true
				c.dup[i] = c.now.Sub(time.Unix(0, pk.at)) < a.window
			}
		}
	}
}

// add makes a frame just written to the journal pending, holding held bytes, and queues its
// apply. Until an apply call takes the frame, Done works on its items in memory (Reschedule
// has the frame applied first); once one has, Done's call is queued behind it in the
// committer, and goes back to memory if that apply fails.
func (a *applier) add(frame *jFrame, held int) {
	pf := &pendingFrame{lsn: frame.lsn, items: frame.items, pitems: make([]*pendingItem, len(frame.items)), bytes: int64(held), written: time.Now()}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.frames = append(a.frames, pf)
	for i := range pf.items {
		it := &pf.items[i]
		if it.key != "" {
			a.pendingKeys[it.key] = pendingKey{at: it.at, lsn: pf.lsn}
		}
		if it.seq != 0 {
			p := &pendingItem{seq: it.seq, at: time.Unix(0, it.at), data: it.data, sinks: slices.Clone(it.sinks), frame: pf}
			pf.pitems[i] = p
			a.pending = append(a.pending, p)
		}
	}
	a.pendingBytes += pf.bytes
	a.pendingLSN = frame.lsn
	a.queueApply()
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

// donePending takes the deliveries of sink among seqs whose items are still pending and not
// taken by an apply: they are done in memory, and their frame's apply will not store them. It
// returns the sequence numbers left for the file.
func (a *applier) donePending(sink string, seqs []uint64) []uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.pending) == 0 {
		return seqs
	}
	rest := seqs[:0:0]
	for _, seq := range seqs {
		if !a.doneInMemory(sink, seq) {
			rest = append(rest, seq)
		}
	}
	return rest
}

// doneInMemory removes sink from the pending item seq if its frame is not taken by an apply,
// and reports whether it did (or the item has no delivery left for sink). Called with mu held.
func (a *applier) doneInMemory(sink string, seq uint64) bool {
	i, ok := slices.BinarySearchFunc(a.pending, seq, func(p *pendingItem, seq uint64) int {
		return cmp.Compare(p.seq, seq)
	})
	if !ok || a.pending[i].frame.snap != nil {
		return false
	}
	p := a.pending[i]
	if j := slices.Index(p.sinks, sink); j >= 0 {
		p.sinks = slices.Delete(slices.Clone(p.sinks), j, j+1)
	}
	return true
}

// doneInMemoryLocked is doneInMemory for a caller that does not hold mu.
func (a *applier) doneInMemoryLocked(sink string, seq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.doneInMemory(sink, seq)
}

// pendingFrameOf returns the unapplied frame holding item seq, or nil. Called with mu held.
func (a *applier) pendingFrameOf(seq uint64) *pendingFrame {
	i, ok := slices.BinarySearchFunc(a.pending, seq, func(p *pendingItem, seq uint64) int {
		return cmp.Compare(p.seq, seq)
	})
	if !ok {
		return nil
	}
	return a.pending[i].frame
}

// pendingReady returns up to max deliveries of sink with Seq greater than after among the
// accepted items not yet applied to the file.
func (a *applier) pendingReady(sink string, after uint64, max int) []Delivery {
	a.mu.Lock()
	i, _ := slices.BinarySearchFunc(a.pending, after+1, func(p *pendingItem, seq uint64) int {
		return cmp.Compare(p.seq, seq)
	})
	var picked []*pendingItem
	for ; i < len(a.pending) && len(picked) < max; i++ {
		if p := a.pending[i]; slices.Contains(p.sinks, sink) {
			picked = append(picked, p)
		}
	}
	a.mu.Unlock()
	if len(picked) == 0 {
		return nil
	}
	out := make([]Delivery, len(picked))
	for i, p := range picked {
		out[i] = Delivery{Sink: sink, Seq: p.seq, Data: append([]byte{}, p.data...), FirstAt: p.at}
	}
	return out
}
