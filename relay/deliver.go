package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

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
	// failures thins the lines of storage failures and failed deliveries (deliver_log.go).
	failures *LogSampler

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
		failures:  NewLogSampler(DefaultLogEvery),
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
	e.failures.Flush() // the counts of the last burst of failures, not lost with the process
	e.delivered.Flush()
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
			e.failures.Log(e.log, slog.LevelError, "promote", "promote scheduled deliveries", "err", err)
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
