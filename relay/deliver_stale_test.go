package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// slowReady is the real spool, but Ready's answer arrives late, as a slow disk would make it.
type slowReady struct {
	*embedded.Store
	delay time.Duration
}

func (q slowReady) Ready(sink string, after uint64, max int) ([]relay.Delivery, error) {
	ds, err := q.Store.Ready(sink, after, max)
	time.Sleep(q.delay)
	return ds, err
}

// countSink counts attempts and successes per change; c1 fails once.
type countSink struct {
	mu    sync.Mutex
	calls map[string]int
	ok    map[string]int
}

func (s *countSink) Name() string { return "s" }
func (s *countSink) Deliver(ctx context.Context, ev *relay.Event) error {
	s.mu.Lock()
	s.calls[ev.ID]++
	n := s.calls[ev.ID]
	s.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	if ev.ID == "c1" && n == 1 {
		return errors.New("503 once")
	}
	s.mu.Lock()
	s.ok[ev.ID]++
	s.mu.Unlock()
	return nil
}

// TestEngine_StaleReadDoesNotRedeliver: a rewind re-reads the ready queue; a delivery in
// flight when the read was taken, and finished before the dispatcher reached it, must not be
// sent again (it was delivered and removed from the spool).
func TestEngine_StaleReadDoesNotRedeliver(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	e := relay.NewEngine(slowReady{embedded.New(sp), 60 * time.Millisecond}, nopDL{}, nil, nil)
	e.Start()
	sink := &countSink{calls: map[string]int{}, ok: map[string]int{}}
	if err := e.SetSinks([]relay.SinkConfig{{Sink: sink, Concurrency: 1,
		Retry: relay.RetryPolicy{MaxAttempts: 5, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}}}); err != nil {
		t.Fatal(err)
	}
	var items []spool.Item
	for i := 1; i <= 3; i++ {
		ev := relay.Event{ID: fmt.Sprintf("c%d", i), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
		items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"s"}})
	}
	if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
		t.Fatal(err)
	}
	e.Notify([]string{"s"})
	time.Sleep(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.Close(ctx)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for id, n := range sink.ok {
		if n != 1 {
			t.Errorf("%s delivered %d times without any crash (attempts %v)", id, n, sink.calls)
		}
	}
}
