package relay_test

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// readCounter records the max of every Ready call of the store it wraps.
type readCounter struct {
	relay.Store
	mu    sync.Mutex
	maxes []int
}

func (c *readCounter) Ready(sink string, after uint64, max int) ([]relay.Delivery, error) {
	c.mu.Lock()
	c.maxes = append(c.maxes, max)
	c.mu.Unlock()
	return c.Store.Ready(sink, after, max)
}

// TestEngine_FailingSinkReadsOnlyWhatItTries: while a sink is failing, each read of its
// queue asks for about as many deliveries as it can attempt before the next pause (its
// concurrency), not a full page: the first failure pauses the sink and the rest of a full
// read was read, decoded and dropped at every pause's end.
func TestEngine_FailingSinkReadsOnlyWhatItTries(t *testing.T) {
	ep := newEndpoint(t)
	ep.script = make([]int, 100000)
	for i := range ep.script {
		ep.script[i] = http.StatusServiceUnavailable
	}
	dir := t.TempDir()
	sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := deadletter.Open(filepath.Join(dir, "dead-letter"))
	if err != nil {
		t.Fatal(err)
	}
	store := &readCounter{Store: embedded.New(sp)}
	h := &harness{t: t, dir: dir, spool: sp, dl: dl, engine: relay.NewEngine(store, dl, nil, nil)}
	h.engine.Start()
	t.Cleanup(h.close)
	pol := relay.RetryPolicy{MaxAttempts: 1000, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxAge: time.Hour}
	cfg := h.httpSink("down", ep.srv.URL, 0, pol)
	cfg.Concurrency = 2
	values := make([]string, 300)
	for i := range values {
		values[i] = fmt.Sprintf(`{"n":%d}`, i)
	}
	h.acceptValues("down", values...)
	h.engine.SetSinks([]relay.SinkConfig{cfg})
	deadline := time.Now().Add(60 * time.Second)
	for {
		ep.mu.Lock()
		calls := ep.calls
		ep.mu.Unlock()
		if calls >= 10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	store.mu.Lock()
	maxes := append([]int(nil), store.maxes...)
	store.mu.Unlock()
	if len(maxes) < 3 {
		t.Fatalf("%d reads of the queue; want several (the sink failed and paused repeatedly)", len(maxes))
	}
	// The first read (before anything failed) is a full page; the failures follow it.
	big := 0
	for _, m := range maxes[1:] {
		if m > cfg.Concurrency {
			big++
		}
	}
	if big > 1 {
		t.Errorf("reads while failing asked for %v deliveries; want at most the concurrency (%d) after the first failure", maxes, cfg.Concurrency)
	}
}
