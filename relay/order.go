package relay

import (
	"math"
	"slices"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// This file is the delivery engine's per-key ordering (a sink's order_by). A change's key for
// each sink is decided when it is accepted (Route.Order) and travels in its spooled data
// (Event.Order), so it survives restarts and reloads and every engine sees the same one.
//
// A sink's dispatcher reads its ready queue in Seq order, as without ordering; a delivery
// with a key goes to a worker only when no delivery of the key is in flight and no older one
// is pending: waiting for a retry (scheduled), held back in memory, or not read yet. Older
// pending ones of a key are known because:
//
//   - ready ones are read in Seq order, before it;
//   - scheduled ones are listed (Queue.Scheduled) when the runner starts, and the runner
//     itself parks the ones that fail later;
//   - a delivery released still pending (an attempt cut short, a failed Done or Reschedule)
//     and those passed over while too many were held are remembered as a range of Seqs of the
//     key not in memory ("lost"), which blocks the key's later deliveries until the
//     dispatcher has read that range again.
//
// Delivering one key's changes never holds back another key's: the dispatcher holds the
// passed-over deliveries in memory (bounded by maxHeld and maxHeldBytes; beyond that it
// remembers their range and reads them again later) and goes on reading. When a key's
// delivery is done (delivered or dead-lettered), the key's next held delivery goes at once.
// A key's delivery that is rescheduled keeps the key blocked until the retry is delivered or
// dead-lettered.
//
// A store with several replicas (a Poller) also refuses, in Ready, to hand out a delivery
// whose key has an older pending one, so that replicas taking over a sink keep the order;
// the dispatcher then reads again from a done delivery's Seq to find its key's next one.
//
// All of orderState is guarded by the runner's mu.

// maxHeld and maxHeldBytes bound the deliveries one sink's dispatcher holds back in memory
// behind busy keys.
const (
	maxHeld      = 4096
	maxHeldBytes = 32 << 20
)

// orderState is a runner's per-key ordering state. Lock order: runner.mu only.
type orderState struct {
	keys map[string]*keyState
	// seqKey is the key of each keyed delivery held back or in flight.
	seqKey map[uint64]string
	// freed lists keys whose delivery in flight ended since the dispatcher last looked.
	freed []string
	// lost holds the keys with a lost range.
	lost             map[string]struct{}
	heldN, heldBytes int
}

// keyState is what the dispatcher knows of one key's pending deliveries.
type keyState struct {
	busy    uint64     // the delivery in flight; 0 = none
	waiting []uint64   // scheduled (waiting for a retry), ascending
	held    []Delivery // ready, read and held back, ascending Seq
	// lostLo..lostHi may hold ready deliveries of the key that are not in memory; lostLo 0 =
	// none.
	lostLo, lostHi uint64
}

// low returns the lowest Seq of the key known to be pending and not in flight, or
// math.MaxUint64.
func (k *keyState) low() uint64 {
	low := uint64(math.MaxUint64)
	if len(k.waiting) > 0 {
		low = k.waiting[0]
	}
	if len(k.held) > 0 {
		low = min(low, k.held[0].Seq)
	}
	if k.lostLo != 0 {
		low = min(low, k.lostLo)
	}
	return low
}

func (k *keyState) idle() bool {
	return k.busy == 0 && len(k.waiting) == 0 && len(k.held) == 0 && k.lostLo == 0
}

func newOrderState() *orderState {
	return &orderState{keys: map[string]*keyState{}, seqKey: map[uint64]string{}, lost: map[string]struct{}{}}
}

// OrderKeyOf returns the ordering key of a spooled change (AppendBinary's data) for sink,
// "" when it has none, without decoding the rest of the change.
func OrderKeyOf(data []byte, sink string) string {
	if len(data) == 0 || data[0] < 3 || data[0] > codecVersion {
		return ""
	}
	d := eventReader{b: data[1:]}
	for range 5 { // id, app, object, entry id, entry uid
		d.bytes()
	}
	d.varint() // entry time
	d.bytes()  // entry time as sent
	d.bytes()  // field
	d.bytes()  // verb
	d.byte()   // source
	d.bytes()  // value
	d.bytes()  // signature
	d.varint() // received at
	n := d.uvarint()
	for i := uint64(0); i < n && !d.err; i++ { // rules
		d.bytes()
	}
	n = d.uvarint()
	for i := uint64(0); i < n && !d.err; i++ { // rule errors
		d.bytes()
		d.bytes()
	}
	n = d.uvarint()
	for i := uint64(0); i < n && !d.err; i++ {
		s, k := d.bytes(), d.bytes()
		if !d.err && string(s) == sink {
			return string(k)
		}
	}
	return ""
}

// gate decides, for a delivery the dispatcher read that is not in flight, whether it goes
// to a worker now (true: its key, if any, is now busy with it) or is held back (false).
// Lock should be held.
func (o *orderState) gate(d Delivery, sink string) bool {
	key := OrderKeyOf(d.Data, sink)
	if key == "" {
		return true
	}
	if _, ok := o.seqKey[d.Seq]; ok {
		return false // held already: read again after a rewind
	}
	ks := o.keys[key]
	if ks == nil {
		ks = &keyState{}
		o.keys[key] = ks
	}
	if i, ok := slices.BinarySearch(ks.waiting, d.Seq); ok {
		ks.waiting = slices.Delete(ks.waiting, i, i+1) // promoted: ready again
	}
	if ks.lostLo != 0 && d.Seq >= ks.lostLo && d.Seq <= ks.lostHi {
		// Read again in Seq order: what of the range is below it has been seen.
		o.shrinkLost(key, ks, d.Seq+1)
	}
	if ks.busy == 0 && d.Seq < ks.low() {
		ks.busy = d.Seq
		o.seqKey[d.Seq] = key
		return true
	}
	if ks.lostLo == 0 && o.heldN < maxHeld && o.heldBytes+len(d.Data) <= maxHeldBytes {
		i, _ := slices.BinarySearchFunc(ks.held, d.Seq, func(h Delivery, s uint64) int { return cmpSeq(h.Seq, s) })
		ks.held = slices.Insert(ks.held, i, d)
		o.seqKey[d.Seq] = key
		o.heldN++
		o.heldBytes += len(d.Data)
		return false
	}
	// Too much held, or the key has deliveries not in memory already: remember the range.
	o.addLost(key, ks, d.Seq)
	return false
}

func cmpSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// addLost records that seq of key is pending ready but not in memory. Lock should be held.
func (o *orderState) addLost(key string, ks *keyState, seq uint64) {
	if ks.lostLo == 0 {
		ks.lostLo, ks.lostHi = seq, seq
	} else {
		ks.lostLo, ks.lostHi = min(ks.lostLo, seq), max(ks.lostHi, seq)
	}
	o.lost[key] = struct{}{}
}

// shrinkLost raises the key's lost range to start at from: everything below was read again.
// Lock should be held.
func (o *orderState) shrinkLost(key string, ks *keyState, from uint64) {
	if from > ks.lostHi {
		ks.lostLo, ks.lostHi = 0, 0
		delete(o.lost, key)
		o.freed = append(o.freed, key)
		return
	}
	ks.lostLo = max(ks.lostLo, from)
}

// passed tells the lost ranges that a read that began after from has seen every ready
// delivery with a Seq below to (to 0: every one). Lock should be held.
func (o *orderState) passed(from, to uint64) {
	for key := range o.lost {
		ks := o.keys[key]
		if ks == nil || ks.lostLo == 0 {
			delete(o.lost, key)
			continue
		}
		if from < ks.lostLo {
			if to == 0 {
				o.shrinkLost(key, ks, math.MaxUint64)
			} else if to > ks.lostLo {
				o.shrinkLost(key, ks, to)
			}
		}
	}
}

// parked records that deliveries in flight were rescheduled: their keys stay blocked until
// they are ready again. Lock should be held.
func (o *orderState) parked(seqs []uint64) {
	for _, s := range seqs {
		key, ok := o.seqKey[s]
		if !ok {
			continue
		}
		delete(o.seqKey, s)
		ks := o.keys[key]
		if ks == nil || ks.busy != s {
			continue
		}
		ks.busy = 0
		if i, found := slices.BinarySearch(ks.waiting, s); !found {
			ks.waiting = slices.Insert(ks.waiting, i, s)
		}
	}
}

// released ends the flight of deliveries (see runner.release). pending ones are still ready
// in the store and block their key until read again. It returns the lowest done Seq that had
// a key, 0 if none. Lock should be held.
func (o *orderState) released(pending bool, seqs []uint64) (lowestDone uint64) {
	for _, s := range seqs {
		key, ok := o.seqKey[s]
		if !ok {
			continue
		}
		ks := o.keys[key]
		if ks == nil || ks.busy != s {
			continue // held, not in flight (cannot happen), or released already
		}
		delete(o.seqKey, s)
		ks.busy = 0
		if pending {
			o.addLost(key, ks, s)
		} else if lowestDone == 0 || s < lowestDone {
			lowestDone = s
		}
		o.freed = append(o.freed, key)
	}
	return lowestDone
}

// runnable takes the held deliveries whose keys are free now, in Seq order, marking their
// keys busy, and returns the lowest Seq to read again for keys whose next delivery is not in
// memory (0 if none). Lock should be held.
func (o *orderState) runnable() (out []Delivery, rewind uint64) {
	for _, key := range o.freed {
		ks := o.keys[key]
		if ks == nil || ks.busy != 0 {
			continue
		}
		low := ks.low()
		switch {
		case len(ks.held) > 0 && ks.held[0].Seq == low:
			d := ks.held[0]
			ks.held = slices.Delete(ks.held, 0, 1)
			o.heldN--
			o.heldBytes -= len(d.Data)
			ks.busy = d.Seq
			out = append(out, d)
		case ks.lostLo != 0 && ks.lostLo == low:
			if rewind == 0 || ks.lostLo < rewind {
				rewind = ks.lostLo
			}
		case ks.idle():
			delete(o.keys, key)
		}
	}
	o.freed = o.freed[:0]
	slices.SortFunc(out, func(a, b Delivery) int { return cmpSeq(a.Seq, b.Seq) })
	return out, rewind
}

// behind returns, for a delivery of key being dead-lettered, the ids of the changes of its
// key held back behind it (at most deadletter.MaxDeliveredAfter) and whether there are more.
// Lock should be held.
func (o *orderState) behind(key string) (held []Delivery, more bool) {
	ks := o.keys[key]
	if ks == nil {
		return nil, false
	}
	n := min(len(ks.held), deadletter.MaxDeliveredAfter)
	return slices.Clone(ks.held[:n]), len(ks.held) > n || ks.lostLo != 0
}

// OrderStats is the ordering state of one sink's dispatcher, for metrics.
type OrderStats struct {
	// Blocked is the number of ordering keys with changes held back behind an earlier change
	// of the key (in flight or waiting for a retry).
	Blocked int
	// Held is the number of changes held back in memory.
	Held int
	// OldestWaiting is when the oldest change held back was accepted; zero if none.
	OldestWaiting time.Time
}

// stats sums up the state. Lock should be held.
func (o *orderState) stats() OrderStats {
	st := OrderStats{Held: o.heldN}
	for _, ks := range o.keys {
		if len(ks.held) == 0 && ks.lostLo == 0 {
			continue
		}
		st.Blocked++
		if len(ks.held) > 0 {
			if t := ks.held[0].FirstAt; st.OldestWaiting.IsZero() || t.Before(st.OldestWaiting) {
				st.OldestWaiting = t
			}
		}
	}
	return st
}

// The runner's side: the calls deliver.go makes.

// loadWaiting learns the scheduled deliveries of the sink that have a key, before the
// dispatcher's first read, so that a retry pending from before a restart or reload still
// holds back the later changes of its key. It returns false if the runner stopped first.
func (r *runner) loadWaiting() bool {
	var after uint64
	for {
		ds, err := r.e.q.Scheduled(r.name, after, readyBatch)
		if err != nil {
			// Ordering cannot be promised without them: keep trying, deliver nothing meanwhile.
			r.log.Error("read scheduled deliveries for ordering, retrying", "err", err)
			if !r.sleep(time.Second) {
				return false
			}
			continue
		}
		r.mu.Lock()
		for _, d := range ds {
			after = max(after, d.Seq)
			key := OrderKeyOf(d.Data, r.name)
			if key == "" {
				continue
			}
			ks := r.order.keys[key]
			if ks == nil {
				ks = &keyState{}
				r.order.keys[key] = ks
			}
			if i, ok := slices.BinarySearch(ks.waiting, d.Seq); !ok {
				ks.waiting = slices.Insert(ks.waiting, i, d.Seq)
			}
		}
		r.mu.Unlock()
		if len(ds) < readyBatch {
			return true
		}
	}
}

// takeRunnable returns the held deliveries that may go now, marked in flight, and the lowest
// Seq to read again for keys whose next delivery is not in memory (0 if none).
func (r *runner) takeRunnable() ([]Delivery, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order.freed) == 0 {
		return nil, 0
	}
	out, rewind := r.order.runnable()
	for _, d := range out {
		r.inflight[d.Seq] = false
	}
	return out, rewind
}

