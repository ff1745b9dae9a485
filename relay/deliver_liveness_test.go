package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// outageSink is a sink that answers every attempt with a retryable error while it is down,
// and records when each change first arrived once it is up.
type outageSink struct {
	name string
	down atomic.Bool
	mu   sync.Mutex
	got  map[string]time.Time
}

func newOutageSink(name string) *outageSink {
	return &outageSink{name: name, got: map[string]time.Time{}}
}

func (s *outageSink) Name() string { return s.name }

func (s *outageSink) Deliver(ctx context.Context, ev *relay.Event) error {
	return s.DeliverBatch(ctx, []*relay.Event{ev})
}

func (s *outageSink) DeliverBatch(ctx context.Context, evs []*relay.Event) error {
	if s.down.Load() {
		return &relay.StatusError{Status: 503, Msg: "status 503"}
	}
	if rand.IntN(4) == 0 { // some latency, so that attempts overlap the dispatcher's reads
		time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
	}
	now := time.Now()
	s.mu.Lock()
	for _, ev := range evs {
		if _, ok := s.got[ev.ID]; !ok {
			s.got[ev.ID] = now
		}
	}
	s.mu.Unlock()
	return nil
}

func (s *outageSink) missing(ids []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, id := range ids {
		if _, ok := s.got[id]; !ok {
			out = append(out, id)
		}
	}
	return out
}

// jitterReady is the real spool whose Ready answers late at random, as a busy disk would:
// attempts finish, and retries fall due, while the dispatcher's read is on its way.
type jitterReady struct{ *embedded.Store }

func (q jitterReady) Ready(sink string, after uint64, max int) ([]relay.Delivery, error) {
	ds, err := q.Store.Ready(sink, after, max)
	if rand.IntN(3) == 0 {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
	}
	return ds, err
}

// envInt reads a positive integer from the environment, def when unset.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// TestEngine_LivenessAfterOutages: several sinks (single and batched) go down for random
// lengths of time, many rounds over, while changes keep arriving; after each recovery every
// acknowledged change arrives within its sink's backoff plus a bound. The engine's safety
// sweep is off, so a delivery stranded behind a dispatcher's cursor (a missed rewind) or left
// scheduled (a missed promotion) never arrives and fails the test. CI runs a few rounds;
// HUBRELAY_LIVENESS_ROUNDS=200 runs it longer by hand.
func TestEngine_LivenessAfterOutages(t *testing.T) {
	rounds := envInt(t, "HUBRELAY_LIVENESS_ROUNDS", 6)
	perRound := envInt(t, "HUBRELAY_LIVENESS_CHANGES", 300)
	dir := t.TempDir()
	sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	e := relay.NewEngine(jitterReady{embedded.New(sp)}, &dlCount{ids: map[string]int{}}, nil, discard())
	relay.SetSweep(e, 0)
	e.Start()
	pol := relay.RetryPolicy{MaxAttempts: 1 << 20, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	sinks := []*outageSink{newOutageSink("a"), newOutageSink("b"), newOutageSink("c")}
	var cfgs []relay.SinkConfig
	for i, s := range sinks {
		c := relay.SinkConfig{Sink: s, Concurrency: 4, Retry: pol}
		if i > 0 {
			c.Batch = relay.BatchPolicy{MaxChanges: 5 * i, MaxWait: time.Millisecond}
		}
		cfgs = append(cfgs, c)
	}
	if err := e.SetSinks(cfgs); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Close(ctx)
	}()
	// A stranded delivery never arrives; a healthy one arrives within MaxBackoff, the failure
	// pause (also at most MaxBackoff) and the work queued ahead of it. The bound is generous
	// for a loaded 2-core machine under -race.
	bound := pol.MaxBackoff*2 + 15*time.Second
	var worst time.Duration
	n := 0
	for round := range rounds {
		outage := make([]time.Duration, len(sinks))
		for i, s := range sinks {
			outage[i] = time.Duration(rand.IntN(150)) * time.Millisecond
			s.down.Store(outage[i] > 0)
		}
		start := time.Now()
		var ids []string
		for sent := 0; sent < perRound; {
			var items []spool.Item
			for range 10 {
				ev := relay.Event{ID: fmt.Sprintf("r%d-%d", round, n), App: "a", Object: "page", Field: "feed",
					Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
				n++
				sent++
				ids = append(ids, ev.ID)
				items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"a", "b", "c"}})
			}
			if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
				t.Fatal(err)
			}
			e.Notify([]string{"a", "b", "c"})
			for i, s := range sinks {
				if time.Since(start) >= outage[i] {
					s.down.Store(false)
				}
			}
			time.Sleep(time.Duration(rand.IntN(600)) * time.Microsecond)
		}
		for i, s := range sinks {
			if d := outage[i] - time.Since(start); d > 0 {
				time.Sleep(d)
			}
			s.down.Store(false)
		}
		recovered := time.Now()
		for {
			missing := 0
			for _, s := range sinks {
				missing += len(s.missing(ids))
			}
			if missing == 0 {
				break
			}
			if time.Since(recovered) > bound {
				for _, s := range sinks {
					if m := s.missing(ids); len(m) > 0 {
						st, _ := sp.Stats()
						t.Errorf("round %d: sink %s: %d of %d changes not delivered %s after every sink recovered (first %s); spool: %+v",
							round, s.name, len(m), len(ids), bound, m[0], st[s.name])
					}
				}
				t.FailNow()
			}
			time.Sleep(5 * time.Millisecond)
		}
		worst = max(worst, time.Since(recovered))
	}
	t.Logf("%d rounds of %d changes on %d sinks: the slowest round drained %s after recovery", rounds, perRound, len(sinks), worst)
}

