package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// BatchPolicy groups deliveries of a BatchSink into one call. MaxChanges <= 1 means no
// batching.
type BatchPolicy struct {
	MaxChanges int           // changes per call at most
	MaxBytes   int           // spooled bytes per call at most (0 = no limit)
	MaxWait    time.Duration // how long a partial batch may wait for more changes
}

// SinkConfig is one sink as the engine runs it.
type SinkConfig struct {
	Sink        Sink
	Concurrency int
	Retry       RetryPolicy
	Batch       BatchPolicy // used only when Sink is a BatchSink
	Rate        RatePolicy
}

// RatePolicy limits a sink's requests (a batch is one request) across all its workers.
// PerSecond <= 0 means no limit. Waiting for the limiter is not an attempt: it counts towards
// nothing but the time that passes.
type RatePolicy struct {
	PerSecond float64 // sustained requests per second
	Burst     int     // requests that may go at once after a quiet spell (at least 1)
}

// DeadLetters is what the engine needs of the dead-letter directory.
type DeadLetters interface {
	Write(l *deadletter.Letter) error
}

// DeliveryObserver receives what the engine does, for metrics. Methods must be cheap and safe
// for concurrent use.
type DeliveryObserver interface {
	// Attempt is called after every attempt; outcome is "ok", "retry" or "permanent".
	Attempt(sink, outcome string, d time.Duration)
	// Delivered is called once per delivered change, with the attempts it took and the time
	// from acceptance to delivery.
	Delivered(sink string, attempts int, sinceAccept time.Duration)
	// DeadLettered is called once per abandoned delivery.
	DeadLettered(sink string)
}

// RateLimitObserver is an optional extension of DeliveryObserver that sees the time a sink's
// worker waited for the sink's rate limiter before an attempt. It must be cheap.
type RateLimitObserver interface {
	RateLimitWait(sink string, d time.Duration)
}

// DeliveryTrace is what happened to one delivery of one change in one attempt, for a
// DeliveryTracer.
type DeliveryTrace struct {
	Sink     string
	ChangeID string
	Attempt  int       // 1-based
	At       time.Time // when the attempt started
	Status   int       // HTTP status of a failed attempt, 0 if none
	Err      string    // the attempt's error, "" when delivered
	// Outcome is "delivered", "retrying" (then RetryAt is set) or "dead_letter" (then
	// DeadLetter names the letter).
	Outcome    string
	RetryAt    time.Time
	DeadLetter string
}

// DeliveryTracer is an optional extension of DeliveryObserver that sees each delivery's
// change id and outcome (the console's story of a change). It must be cheap and must not
// block.
type DeliveryTracer interface {
	Trace(t DeliveryTrace)
}

// maxHistory bounds the attempt log kept with a delivery (the first attempt and the latest
// ones are kept), so a long outage does not grow spool records without limit.
const maxHistory = 20

// readyBatch is how many deliveries a dispatcher reads from the spool at a time.
const readyBatch = 256

// doneBatch bounds the finished deliveries a sink's committer removes from the spool in one
// call. A call that reaches the spool file waits for its commit (at most one per
// spool.Options.CommitInterval), so this, not the sink, would bound a fast sink's rate
// through a backlog: 4096 per 20 ms is 200k changes/s.
const doneBatch = 4096

// defaultSweep is how often an idle dispatcher re-reads its ready queue from the start. It
// costs one read transaction per idle sink per sweep, and bounds how long a delivery stranded
// behind the cursor by a bug could wait; the sweep logs each one it finds.
const defaultSweep = 2 * time.Second

// replaceTimeout bounds how long a reload waits for a replaced sink's attempts in flight.
const replaceTimeout = 10 * time.Second

