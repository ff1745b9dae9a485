package relay_test

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// gatedQueue holds the engine's first Done call until release is closed and records the size
// of every call.
type gatedQueue struct {
	*embedded.Store
	release chan struct{}
	mu      sync.Mutex
	sizes   []int
}

func (q *gatedQueue) Done(sink string, seqs ...uint64) error {
	q.mu.Lock()
	first := len(q.sizes) == 0
	q.sizes = append(q.sizes, len(seqs))
	q.mu.Unlock()
	if first {
		<-q.release
	}
	return q.Store.Done(sink, seqs...)
}

// tallySink counts deliveries and always succeeds.
type tallySink struct{ n atomic.Int64 }

func (*tallySink) Name() string                                  { return "fast" }
func (s *tallySink) Deliver(context.Context, *relay.Event) error { s.n.Add(1); return nil }

// A sink's deliveries do not wait for the spool to record the ones before them as done: while
// one Done call waits for its commit (up to the spool's commit interval), finished deliveries
// queue up for the next call, which takes them all. Before, a sink went no faster than 256
// deliveries per commit.
func TestEngine_DoneDoesNotThrottleDelivery(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	q := &gatedQueue{Store: embedded.New(sp), release: make(chan struct{})}
	h := &harness{t: t, spool: sp, engine: relay.NewEngine(q, nopDL{}, nil, discard())}
	h.engine.Start()
	defer h.close()
	sink := &tallySink{}
	if err := h.engine.SetSinks([]relay.SinkConfig{{Sink: sink, Concurrency: 8, Retry: fastRetry(3)}}); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	h.accept(n, "fast")
	deadline := time.Now().Add(60 * time.Second)
	for sink.n.Load() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	got := sink.n.Load()
	close(q.release)
	if got < n {
		t.Fatalf("%d of %d delivered while the first Done call waited", got, n)
	}
	eventually(t, "the spool to record every delivery", func() bool {
		st, err := sp.Stats()
		return err == nil && st["fast"].Ready == 0 && st["fast"].Scheduled == 0
	})
	q.mu.Lock()
	defer q.mu.Unlock()
	total := 0
	for _, k := range q.sizes {
		total += k
	}
	if total != n {
		t.Errorf("Done calls took %d deliveries in all (%v), want %d", total, q.sizes, n)
	}
}
