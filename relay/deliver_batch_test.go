package relay_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/sinks/httpsink"
)

// arrayEndpoint takes batches (a JSON array of envelopes) and refuses with 400 any request
// that carries a change whose value contains `"poison"`.
type arrayEndpoint struct {
	mu    sync.Mutex
	sizes []int
	got   []string
	srv   *httptest.Server
}

func newArrayEndpoint(t *testing.T) *arrayEndpoint {
	e := &arrayEndpoint{}
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var batch []struct{ ID string }
		if err := json.Unmarshal(body, &batch); err != nil {
			t.Errorf("batch body is not a JSON array: %v", err)
		}
		if bytes.Contains(body, []byte(`"poison"`)) {
			http.Error(w, "bad change", http.StatusBadRequest)
			return
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		e.sizes = append(e.sizes, len(batch))
		for _, c := range batch {
			e.got = append(e.got, c.ID)
		}
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *arrayEndpoint) snapshot() (sizes []int, ids []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]int(nil), e.sizes...), append([]string(nil), e.got...)
}

func (h *harness) batchSink(name, url string, b relay.BatchPolicy) relay.SinkConfig {
	h.t.Helper()
	s, err := httpsink.New(httpsink.Options{Name: name, URL: url, Timeout: 5 * time.Second})
	if err != nil {
		h.t.Fatal(err)
	}
	return relay.SinkConfig{Sink: s, Concurrency: 2, Retry: fastRetry(5), Batch: b}
}

func TestEngine_Batches(t *testing.T) {
	ep := newArrayEndpoint(t)
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{h.batchSink("orders", ep.srv.URL, relay.BatchPolicy{MaxChanges: 100, MaxWait: 5 * time.Millisecond})})
	ids := h.accept(250, "orders")
	eventually(t, "all delivered", func() bool { _, got := ep.snapshot(); return len(got) >= len(ids) })
	sizes, got := ep.snapshot()
	if len(got) != len(ids) {
		t.Errorf("%d deliveries, want %d", len(got), len(ids))
	}
	largest := 0
	for _, n := range sizes {
		if n > 100 {
			t.Errorf("a batch of %d changes, over max_changes 100", n)
		}
		largest = max(largest, n)
	}
	if largest < 2 {
		t.Errorf("no batching happened: batch sizes %v", sizes)
	}
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("change %s delivered %d times, want once", id, seen[id])
		}
	}
	eventually(t, "spool drained", func() bool { return pending(t, h.spool) == 0 })
}

func TestEngine_BatchWithOneBadChange(t *testing.T) {
	ep := newArrayEndpoint(t)
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{h.batchSink("orders", ep.srv.URL, relay.BatchPolicy{MaxChanges: 50, MaxWait: 20 * time.Millisecond})})
	ids := h.acceptValues("orders", `{"n":1}`, `{"n":2}`, `{"poison":true}`, `{"n":4}`, `{"n":5}`)
	var letters []*deadletter.Letter
	eventually(t, "the bad change dead-lettered", func() bool {
		letters, _ = h.dl.List(deadletter.Filter{})
		return len(letters) == 1
	})
	if letters[0].ChangeID != ids[2] || !strings.HasPrefix(letters[0].Reason, "permanent") {
		t.Errorf("dead letter %s (%s), want change %s", letters[0].ChangeID, letters[0].Reason, ids[2])
	}
	eventually(t, "its neighbours delivered", func() bool { _, got := ep.snapshot(); return len(got) == 4 })
	eventually(t, "spool drained", func() bool { return pending(t, h.spool) == 0 })
}
