package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// recordSink records the ids it took, in the order it took them; each change fails its first
// failFirst attempts with a 503.
type recordSink struct {
	name      string
	failFirst int
	mu        sync.Mutex
	got       []string
	tries     map[string]int
}

func newRecordSink(name string, failFirst int) *recordSink {
	return &recordSink{name: name, failFirst: failFirst, tries: map[string]int{}}
}

func (s *recordSink) Name() string { return s.name }

func (s *recordSink) Deliver(_ context.Context, ev *relay.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tries[ev.ID]++
	if s.tries[ev.ID] <= s.failFirst {
		return &relay.StatusError{Status: 503, Msg: "status 503"}
	}
	s.got = append(s.got, ev.ID)
	return nil
}

func (s *recordSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// waitFor polls cond with a generous deadline (a loaded 2-core machine).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pauseRig is a spool in a directory, an engine over it, reopened at will.
type pauseRig struct {
	t    *testing.T
	path string
	sp   *spool.Spool
	e    *relay.Engine
	dl   *dlCount
	obs  relay.DeliveryObserver
	n    int // changes accepted so far, for their ids
}

func newPauseRig(t *testing.T) *pauseRig {
	r := &pauseRig{t: t, path: filepath.Join(t.TempDir(), "spool.db"), dl: &dlCount{ids: map[string]int{}}}
	t.Cleanup(r.stop)
	return r
}

// start opens the spool and starts an engine running cfgs.
func (r *pauseRig) start(cfgs ...relay.SinkConfig) {
	r.t.Helper()
	sp, err := spool.Open(r.path, spool.Options{})
	if err != nil {
		r.t.Fatal(err)
	}
	r.sp = sp
	r.e = relay.NewEngine(embedded.New(sp), r.dl, r.obs, discard())
	r.e.Start()
	if err := r.e.SetSinks(cfgs); err != nil {
		r.t.Fatal(err)
	}
}

func (r *pauseRig) stop() {
	if r.e == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r.e.Close(ctx)
	r.sp.Close()
	r.e, r.sp = nil, nil
}

// accept spools n changes for sinks and returns their ids.
func (r *pauseRig) accept(n int, sinks ...string) []string {
	r.t.Helper()
	var ids []string
	var items []spool.Item
	for range n {
		r.n++
		ev := relay.Event{ID: fmt.Sprintf("p%03d", r.n), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges,
			Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
		ids = append(ids, ev.ID)
		items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: sinks})
	}
	if _, err := r.sp.Accept(context.Background(), items, time.Now()); err != nil {
		r.t.Fatal(err)
	}
	r.e.Notify(sinks)
	return ids
}

func (r *pauseRig) pending(sink string) int {
	r.t.Helper()
	st, err := r.sp.Stats()
	if err != nil {
		r.t.Fatal(err)
	}
	return st[sink].Ready + st[sink].Scheduled
}

// letters returns how many dead letters were written.
func (r *pauseRig) letters() int {
	r.dl.mu.Lock()
	defer r.dl.mu.Unlock()
	return len(r.dl.ids)
}

func (r *pauseRig) setPaused(sink string, paused bool) {
	r.t.Helper()
	if _, changed, err := r.e.SetPaused(sink, paused, "test"); err != nil || !changed {
		r.t.Fatalf("SetPaused(%q, %v) = changed %v, %v", sink, paused, changed, err)
	}
}