// Engine delivers spooled changes to sinks. Each sink has a dispatcher reading its queue in
// acceptance order, Concurrency workers, and a committer that removes finished deliveries from
// the spool in batches. A failed attempt is rescheduled in the spool with exponential backoff
// and jitter, so a failing change never blocks the changes behind it nor another sink; a
// delivery out of budget goes to the dead-letter directory before it leaves the spool.
type Engine struct {
	q   Queue
	dl  DeadLetters
	obs DeliveryObserver
	tr  DeliveryTracer    // obs, when it is one; else nil
	rw  RateLimitObserver // obs, when it is one; else nil
	log *slog.Logger
	now func() time.Time
	// poll, when positive, makes dispatchers re-read their queue from its start that often
	// (the store is a Poller: its queues also grow outside this process).
	poll time.Duration
	// sweep is how often an idle dispatcher re-reads its ready queue from the start, a safety
	// net that finds a delivery stranded behind its cursor (defaultSweep; 0 = never).
	sweep time.Duration
	// delivered thins the info line of successful deliveries to one per sink per
	// DefaultLogEvery (with the count left out), so a busy relay does not drown its log; at
	// debug every delivery is logged.
	delivered *LogSampler

	mu      sync.Mutex
	runners map[string]*runner
	// last is the newest runner of each sink, running or still closing. Exactly one runner
	// serves a sink's queue at a time: a new one starts after the one before it has exited
	// (its attempts finished and their outcomes committed), so a stand-in that dead-letters
	// the deliveries of a removed sink never takes one the old runner has delivered.
	last       map[string]*runner
	live       map[*runner]struct{} // every runner not exited yet, for Close
	configured map[string]bool      // sinks of the last SetSinks: never orphans, even mid-replacement
	states     map[string]SinkState // operators' pauses, as storage has them (pause.go)
	// statesKnown is false until SinkStates was read once: every sink is held until then.
	statesKnown bool
	closed      bool

	promote   chan struct{} // wakes the promoter early (a reschedule may be due soon)
	startOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
	watchDone chan struct{} // closed when watchStates ends
}

// NewEngine returns an engine over q; call Start, then SetSinks.
func NewEngine(q Queue, dl DeadLetters, obs DeliveryObserver, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var poll time.Duration
	if p, ok := q.(Poller); ok {
		poll = p.PollInterval()
	}
	e := &Engine{
		q: q, dl: dl, obs: obs, log: log.With("component", "deliver"), now: time.Now, poll: poll, sweep: defaultSweep,
		delivered: NewLogSampler(DefaultLogEvery),
		runners:   map[string]*runner{},
		last:      map[string]*runner{},
		live:      map[*runner]struct{}{},
		promote:   make(chan struct{}, 1),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		watchDone: make(chan struct{}),
		states:    map[string]SinkState{},
	}
	e.tr, _ = obs.(DeliveryTracer)
	e.rw, _ = obs.(RateLimitObserver)
	return e
}

// Start runs the promoter, which makes rescheduled deliveries ready when their time comes.
func (e *Engine) Start() {
	e.startOnce.Do(func() {
		go e.promoter()
		go e.watchStates()
	})
}

// Notify wakes the dispatchers of sinks that have new deliveries. It never blocks. A sink the
// engine does not run (a request routed with rules older than a reload that removed it) gets
// a runner that dead-letters its deliveries, as SetSinks does for leftovers.
func (e *Engine) Notify(sinks []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range sinks {
		r := e.runners[s]
		if r == nil && !e.closed && !e.configured[s] {
			r = e.startRunner(orphanConfig(s))
		}
		if r != nil {
			r.poke()
		}
	}
}

// orphanConfig runs a sink that has spooled deliveries but is not configured: every delivery
// is dead-lettered with the reason, to be replayed once the sink is back.
func orphanConfig(name string) SinkConfig {
	return SinkConfig{Sink: orphanSink(name), Concurrency: 1, Retry: RetryPolicy{MaxAttempts: 1}}
}

// SetSinks makes the engine run exactly cfgs: new sinks start, sinks whose configuration is
// replaced finish their in-flight attempts (for up to 10s) and restart with the new one,
// removed sinks stop. Deliveries left in the spool for a sink that is not configured are
// dead-lettered ("permanent: sink "x" is not configured"), to be replayed once it is back.
func (e *Engine) SetSinks(cfgs []SinkConfig) error {
	want := map[string]SinkConfig{}
	for _, c := range cfgs {
		want[c.Sink.Name()] = c
	}
	pending, err := e.q.Sinks()
	if err != nil {
		return fmt.Errorf("list spooled sinks: %w", err)
	}
	if err := e.loadStates("start or reload"); err != nil {
		// Runners must not deliver without knowing which sinks an operator paused: they start
		// held, and watchStates reads the states again until it can.
		e.log.Warn("sink pause states unknown: holding every sink until they can be read", "err", err)
	}
	for _, name := range pending {
		if _, ok := want[name]; !ok {
			e.log.Warn("deliveries pending for a sink not in the config: dead-lettering them", "sink", name)
			want[name] = orphanConfig(name)
		}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return errors.New("engine closed")
	}
	e.configured = map[string]bool{}
	for _, c := range cfgs {
		e.configured[c.Sink.Name()] = true
	}
	var stopping []*runner
	for name, r := range e.runners {
		if c, ok := want[name]; !ok || c.Sink != r.cfg.Sink || c.Concurrency != r.cfg.Concurrency || c.Retry != r.cfg.Retry || c.Batch != r.cfg.Batch || c.Rate != r.cfg.Rate {
			stopping = append(stopping, r)
			delete(e.runners, name)
		}
	}
	e.mu.Unlock()
	// A replaced sink finishes its attempts in flight, within bounds: an attempt cut short is
	// not counted and is made again by the new runner.
	ctx, cancel := context.WithTimeout(context.Background(), replaceTimeout)
	defer cancel()
	for _, r := range stopping {
		r.close(ctx)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errors.New("engine closed")
	}
	for name, c := range want {
		if _, ok := e.runners[name]; ok {
			continue
		}
		e.startRunner(c)
	}
	return nil
}

