package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// countingSink counts requests and wraps an outageSink for the changes it took.
type countingSink struct {
	*outageSink
	requests atomic.Int64
}

func (s *countingSink) Deliver(ctx context.Context, ev *relay.Event) error {
	s.requests.Add(1)
	return s.outageSink.Deliver(ctx, ev)
}

// TestEngine_RateLimit: a sink at 5 requests per second with a burst of 3 and 4 workers gets
// at most 5×10+3 requests in its first 10 seconds, and every change in the end; waiting for
// the limiter is not a failed attempt (nothing is rescheduled or dead-lettered).
func TestEngine_RateLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 12s")
	}
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	dl := &dlCount{ids: map[string]int{}}
	e := relay.NewEngine(embedded.New(sp), dl, nil, discard())
	e.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Close(ctx)
	}()
	s := &countingSink{outageSink: newOutageSink("slack")}
	const perSecond, burst, window, n = 5, 3, 10 * time.Second, 60
	var ids []string
	var items []spool.Item
	for i := range n {
		ev := relay.Event{ID: fmt.Sprintf("r%d", i), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
		ids = append(ids, ev.ID)
		items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"slack"}})
	}
	if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.SetSinks([]relay.SinkConfig{{Sink: s, Concurrency: 4, Retry: relay.RetryPolicy{MaxAttempts: 1, MaxAge: time.Second},
		Rate: relay.RatePolicy{PerSecond: perSecond, Burst: burst}}}); err != nil {
		t.Fatal(err)
	}
	// Sample the count at the end of the window (the limiter only slows things down, so a
	// loaded machine can only count fewer).
	time.Sleep(window - time.Since(start))
	if got, limit := s.requests.Load(), int64(perSecond*window/time.Second+burst); got > limit {
		t.Fatalf("%d requests in the first %s, want at most %d", got, window, limit)
	}
	eventually(t, "every change delivered", func() bool { return len(s.missing(ids)) == 0 })
	if len(dl.ids) != 0 {
		t.Fatalf("%d dead letters: waiting for the limiter counted against MaxAttempts 1 / MaxAge 1s", len(dl.ids))
	}
	t.Logf("%d requests for %d changes in %s", s.requests.Load(), n, time.Since(start).Round(time.Millisecond))
}