// orderPassed updates the lost ranges after a read from from that reached cursor (complete:
// the whole queue after from). Deliveries the read found released meanwhile (reread) are read
// again later, so they stay lost.
func (r *runner) orderPassed(from, cursor uint64, complete bool, reread []Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order.lost) == 0 {
		return
	}
	to := cursor + 1
	if complete {
		to = 0
	}
	r.order.passed(from, to)
	for _, d := range reread {
		if key := OrderKeyOf(d.Data, r.name); key != "" {
			if ks := r.order.keys[key]; ks != nil {
				r.order.addLost(key, ks, d.Seq)
			}
		}
	}
}

// parked is the rescheduler's report that seqs are scheduled now.
func (r *runner) parked(seqs []uint64) {
	r.mu.Lock()
	r.order.parked(seqs)
	r.mu.Unlock()
}

// deliveredAfter fills a dead letter's ordering fields: its key and the changes of the key
// waiting behind it, which its dead-lettering releases.
func (r *runner) deliveredAfter(l *deadletter.Letter, d Delivery) {
	key := OrderKeyOf(d.Data, r.name)
	if key == "" {
		return
	}
	l.OrderKey = key
	r.mu.Lock()
	held, more := r.order.behind(key)
	r.mu.Unlock()
	for _, h := range held {
		var ev Event
		if UnmarshalBinary(h.Data, &ev) == nil {
			l.DeliveredAfter = append(l.DeliveredAfter, ev.ID)
		}
	}
	l.DeliveredAfterMore = more
}

// OrderStats returns the ordering state of every running sink's dispatcher, by sink.
func (e *Engine) OrderStats() map[string]OrderStats {
	e.mu.Lock()
	rs := make([]*runner, 0, len(e.runners))
	for _, r := range e.runners {
		rs = append(rs, r)
	}
	e.mu.Unlock()
	out := make(map[string]OrderStats, len(rs))
	for _, r := range rs {
		r.mu.Lock()
		out[r.name] = r.order.stats()
		r.mu.Unlock()
	}
	return out
}

// done removes finished deliveries from the store: durably before their keys are released
// (DoneSync) when one of them has a key, else with Done, which may wait in memory.
func (r *runner) done(seqs []uint64) error {
	r.mu.Lock()
	keyed := false
	for _, s := range seqs {
		if _, ok := r.order.seqKey[s]; ok {
			keyed = true
			break
		}
	}
	r.mu.Unlock()
	if keyed {
		return r.e.q.DoneSync(r.name, seqs...)
	}
	return r.e.q.Done(r.name, seqs...)
}