// startRunner starts a runner for c, after the sink's previous runner, if any, has exited.
// Lock should be held.
func (e *Engine) startRunner(c SinkConfig) *runner {
	name := c.Sink.Name()
	r := newRunner(e, c)
	if st, ok := e.states[name]; ok {
		r.opPaused = st.Paused
		if !st.Paused {
			r.resumedAt = st.Since
		}
	} else if !e.statesKnown {
		r.opPaused = true // held until the states are read (watchStates)
	}
	prev := e.last[name]
	e.runners[name] = r
	e.last[name] = r
	e.live[r] = struct{}{}
	r.start(prev)
	return r
}

// exited forgets r once it has exited.
func (e *Engine) exited(r *runner) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.live, r)
	if e.last[r.name] == r {
		delete(e.last, r.name)
	}
}

// Close stops dispatching, lets in-flight attempts finish until ctx is done (then cancels
// them; they are retried after restart), and commits what finished. Deliveries not attempted
// stay in the spool.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	rs := make([]*runner, 0, len(e.runners))
	for _, r := range e.runners {
		rs = append(rs, r)
	}
	e.runners = map[string]*runner{}
	closing := make([]*runner, 0, len(e.live))
	for r := range e.live {
		closing = append(closing, r)
	}
	e.mu.Unlock()
	close(e.stop)
	e.Start() // so that done is closed even if Start was never called
	<-e.done
	<-e.watchDone
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() { defer wg.Done(); r.close(ctx) }()
	}
	wg.Wait()
	// Runners a reload is still replacing commit their outcomes before the spool closes.
	for _, r := range closing {
		<-r.exit
	}
	return ctx.Err()
}

func (e *Engine) wakePromoter() {
	select {
	case e.promote <- struct{}{}:
	default:
	}
}