// hidingReady is the real spool whose first read of a sink's queue leaves out the first
// delivery, as a missed rewind would: the dispatcher's cursor passes it.
type hidingReady struct {
	*embedded.Store
	once sync.Once
}

func (q *hidingReady) Ready(sink string, after uint64, max int) ([]relay.Delivery, error) {
	ds, err := q.Store.Ready(sink, after, max)
	if len(ds) > 1 {
		q.once.Do(func() { ds = ds[1:] })
	}
	return ds, err
}

// TestEngine_SweepFindsStrandedDelivery: a delivery the dispatcher's cursor passed without
// sending it is found by the idle sweep, and only by it.
func TestEngine_SweepFindsStrandedDelivery(t *testing.T) {
	for _, c := range []struct {
		name  string
		sweep time.Duration
		want  bool
	}{{"sweep", 20 * time.Millisecond, true}, {"no sweep", 0, false}} {
		t.Run(c.name, func(t *testing.T) {
			sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer sp.Close()
			e := relay.NewEngine(&hidingReady{Store: embedded.New(sp)}, &dlCount{ids: map[string]int{}}, nil, discard())
			relay.SetSweep(e, c.sweep)
			e.Start()
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				e.Close(ctx)
			}()
			s := newOutageSink("a")
			var items []spool.Item
			var ids []string
			for i := range 3 {
				ev := relay.Event{ID: fmt.Sprintf("c%d", i), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
				ids = append(ids, ev.ID)
				items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"a"}})
			}
			if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := e.SetSinks([]relay.SinkConfig{{Sink: s, Concurrency: 1, Retry: relay.RetryPolicy{MaxAttempts: 3}}}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the changes not hidden", func() bool { return len(s.missing(ids)) <= 1 })
			if !c.want {
				// Wait for as many sweeps as the other case needs, and more: nothing comes.
				time.Sleep(200 * time.Millisecond)
				if m := s.missing(ids); len(m) != 1 || m[0] != "c0" {
					t.Fatalf("missing %v, want [c0] (no sweep finds it)", m)
				}
				return
			}
			eventually(t, "the stranded change found by the sweep", func() bool { return len(s.missing(ids)) == 0 })
		})
	}
}

// countPromote is the real spool, counting the promoter's calls.
type countPromote struct {
	*embedded.Store
	calls atomic.Int64
}

func (q *countPromote) Promote(now time.Time) (map[string]uint64, error) {
	q.calls.Add(1)
	return q.Store.Promote(now)
}

// TestEngine_IdleRelayWritesNothing: once its queues are drained, a running engine's
// promoter keeps asking the spool, and the spool commits no write transaction.
func TestEngine_IdleRelayWritesNothing(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	q := &countPromote{Store: embedded.New(sp)}
	e := relay.NewEngine(q, &dlCount{ids: map[string]int{}}, nil, discard())
	e.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Close(ctx)
	}()
	s := newOutageSink("a")
	if err := e.SetSinks([]relay.SinkConfig{{Sink: s, Concurrency: 2, Retry: relay.RetryPolicy{MaxAttempts: 5, MinBackoff: time.Millisecond}}}); err != nil {
		t.Fatal(err)
	}
	ev := relay.Event{ID: "c1", App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
	if _, err := sp.Accept(context.Background(), []spool.Item{{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"a"}}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	e.Notify([]string{"a"})
	eventually(t, "delivered", func() bool { return len(s.missing([]string{"c1"})) == 0 })
	eventually(t, "drained", func() bool { return pending(t, sp) == 0 })
	before, calls := sp.WriteTransactions(), q.calls.Load()
	deadline := time.Now().Add(30 * time.Second)
	for q.calls.Load() < calls+3 {
		if time.Now().After(deadline) {
			t.Fatal("the promoter stopped asking")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := sp.WriteTransactions() - before; n != 0 {
		t.Fatalf("%d write transactions in %d idle promoter rounds", n, q.calls.Load()-calls)
	}
}
