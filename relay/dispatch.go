package relay

import (
	"log/slog"
	"time"
)

// dispatcher is one run of a runner's dispatch loop: the cursor into the sink's ready queue
// and a partial batch waiting for company.
type dispatcher struct {
	r      *runner
	cursor uint64
	// held is a partial batch waiting up to MaxWait for company, since heldSince.
	held      []Delivery
	heldSince time.Time
	// polls is nil unless the store is a Poller; sweeps is nil when the sweep is off.
	polls, sweeps <-chan time.Time
	// sweepTo is, while sweeping, the cursor the sweep started from.
	sweepTo uint64
	// reread lists the deliveries of the current read that were released while it was on its
	// way (claim): they are read again, and stay lost to their ordering keys (order.go).
	reread []Delivery
}

// dispatch reads the sink's ready queue in Seq order and hands deliveries to the workers, one
// at a time or, for a batching sink, in batches. The cursor only moves back when the promoter
// makes older deliveries ready again, or, for a Poller store, every poll interval; deliveries
// already in flight are skipped. While an operator has the sink paused it reads nothing.
func (r *runner) dispatch() {
	defer r.dispatchWG.Done()
	d := &dispatcher{r: r}
	if r.e.poll > 0 {
		t := time.NewTicker(r.e.poll)
		defer t.Stop()
		d.polls = t.C
	}
	if r.e.sweep > 0 {
		t := time.NewTicker(r.e.sweep)
		defer t.Stop()
		d.sweeps = t.C
	}
	if !r.loadWaiting() {
		return
	}
	for d.step() {
	}
}

// step reads the queue once from the cursor and hands out what it finds, then, when the queue
// is empty for now, waits; it reports whether to go on (false: the runner stops).
func (d *dispatcher) step() bool {
	r := d.r
	select {
	case <-d.polls:
		d.cursor = 0 // deliveries may have appeared behind the cursor
	default:
	}
	opPaused, pause, limit := d.sync()
	if opPaused {
		if !r.holdForOperator(d.held) {
			return false
		}
		d.held = nil
		return true // read from where the released deliveries rewound the cursor
	}
	if pause > 0 && !r.pause(pause) {
		return false
	}
	runnable, rewind := r.takeRunnable() // the next change of keys whose last one is done
	if rewind != 0 {
		d.cursor = min(d.cursor, rewind-1)
	}
	for _, dv := range runnable {
		if !d.emit(dv) {
			return false
		}
	}
	from := d.cursor
	ds, err := r.e.q.Ready(r.name, d.cursor, limit)
	if err != nil {
		r.logFailure(r.log, slog.LevelError, "", "read ready deliveries", "err", err)
		return r.sleep(time.Second)
	}
	complete := len(ds) < limit
	for _, dv := range ds {
		if r.paused() {
			complete = false
			break // the sink is failing or paused: the rest of this read waits
		}
		if !d.offer(dv) {
			return false
		}
	}
	r.orderPassed(from, d.cursor, complete, d.reread)
	clear(d.reread) // nothing of the deliveries (their data) outlives the read
	d.reread = d.reread[:0]
	if len(ds) == limit || r.paused() {
		return true
	}
	d.sweepTo = 0
	return d.idle()
}

// sync applies what happened since the last read (rewinds, releases) and returns the sink's
// operator pause, the rest of its failure pause and how many deliveries to read.
func (d *dispatcher) sync() (opPaused bool, pause time.Duration, limit int) {
	r := d.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rewindTo != 0 {
		d.cursor = min(d.cursor, r.rewindTo-1)
		r.rewindTo = 0
	}
	for _, seq := range r.finished {
		delete(r.inflight, seq)
	}
	r.finished = r.finished[:0]
	limit = readyBatch
	if r.failures >= r.cfg.Concurrency { // failing enough to pause (failurePause)
		limit = r.probeBatch()
	}
	return r.opPaused, time.Until(r.pauseTill), limit
}

// probeBatch is how many deliveries the dispatcher reads at a time while the sink fails enough
// to be paused between attempts: enough for every worker's next attempt, not readyBatch, since
// the next failure pauses the sink again and the rest of a read would be thrown away (with
// sinks down, reading and decoding 256 deliveries to send one or two was most of the
// dispatcher's cost). A sink failing now and then (fewer consecutive failures than its
// concurrency) reads full pages.
func (r *runner) probeBatch() int {
	if r.batch == nil {
		return min(readyBatch, r.cfg.Concurrency)
	}
	return min(readyBatch, r.cfg.Concurrency*max(1, r.cfg.Batch.MaxChanges))
}

// offer moves the cursor past dv and hands it out unless it is in flight: alone, or into the
// partial batch, which goes out once full. It reports whether to go on.
func (d *dispatcher) offer(dv Delivery) bool {
	r := d.r
	d.cursor = max(d.cursor, dv.Seq)
	ok, reread := r.claim(dv)
	if reread {
		d.reread = append(d.reread, dv)
	}
	if !ok {
		return true
	}
	if dv.Seq <= d.sweepTo {
		r.log.Warn("delivery found behind the dispatcher's cursor by the sweep", "seq", dv.Seq, "attempt", dv.Attempt)
	}
	return d.emit(dv)
}

// emit hands out dv, marked in flight: alone, or into the partial batch, which goes out once
// full. It reports whether to go on.
func (d *dispatcher) emit(dv Delivery) bool {
	r := d.r
	if r.batch == nil {
		return r.send([]Delivery{dv})
	}
	if len(d.held) == 0 {
		d.heldSince = time.Now()
	}
	d.held = append(d.held, dv)
	if r.batchFull(d.held) {
		if !r.send(d.held) {
			return false
		}
		d.held = nil
	}
	return true
}

// idle is the dispatcher with the queue empty for now: a partial batch waits for more changes
// at most MaxWait, then goes; otherwise it waits to be woken, for a poll or for the sweep. It
// reports whether to go on.
func (d *dispatcher) idle() bool {
	r := d.r
	if len(d.held) > 0 {
		if wait := r.cfg.Batch.MaxWait - time.Since(d.heldSince); wait > 0 {
			return r.sleep(wait)
		}
		if !r.send(d.held) {
			return false
		}
		d.held = nil
		return true
	}
	select {
	case <-r.wake:
	case <-d.polls:
		d.cursor = 0
	case <-d.sweeps:
		// Idle: read the whole queue again. Whatever it finds that is not in flight was
		// stranded, which the rewinds are there to prevent.
		d.sweepTo, d.cursor = d.cursor, 0
	case <-r.stop:
		return false
	}
	return true
}

// claim marks the delivery dv in flight and reports true, or reports false when it cannot go
// out now: still in flight (its release rewinds to it if it stays pending), released while
// this read was on its way (reread: a reschedule that a promotion made ready again, say: the
// read may predate either, so the dispatcher reads it again), or held back behind an earlier
// change of its ordering key (order.go).
func (r *runner) claim(dv Delivery) (ok, reread bool) {
	seq := dv.Seq
	r.mu.Lock()
	defer r.mu.Unlock()
	released, busy := r.inflight[seq]
	switch {
	case released:
		if r.rewindTo == 0 || seq < r.rewindTo {
			r.rewindTo = seq
		}
		return false, true
	case busy:
		r.skipped[seq] = struct{}{}
		return false, false
	case !r.order.gate(dv, r.name):
		return false, false
	}
	r.inflight[seq] = false
	return true, false
}
