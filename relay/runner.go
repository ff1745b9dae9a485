package relay

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// runner delivers one sink's queue.
type runner struct {
	e    *Engine
	cfg  SinkConfig
	name string
	log  *slog.Logger

	wake    chan struct{}
	jobs    chan []Delivery
	batch   BatchSink // non-nil when deliveries go out in batches
	dones   chan uint64
	retries chan Retry // failed attempts, for the rescheduler
	stop    chan struct{}
	// started is closed once the runner's goroutines run (after its predecessor exited),
	// exit once close has stopped them and committed their outcomes.
	started, exit chan struct{}

	attemptCtx context.Context
	cancel     context.CancelFunc
	limiter    *rate.Limiter // nil without a rate limit

	mu sync.Mutex
	// inflight holds the deliveries handed to workers, true once released. A released
	// delivery leaves it only at the dispatcher's next read of the queue (finished collects
	// them till then): a read taken while it was in flight may still list it, and must not
	// send it again. A read that lists a delivery released after the read began cannot tell
	// whether it saw it before or after: it reads again from there (see dispatch).
	inflight map[uint64]bool
	finished []uint64
	// skipped holds deliveries the dispatcher passed over because they were in flight; when
	// one of them is released still pending (a failed Done or Reschedule, or a race with the
	// promoter), the dispatcher rewinds to it so it is not stranded behind the cursor.
	skipped   map[uint64]struct{}
	rewindTo  uint64 // lowest seq to re-read from; 0 = none
	failures  int    // consecutive failed attempts, for the sink-level pause
	pauseTill time.Time
	// opPaused is an operator's pause of the sink (pause.go); resumedAt is when it was last
	// resumed, from which max_age counts.
	opPaused  bool
	resumedAt time.Time
	order     *orderState // per-key ordering (order.go)

	dispatchWG, workWG, commitWG sync.WaitGroup
}

func newRunner(e *Engine, c SinkConfig) *runner {
	if c.Concurrency < 1 {
		c.Concurrency = 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	name := c.Sink.Name()
	var bs BatchSink
	if b, ok := c.Sink.(BatchSink); ok && c.Batch.MaxChanges > 1 {
		bs = b
	}
	var lim *rate.Limiter
	if c.Rate.PerSecond > 0 {
		lim = rate.NewLimiter(rate.Limit(c.Rate.PerSecond), max(c.Rate.Burst, 1))
	}
	return &runner{
		limiter: lim,
		batch:   bs,
		e:       e, cfg: c, name: name, log: e.log.With("sink", name),
		wake:       make(chan struct{}, 1),
		jobs:       make(chan []Delivery),
		dones:      make(chan uint64, doneBatch),
		retries:    make(chan Retry, doneBatch),
		stop:       make(chan struct{}),
		started:    make(chan struct{}),
		exit:       make(chan struct{}),
		attemptCtx: ctx, cancel: cancel,
		inflight: map[uint64]bool{},
		skipped:  map[uint64]struct{}{},
		order:    newOrderState(),
	}
}

// start runs the runner once prev (the sink's previous runner, or nil) has exited.
func (r *runner) start(prev *runner) {
	r.commitWG.Add(2)
	r.workWG.Add(r.cfg.Concurrency)
	r.dispatchWG.Add(1)
	go func() {
		if prev != nil {
			<-prev.exit
		}
		go r.committer()
		go r.rescheduler()
		for range r.cfg.Concurrency {
			go r.worker()
		}
		go r.dispatch()
		close(r.started)
	}()
}

// close stops dispatching, waits for in-flight attempts (cancelling them when ctx ends), and
// flushes the committer. A runner whose predecessor has not exited yet waits for it first.
func (r *runner) close(ctx context.Context) {
	defer r.e.exited(r)
	defer close(r.exit)
	close(r.stop)
	<-r.started
	r.dispatchWG.Wait()
	close(r.jobs)
	finished := make(chan struct{})
	go func() { r.workWG.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-ctx.Done():
		r.cancel()
		<-finished
	}
	r.cancel()
	close(r.dones)
	close(r.retries)
	r.commitWG.Wait()
}

func (r *runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *runner) rewind(seq uint64) {
	r.mu.Lock()
	if r.rewindTo == 0 || seq < r.rewindTo {
		r.rewindTo = seq
	}
	r.mu.Unlock()
	r.poke()
}

// batchFull reports whether held should go out now.
func (r *runner) batchFull(held []Delivery) bool {
	if len(held) >= r.cfg.Batch.MaxChanges {
		return true
	}
	if r.cfg.Batch.MaxBytes > 0 {
		n := 0
		for _, d := range held {
			n += len(d.Data)
		}
		return n >= r.cfg.Batch.MaxBytes
	}
	return false
}

// send hands a job to a worker; false when the runner stops first (the job's deliveries stay
// in the spool, ready).
func (r *runner) send(job []Delivery) bool {
	select {
	case r.jobs <- job:
		return true
	case <-r.stop:
		seqs := make([]uint64, len(job))
		for i, d := range job {
			seqs[i] = d.Seq
		}
		r.release(true, seqs...)
		return false
	}
}

// paused reports whether the sink is in a failure pause or paused by an operator.
func (r *runner) paused() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opPaused || time.Now().Before(r.pauseTill)
}