// TestEngine_Pause: a paused sink receives nothing while another sink takes every change; it
// stays paused across a restart; resumed, it gets its whole backlog in acceptance order, and
// nothing is dead-lettered.
func TestEngine_Pause(t *testing.T) {
	r := newPauseRig(t)
	held, live := newRecordSink("held", 0), newRecordSink("live", 0)
	cfgs := func() []relay.SinkConfig {
		return []relay.SinkConfig{
			{Sink: held, Concurrency: 1, Retry: fastRetry(5)},
			{Sink: live, Concurrency: 4, Retry: fastRetry(5)},
		}
	}
	r.start(cfgs()...)
	r.setPaused("held", true)
	if !r.e.Paused()["held"] || r.e.Paused()["live"] {
		t.Fatalf("Paused() = %v, want held only", r.e.Paused())
	}
	ids := r.accept(30, "held", "live")
	waitFor(t, "the live sink takes every change", func() bool { return len(live.received()) == 30 })
	// The engine holds deliveries back at the dispatcher and at the worker: a pass of the
	// dispatcher's sweep (2s) would find them, and the held sink's queue is read at once on
	// every Notify.
	time.Sleep(2500 * time.Millisecond)
	if got := held.received(); len(got) != 0 {
		t.Fatalf("paused sink received %d changes", len(got))
	}
	if n := r.pending("held"); n != 30 {
		t.Fatalf("paused sink has %d pending, want 30", n)
	}

	r.stop()
	r.start(cfgs()...)
	if !r.e.Paused()["held"] {
		t.Fatal("held is not paused after a restart")
	}
	ids = append(ids, r.accept(10, "held", "live")...)
	waitFor(t, "the live sink takes the changes after the restart", func() bool { return len(live.received()) == 40 })
	if err := r.e.SetSinks(cfgs()[:1]); err != nil { // a reload
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if got := held.received(); len(got) != 0 {
		t.Fatalf("paused sink received %d changes after a restart and a reload", len(got))
	}

	r.setPaused("held", false)
	waitFor(t, "the backlog delivered", func() bool { return len(held.received()) == 40 })
	if got := held.received(); !slices.Equal(got, ids) {
		t.Fatalf("backlog delivered out of order:\n got %v\nwant %v", got, ids)
	}
	if n := r.letters(); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

// TestEngine_PauseMaxAge: changes older than their sink's max_age when it is resumed are not
// dead-lettered for their age: it counts from the resume. Each change fails twice first, so
// without that every one of them would be dead-lettered at its first failure.
func TestEngine_PauseMaxAge(t *testing.T) {
	r := newPauseRig(t)
	s := newRecordSink("slow", 2)
	const maxAge = 3 * time.Second
	r.start(relay.SinkConfig{Sink: s, Concurrency: 2, Retry: relay.RetryPolicy{MaxAttempts: 10, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxAge: maxAge}})
	r.setPaused("slow", true)
	ids := r.accept(5, "slow")
	time.Sleep(maxAge + time.Second) // the changes grow older than max_age while paused
	r.setPaused("slow", false)
	waitFor(t, "every change delivered or one dead-lettered", func() bool { return len(s.received()) == len(ids) || r.letters() > 0 })
	if n := r.letters(); n != 0 {
		t.Fatalf("%d changes dead-lettered: max_age counted the pause", n)
	}
}

// rateObs records the rate limiter's waits.
type rateObs struct {
	waits atomic.Int64 // total nanoseconds
	calls atomic.Int64
}

func (o *rateObs) Attempt(string, string, time.Duration)   {}
func (o *rateObs) Delivered(string, int, time.Duration)    {}
func (o *rateObs) DeadLettered(string)                     {}
func (o *rateObs) RateLimitWait(_ string, d time.Duration) { o.waits.Add(int64(d)); o.calls.Add(1) }

// TestEngine_RateLimitWait: the time workers wait for the limiter reaches the observer: 6
// requests at 4 per second with a burst of 1 wait about 1.25s in all.
func TestEngine_RateLimitWait(t *testing.T) {
	r := newPauseRig(t)
	o := &rateObs{}
	r.obs = o
	s := newRecordSink("slack", 0)
	r.start(relay.SinkConfig{Sink: s, Concurrency: 2, Retry: fastRetry(3), Rate: relay.RatePolicy{PerSecond: 4, Burst: 1}})
	r.accept(6, "slack")
	waitFor(t, "every change delivered", func() bool { return len(s.received()) == 6 })
	waitFor(t, "every wait observed", func() bool { return o.calls.Load() == 6 })
	if w := time.Duration(o.waits.Load()); w < time.Second {
		t.Fatalf("rate limiter waits add up to %s, want at least 1s", w)
	}
}

// statesDown is a store whose SinkStates fails until up is set.
type statesDown struct {
	*embedded.Store
	up atomic.Bool
}

func (s *statesDown) SinkStates() (map[string]relay.SinkState, error) {
	if !s.up.Load() {
		return nil, errors.New("storage down")
	}
	return s.Store.SinkStates()
}

// TestEngine_PauseStatesUnknown: while the engine cannot read which sinks are paused it holds
// every sink (nothing is delivered against an operator's wish); once it can, the sinks not
// paused deliver and the paused one stays held.
func TestEngine_PauseStatesUnknown(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if _, _, err := sp.SetPaused("held", true, time.Now(), "before start"); err != nil {
		t.Fatal(err)
	}
	q := &statesDown{Store: embedded.New(sp)}
	e := relay.NewEngine(q, &dlCount{ids: map[string]int{}}, nil, discard())
	e.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.Close(ctx)
	}()
	held, live := newRecordSink("held", 0), newRecordSink("live", 0)
	if err := e.SetSinks([]relay.SinkConfig{{Sink: held, Concurrency: 1, Retry: fastRetry(3)}, {Sink: live, Concurrency: 1, Retry: fastRetry(3)}}); err != nil {
		t.Fatalf("SetSinks with the states unreadable: %v", err)
	}
	var items []spool.Item
	for i := range 5 {
		ev := relay.Event{ID: fmt.Sprintf("u%d", i), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
		items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"held", "live"}})
	}
	if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
		t.Fatal(err)
	}
	e.Notify([]string{"held", "live"})
	time.Sleep(2500 * time.Millisecond) // the state watcher retries every second, the sweep runs every 2s
	if n := len(live.received()) + len(held.received()); n != 0 {
		t.Fatalf("%d deliveries while the pause states were unreadable", n)
	}
	q.up.Store(true)
	waitFor(t, "the sink not paused delivers once the states are read", func() bool { return len(live.received()) == 5 })
	time.Sleep(500 * time.Millisecond)
	if n := len(held.received()); n != 0 {
		t.Fatalf("the paused sink got %d changes", n)
	}
}