// promoter moves due scheduled deliveries back to their ready queues and rewinds the sinks'
// dispatchers to them.
func (e *Engine) promoter() {
	defer close(e.done)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		case <-e.promote:
		}
		wait := time.Second
		promoted, err := e.q.Promote(e.now())
		if err != nil {
			e.log.Error("promote scheduled deliveries", "err", err)
		}
		if len(promoted) > 0 {
			e.mu.Lock()
			for sink, seq := range promoted {
				if r := e.runners[sink]; r != nil {
					r.rewind(seq)
				}
			}
			e.mu.Unlock()
			wait = 0
		} else if next, ok, err := e.q.NextScheduled(); err == nil && ok {
			if d := next.Sub(e.now()); d < wait {
				wait = max(d, time.Millisecond)
			}
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

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

// dispatch reads the sink's ready queue in Seq order and hands deliveries to the workers, one
// at a time or, for a batching sink, in batches. The cursor only moves back when the promoter
// makes older deliveries ready again, or, for a Poller store, every poll interval; deliveries
// already in flight are skipped.
func (r *runner) dispatch() {
	defer r.dispatchWG.Done()
	var cursor uint64
	var held []Delivery // a partial batch waiting up to MaxWait for company
	var heldSince time.Time
	var polls <-chan time.Time // nil unless the store is a Poller
	if r.e.poll > 0 {
		t := time.NewTicker(r.e.poll)
		defer t.Stop()
		polls = t.C
	}
	var sweepTo uint64 // while sweeping: the cursor the sweep started from
	var sweepC <-chan time.Time
	if r.e.sweep > 0 {
		t := time.NewTicker(r.e.sweep)
		defer t.Stop()
		sweepC = t.C
	}
	for {
		select {
		case <-polls:
			cursor = 0 // deliveries may have appeared behind the cursor
		default:
		}
		r.mu.Lock()
		if r.rewindTo != 0 {
			cursor = min(cursor, r.rewindTo-1)
			r.rewindTo = 0
		}
		for _, seq := range r.finished {
			delete(r.inflight, seq)
		}
		r.finished = r.finished[:0]
		pause := time.Until(r.pauseTill)
		held0 := r.opPaused
		limit := readyBatch
		if r.failures >= r.cfg.Concurrency { // failing enough to pause (failurePause)
			limit = r.probeBatch()
		}
		r.mu.Unlock()
		if held0 {
			if !r.holdForOperator(held) {
				return
			}
			held = nil
			continue // read from where the released deliveries rewound the cursor
		}
		if pause > 0 && !r.pause(pause) {
			return
		}
		ds, err := r.e.q.Ready(r.name, cursor, limit)
		if err != nil {
			r.log.Error("read ready deliveries", "err", err)
			if !r.sleep(time.Second) {
				return
			}
			continue
		}
		for _, d := range ds {
			if r.paused() {
				break // the sink is failing: the rest of this read waits for the pause
			}
			cursor = max(cursor, d.Seq)
			r.mu.Lock()
			released, busy := r.inflight[d.Seq]
			switch {
			case released:
				// Released while this read was on its way (a reschedule that a promotion
				// made ready again, say): the read may predate either. Read it again.
				if r.rewindTo == 0 || d.Seq < r.rewindTo {
					r.rewindTo = d.Seq
				}
			case busy:
				// Still in flight: its release rewinds to it if it stays pending.
				r.skipped[d.Seq] = struct{}{}
			default:
				r.inflight[d.Seq] = false
			}
			r.mu.Unlock()
			if busy {
				continue
			}
			if d.Seq <= sweepTo {
				r.log.Warn("delivery found behind the dispatcher's cursor by the sweep", "seq", d.Seq, "attempt", d.Attempt)
			}
			if r.batch == nil {
				if !r.send([]Delivery{d}) {
					return
				}
				continue
			}
			if len(held) == 0 {
				heldSince = time.Now()
			}
			held = append(held, d)
			if r.batchFull(held) {
				if !r.send(held) {
					return
				}
				held = nil
			}
		}
		if len(ds) == limit || r.paused() {
			continue
		}
		sweepTo = 0
		if len(held) > 0 {
			// The queue is empty for now: a partial batch waits for more changes at most MaxWait.
			if wait := r.cfg.Batch.MaxWait - time.Since(heldSince); wait > 0 {
				if !r.sleep(wait) {
					return
				}
				continue
			}
			if !r.send(held) {
				return
			}
			held = nil
			continue
		}
		select {
		case <-r.wake:
		case <-polls:
			cursor = 0
		case <-sweepC:
			// Idle: read the whole queue again. Whatever it finds that is not in flight was
			// stranded, which the rewinds are there to prevent.
			sweepTo, cursor = cursor, 0
		case <-r.stop:
			return
		}
	}
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
		err := r.e.q.Done(r.name, batch...)
		if err != nil {
			// The deliveries stay in the spool and are delivered again: at least once, never
			// lost.
			r.log.Error("remove delivered changes from spool", "err", err, "count", len(batch))
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
			r.log.Error("reschedule deliveries", "err", err, "count", len(batch))
		}
		seqs = seqs[:0]
		for _, rt := range batch {
			seqs = append(seqs, rt.Seq)
		}
		r.release(err != nil, seqs...)
		r.e.wakePromoter()
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
	if rewind != 0 && (r.rewindTo == 0 || rewind < r.rewindTo) {
		r.rewindTo = rewind
	}
	r.mu.Unlock()
	if rewind != 0 {
		r.poke()
	}
}

// handle makes one attempt of a job (one delivery, or a batch for a BatchSink) and records
// the outcome of each delivery.
func (r *runner) handle(job []Delivery) {
	ds := make([]Delivery, 0, len(job))
	evs := make([]*Event, 0, len(job))
	for _, d := range job {
		ev := new(Event)
		if err := UnmarshalBinary(d.Data, ev); err != nil {
			r.deadLetter(d, nil, d.History, fmt.Sprintf("corrupt spool record: %v", err))
			continue
		}
		ds, evs = append(ds, d), append(evs, ev)
	}
	if len(ds) == 0 {
		return
	}
	if r.limiter != nil {
		start := time.Now()
		err := r.limiter.Wait(r.attemptCtx)
		if r.e.rw != nil {
			r.e.rw.RateLimitWait(r.name, time.Since(start))
		}
		if err != nil {
			// Shutting down while waiting for the limiter: nothing was attempted.
			r.putBack(ds)
			return
		}
	}
	if p, _ := r.operatorState(); p {
		// Paused by an operator after the dispatcher handed this job over: not attempted.
		r.putBack(ds)
		return
	}
	start := r.e.now()
	var err error
	if r.batch != nil {
		err = r.batch.DeliverBatch(r.attemptCtx, evs)
	} else {
		err = r.cfg.Sink.Deliver(r.attemptCtx, evs[0])
	}
	took := r.e.now().Sub(start)
	switch {
	case err == nil:
		r.succeeded()
		if r.e.obs != nil {
			r.e.obs.Attempt(r.name, "ok", took)
		}
		for i, d := range ds {
			if r.e.obs != nil {
				r.e.obs.Delivered(r.name, d.Attempt+1, r.e.now().Sub(d.FirstAt))
			}
			if r.e.tr != nil {
				r.e.tr.Trace(DeliveryTrace{Sink: r.name, ChangeID: evs[i].ID, Attempt: d.Attempt + 1, At: start, Outcome: "delivered"})
			}
			r.logDelivered(evs[i].ID, d, took, len(ds))
			r.dones <- d.Seq
		}
	case r.attemptCtx.Err() != nil:
		// Shutting down: the attempt did not count; the deliveries stay ready in the spool.
		r.putBack(ds)
	case len(ds) > 1 && errors.Is(err, ErrPermanent):
		// One bad change must not dead-letter its neighbours: try each alone.
		r.log.Warn("batch rejected permanently, retrying its changes one by one", "err", err, "batch", len(ds))
		if r.e.obs != nil {
			r.e.obs.Attempt(r.name, "permanent", took)
		}
		for _, d := range ds {
			r.handle([]Delivery{d})
		}
	default:
		if !errors.Is(err, ErrPermanent) {
			r.sinkFailed() // once per attempt, however many changes it carried
		}
		for i, d := range ds {
			r.failed(d, evs[i], err, start, took)
		}
	}
}

// putBack ends the flight of deliveries not attempted: they stay ready in storage.
func (r *runner) putBack(ds []Delivery) {
	for _, d := range ds {
		r.release(true, d.Seq)
	}
}

// logDelivered logs a successful delivery: each one at debug, else at most one line per sink
// per interval at info, counting the others.
func (r *runner) logDelivered(id string, d Delivery, took time.Duration, batch int) {
	debug := r.log.Enabled(context.Background(), slog.LevelDebug)
	if !debug && !r.log.Enabled(context.Background(), slog.LevelInfo) {
		return // the sampler neither writes nor counts it: no need to build the line
	}
	attrs := []any{"change_id", id, "seq", d.Seq, "attempt", d.Attempt + 1, "duration", took.String(), "batch", batch}
	if debug {
		r.log.Debug("change delivered", attrs...)
		return
	}
	r.e.delivered.Log(r.log, slog.LevelInfo, r.name, "change delivered", attrs...)
}

// failed records a failed attempt of one delivery: dead letter when permanent or out of
// budget, else a reschedule with backoff.
func (r *runner) failed(d Delivery, ev *Event, err error, start time.Time, took time.Duration) {
	attempt := d.Attempt + 1
	history := appendHistory(d.History, deadletter.Attempt{At: start.UTC(), Status: statusOf(err), Error: err.Error()})
	log := r.log.With("change_id", ev.ID, "seq", d.Seq, "attempt", attempt, "status", statusOf(err))
	perm := errors.Is(err, ErrPermanent)
	if r.e.obs != nil {
		outcome := "retry"
		if perm {
			outcome = "permanent"
		}
		r.e.obs.Attempt(r.name, outcome, took)
	}
	paused, resumed := r.operatorState()
	dec := r.cfg.Retry.Decide(Failure{Attempt: attempt, FirstAt: d.FirstAt, Now: r.e.now(), Err: err,
		ResumedAt: resumed, Paused: paused}, DefaultRand)
	switch {
	case perm:
		log.Warn("delivery rejected permanently", "err", err)
	case dec.DeadLetter:
		log.Warn("delivery failed, giving up", "err", err, "reason", dec.Reason)
	default:
		log.Info("delivery failed, rescheduled", "err", err, "retry_at", dec.RetryAt)
		if r.e.tr != nil {
			r.e.tr.Trace(DeliveryTrace{Sink: r.name, ChangeID: ev.ID, Attempt: attempt, At: start, Status: statusOf(err),
				Err: err.Error(), Outcome: "retrying", RetryAt: dec.RetryAt})
		}
		r.reschedule(d.Seq, dec.RetryAt, attempt, history)
		return
	}
	r.deadLetter(d, ev, history, dec.Reason)
}

// reschedule hands a failed attempt to the rescheduler; the delivery stays in flight until
// the spool has recorded it.
func (r *runner) reschedule(seq uint64, at time.Time, attempt int, history []byte) {
	r.retries <- Retry{Seq: seq, At: at, Attempt: attempt, History: history}
}

// deadLetter writes the letter first and removes the delivery from the spool only after the
// letter is on disk; if the letter cannot be written the delivery is retried later instead.
func (r *runner) deadLetter(d Delivery, ev *Event, history []byte, reason string) {
	l := &deadletter.Letter{
		Sink:    r.name,
		Seq:     d.Seq,
		Reason:  reason,
		FirstAt: d.FirstAt.UTC(),
		DeadAt:  r.e.now().UTC(),
	}
	if err := json.Unmarshal(history, &l.Attempts); len(history) > 0 && err != nil {
		r.log.Warn("unreadable attempt history", "seq", d.Seq, "err", err)
	}
	if ev != nil {
		l.ChangeID = ev.ID
		l.Rules = ev.Rules
		l.Change = AppendEnvelope(nil, ev)
		if ev.Source == SourceRaw {
			l.Signature = ev.Signature
			l.Body = string(ev.Value) // the exact bytes Meta signed
		}
	} else {
		b, _ := json.Marshal(d.Data) // unreadable record: keep its bytes (base64) so nothing is lost
		l.Change = json.RawMessage(`{"corrupt_record_base64":` + string(b) + `}`)
	}
	if err := r.e.dl.Write(l); err != nil {
		r.log.Error("write dead letter, will retry the delivery", "seq", d.Seq, "err", err)
		r.reschedule(d.Seq, r.e.now().Add(r.cfg.Retry.letterRetry()), d.Attempt, history)
		return
	}
	if r.e.obs != nil {
		r.e.obs.DeadLettered(r.name)
	}
	if r.e.tr != nil {
		t := DeliveryTrace{Sink: r.name, ChangeID: l.ChangeID, Attempt: d.Attempt + 1, Outcome: "dead_letter", DeadLetter: l.ID, At: l.DeadAt}
		if n := len(l.Attempts); n > 0 {
			a := l.Attempts[n-1]
			t.At, t.Status, t.Err = a.At, a.Status, a.Error
		}
		r.e.tr.Trace(t)
	}
	r.log.Warn("delivery dead-lettered", "change_id", l.ChangeID, "seq", d.Seq, "reason", reason, "dead_letter", l.ID)
	r.dones <- d.Seq
}

// succeeded and sinkFailed track consecutive failures: while a sink keeps failing, its dispatcher
// pauses between deliveries (exponentially, up to MaxBackoff) instead of burning every queued
// change's retry budget against a sink that is down.
func (r *runner) succeeded() {
	r.mu.Lock()
	r.failures = 0
	r.pauseTill = time.Time{}
	r.mu.Unlock()
}

func (r *runner) sinkFailed() {
	r.mu.Lock()
	r.failures++
	if d := r.cfg.Retry.failurePause(r.failures, r.cfg.Concurrency, DefaultRand); d > 0 {
		r.pauseTill = r.e.now().Add(d)
	}
	r.mu.Unlock()
}

// statusOf returns the HTTP status recorded in err, 0 when none.
func statusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// appendHistory appends a to the JSON attempt log, keeping the first attempt and the most
// recent ones.
func appendHistory(history []byte, a deadletter.Attempt) []byte {
	var list []deadletter.Attempt
	if len(history) > 0 {
		_ = json.Unmarshal(history, &list)
	}
	list = append(list, a)
	if len(list) > maxHistory {
		list = append(list[:1], list[len(list)-maxHistory+1:]...)
	}
	b, _ := json.Marshal(list)
	return b
}

// orphanSink stands in for a sink that has spooled deliveries but is no longer configured.
type orphanSink string

func (o orphanSink) Name() string { return string(o) }

func (o orphanSink) Deliver(context.Context, *Event) error {
	return fmt.Errorf("sink %q is not configured: %w", string(o), ErrPermanent)
}