// pause waits out a failing sink's pause: new changes arriving (wake) do not cut it short,
// or every accepted notification would send another attempt to a sink that is down.
func (r *runner) pause(d time.Duration) bool { return r.wait(d, false) }

// sleep waits d, or less if the runner is woken; it reports whether to go on.
func (r *runner) sleep(d time.Duration) bool { return r.wait(d, true) }

// wait waits d or until the runner stops (false) or, with wakeable, is woken.
func (r *runner) wait(d time.Duration, wakeable bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var wake <-chan struct{}
	if wakeable {
		wake = r.wake
	}
	select {
	case <-t.C:
		return true
	case <-r.stop:
		return false
	case <-wake:
		return true
	}
}

func (r *runner) worker() {
	defer r.workWG.Done()
	for job := range r.jobs {
		r.handle(job)
	}
}

// committer removes delivered changes from the spool, many per transaction.
func (r *runner) committer() {
	defer r.commitWG.Done()
	batch := make([]uint64, 0, doneBatch)
	for seq := range r.dones {
		batch = append(batch[:0], seq)
	drain:
		for len(batch) < cap(batch) {
			select {
			case s, ok := <-r.dones:
				if !ok {
					break drain
				}
				batch = append(batch, s)
			default:
				break drain
			}
		}
		err := r.done(batch)
		if err != nil {
			// The deliveries stay in the spool and are delivered again: at least once, never
			// lost.
			r.logFailure(r.log, slog.LevelError, "", "remove delivered changes from spool", "err", err, "count", len(batch))
		}
		r.release(err != nil, batch...)
	}
}

// rescheduler records failed attempts in the spool, many per transaction: a failing sink
// costs one commit per batch of failures, not one per failure (the worker does not wait).
func (r *runner) rescheduler() {
	defer r.commitWG.Done()
	batch := make([]Retry, 0, doneBatch)
	seqs := make([]uint64, 0, doneBatch)
	for rt := range r.retries {
		batch = append(batch[:0], rt)
	drain:
		for len(batch) < cap(batch) {
			select {
			case rt, ok := <-r.retries:
				if !ok {
					break drain
				}
				batch = append(batch, rt)
			default:
				break drain
			}
		}
		err := r.e.q.RescheduleBatch(r.name, batch)
		if err != nil {
			// They stay ready in the spool and are tried again.
			r.logFailure(r.log, slog.LevelError, "", "reschedule deliveries", "err", err, "count", len(batch))
		}
		seqs = seqs[:0]
		for _, rt := range batch {
			seqs = append(seqs, rt.Seq)
		}
		if err == nil {
			r.parked(seqs)
		}
		r.release(err != nil, seqs...)
		r.e.wakePromoter()
		// The spool has its own copies now; a reused array would keep each retry's
		// history (up to maxHistory attempts) alive until a later batch as long overwrote it.
		clear(batch)
	}
}

// release ends the flight of finished deliveries (see inflight). pending reports that they
// may still be in the ready queue (an attempt abandoned, or a spool update that failed).
func (r *runner) release(pending bool, seqs ...uint64) {
	r.mu.Lock()
	r.finished = append(r.finished, seqs...)
	rewind := uint64(0)
	for _, s := range seqs {
		if _, ok := r.inflight[s]; ok {
			r.inflight[s] = true
		}
		if _, ok := r.skipped[s]; ok || pending {
			delete(r.skipped, s)
			if rewind == 0 || s < rewind {
				rewind = s
			}
		}
	}
	if done := r.order.released(pending, seqs); done != 0 && r.e.poll > 0 && (rewind == 0 || done < rewind) {
		rewind = done // a shared store hands out a key's next delivery only now: look for it
	}
	if rewind != 0 && (r.rewindTo == 0 || rewind < r.rewindTo) {
		r.rewindTo = rewind
	}
	freed := len(r.order.freed) > 0
	r.mu.Unlock()
	if rewind != 0 || freed {
		r.poke()
	}
}
