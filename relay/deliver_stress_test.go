package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// flaky is a sink that fails at random and records every delivery and any change delivered
// twice at once; random failures make the dispatcher rewind and reschedule constantly.
type flaky struct {
	name   string
	failP  float64
	mu     sync.Mutex
	busy   map[string]int
	got    map[string]int
	concur atomic.Int64
	delay  time.Duration
}

func newFlaky(name string, p float64) *flaky {
	return &flaky{name: name, failP: p, busy: map[string]int{}, got: map[string]int{}}
}
func (f *flaky) Name() string { return f.name }
func (f *flaky) Deliver(ctx context.Context, ev *relay.Event) error {
	return f.DeliverBatch(ctx, []*relay.Event{ev})
}
func (f *flaky) DeliverBatch(ctx context.Context, evs []*relay.Event) error {
	f.mu.Lock()
	for _, ev := range evs {
		if f.busy[ev.ID] > 0 {
			f.concur.Add(1)
		}
		f.busy[ev.ID]++
	}
	f.mu.Unlock()
	if f.delay > 0 {
		time.Sleep(time.Duration(rand.Int64N(int64(f.delay))))
	}
	fail := rand.Float64() < f.failP
	f.mu.Lock()
	for _, ev := range evs {
		f.busy[ev.ID]--
		if !fail {
			f.got[ev.ID]++
		}
	}
	f.mu.Unlock()
	if fail {
		return errors.New("flaky")
	}
	return nil
}

// wrapper gives a new Sink identity per SetSinks, sharing the recorder.
type wrap struct{ *flaky }

type dlCount struct {
	mu  sync.Mutex
	ids map[string]int
	d   *deadletter.Dir
}

func (d *dlCount) Write(l *deadletter.Letter) error {
	d.mu.Lock()
	d.ids[l.ChangeID]++
	d.mu.Unlock()
	return nil
}

var failP = 0.3

func runStress(t *testing.T, batch bool, replace bool) {
	t.Helper()
	dir := t.TempDir()
	sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	dl := &dlCount{ids: map[string]int{}}
	e := relay.NewEngine(embedded.New(sp), dl, nil, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	e.Start()
	f := newFlaky("s", failP)
	f.delay = 2 * time.Millisecond
	cfg := func() relay.SinkConfig {
		c := relay.SinkConfig{Sink: &wrap{f}, Concurrency: 4, Retry: relay.RetryPolicy{MaxAttempts: 1000, MinBackoff: time.Millisecond, MaxBackoff: 3 * time.Millisecond}}
		if batch {
			c.Batch = relay.BatchPolicy{MaxChanges: 7, MaxWait: 2 * time.Millisecond}
		}
		return c
	}
	if err := e.SetSinks([]relay.SinkConfig{cfg()}); err != nil {
		t.Fatal(err)
	}
	const N = 1500
	var ids []string
	stopRep := make(chan struct{})
	var wg sync.WaitGroup
	if replace {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stopRep:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if err := e.SetSinks([]relay.SinkConfig{cfg()}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for i := 0; i < N; i += 10 {
		var items []spool.Item
		for j := i; j < i+10; j++ {
			ev := relay.Event{ID: fmt.Sprintf("k%d", j), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
			ids = append(ids, ev.ID)
			items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"s"}})
		}
		if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatal(err)
		}
		e.Notify([]string{"s"})
		time.Sleep(200 * time.Microsecond)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _ := sp.Stats()
		if st["s"].Ready+st["s"].Scheduled == 0 {
			break
		}
		if time.Now().After(deadline) {
			close(stopRep)
			wg.Wait()
			t.Fatalf("stuck: %+v pending after 30s", st["s"])
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stopRep)
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.Close(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	lost, dups := 0, 0
	for _, id := range ids {
		if f.got[id] == 0 && dl.ids[id] == 0 {
			lost++
		}
		if f.got[id] > 1 {
			dups++
		}
	}
	t.Logf("lost=%d dups=%d concurrentDup=%d deadletters=%d", lost, dups, f.concur.Load(), len(dl.ids))
	// No crash here, so at-least-once allows no repeat: a change taken once is never sent again.
	if lost > 0 || dups > 0 || f.concur.Load() > 0 {
		t.Fail()
	}
}

// TestEngine_Stress: 30% of attempts fail, so deliveries are rescheduled, promoted and
// re-read all the time, optionally while the sink is replaced every 20ms (a reload): nothing
// is lost, nothing delivered twice, nothing in flight twice.
func TestEngine_Stress(t *testing.T) {
	for _, c := range []struct {
		name           string
		batch, replace bool
	}{{"single", false, false}, {"batch", true, false}, {"single+reload", false, true}, {"batch+reload", true, true}} {
		t.Run(c.name, func(t *testing.T) { runStress(t, c.batch, c.replace) })
	}
}

// BenchmarkEngine_FailingSink drains a backlog through a sink that fails 30% of attempts
// (retried at once): each failure is a reschedule in the spool, so this measures how many of
// them a commit takes. Reports changes/s.
func BenchmarkEngine_FailingSink(b *testing.B) {
	for range b.N {
		sp, err := spool.Open(filepath.Join(b.TempDir(), "spool.db"), spool.Options{})
		if err != nil {
			b.Fatal(err)
		}
		e := relay.NewEngine(embedded.New(sp), &dlCount{ids: map[string]int{}}, nil, discard())
		e.Start()
		const n = 20000
		for i := 0; i < n; i += 500 {
			var items []spool.Item
			for j := i; j < i+500; j++ {
				ev := relay.Event{ID: fmt.Sprintf("k%d", j), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
				items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"s"}})
			}
			if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
		f := newFlaky("s", 0.3)
		start := time.Now()
		if err := e.SetSinks([]relay.SinkConfig{{Sink: f, Concurrency: 4, Retry: relay.RetryPolicy{MaxAttempts: 1000, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}}}); err != nil {
			b.Fatal(err)
		}
		for {
			f.mu.Lock()
			got := len(f.got)
			f.mu.Unlock()
			if got == n {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		b.ReportMetric(n/time.Since(start).Seconds(), "changes/s")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		e.Close(ctx)
		cancel()
		sp.Close()
	}
}
