package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/sinks/httpsink"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// endpoint is an HTTP sink receiver whose answers a test scripts: it answers each request with
// the next status of script (200 once the script is spent) and records the change ids it took.
type endpoint struct {
	mu      sync.Mutex
	script  []int
	headers map[int]http.Header // extra headers for the answer at that script index
	calls   int
	got     []string
	block   chan struct{} // when set, requests wait on it
	srv     *httptest.Server
}

func newEndpoint(t *testing.T, script ...int) *endpoint {
	e := &endpoint{script: script, headers: map[int]http.Header{}}
	e.srv = httptest.NewServer(e)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if e.block != nil {
		select {
		case <-e.block:
		case <-r.Context().Done():
			return
		}
	}
	e.mu.Lock()
	i := e.calls
	e.calls++
	status := http.StatusOK
	if i < len(e.script) {
		status = e.script[i]
	}
	for k, v := range e.headers[i] {
		w.Header()[k] = v
	}
	if status == http.StatusOK {
		var env struct{ ID string }
		json.Unmarshal(body, &env)
		e.got = append(e.got, env.ID)
	}
	e.mu.Unlock()
	w.WriteHeader(status)
}

func (e *endpoint) received() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// harness is a spool, a dead-letter dir and an engine over them.
type harness struct {
	t      *testing.T
	dir    string
	spool  *spool.Spool
	dl     *deadletter.Dir
	engine *relay.Engine
}

func newHarness(t *testing.T, dir string) *harness {
	t.Helper()
	sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := deadletter.Open(filepath.Join(dir, "dead-letter"))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: dir, spool: sp, dl: dl, engine: relay.NewEngine(embedded.New(sp), dl, nil, nil)}
	h.engine.Start()
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	if h.engine == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.engine.Close(ctx)
	h.spool.Close()
	h.engine = nil
}

func fastRetry(attempts int) relay.RetryPolicy {
	return relay.RetryPolicy{MaxAttempts: attempts, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxAge: time.Hour}
}

func (h *harness) httpSink(name, url string, retries int, pol relay.RetryPolicy) relay.SinkConfig {
	h.t.Helper()
	s, err := httpsink.New(httpsink.Options{Name: name, URL: url, Timeout: 5 * time.Second, InProcessRetries: retries, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second})
	if err != nil {
		h.t.Fatal(err)
	}
	return relay.SinkConfig{Sink: s, Concurrency: 2, Retry: pol}
}

// accept spools n changes for sinks, as the receiver would.
func (h *harness) accept(n int, sinks ...string) []string {
	h.t.Helper()
	var ids []string
	var items []spool.Item
	for i := range n {
		ev := relay.Event{
			ID: fmt.Sprintf("h:%s:%d", strings.ReplaceAll(h.t.Name(), "/", "_"), i), App: "shop", Object: "page",
			Entry: relay.Entry{ID: "1", Time: 1}, Field: "feed", Verb: "add", Source: relay.SourceChanges,
			Value: json.RawMessage(fmt.Sprintf(`{"item":"photo","n":%d}`, i)), ReceivedAt: time.Now(), Rules: []string{"r"},
		}
		ids = append(ids, ev.ID)
		items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: sinks})
	}
	if _, err := h.spool.Accept(context.Background(), items, time.Now()); err != nil {
		h.t.Fatal(err)
	}
	h.engine.Notify(sinks)
	return ids
}

// acceptValues spools one change per value for sink, in one request.
func (h *harness) acceptValues(sink string, values ...string) []string {
	h.t.Helper()
	var ids []string
	var items []spool.Item
	for i, v := range values {
		ev := relay.Event{
			ID: fmt.Sprintf("h:%s:v%d", strings.ReplaceAll(h.t.Name(), "/", "_"), i), App: "shop", Object: "page",
			Entry: relay.Entry{ID: "1"}, Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(v), ReceivedAt: time.Now(),
		}
		ids = append(ids, ev.ID)
		items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{sink}})
	}
	if _, err := h.spool.Accept(context.Background(), items, time.Now()); err != nil {
		h.t.Fatal(err)
	}
	h.engine.Notify([]string{sink})
	return ids
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func pending(t *testing.T, sp *spool.Spool) int {
	st, err := sp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range st {
		n += s.Ready + s.Scheduled
	}
	return n
}

func TestEngine_FailsThenSucceeds(t *testing.T) {
	cases := []struct {
		name    string
		script  []int
		retries int // in-process retries of the sink
	}{
		{"rescheduled in the spool", []int{503, 500, 502}, 0},
		{"quick in-process retries", []int{503, 500}, 3},
		{"timeout-like 408 then ok", []int{408}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ep := newEndpoint(t, c.script...)
			h := newHarness(t, t.TempDir())
			h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, c.retries, fastRetry(10))})
			ids := h.accept(1, "orders")
			eventually(t, "delivery", func() bool { return len(ep.received()) == 1 })
			if got := ep.received(); got[0] != ids[0] {
				t.Errorf("got %v, want %v", got, ids)
			}
			eventually(t, "spool drained", func() bool { return pending(t, h.spool) == 0 })
			if ls, _ := h.dl.List(deadletter.Filter{}); len(ls) != 0 {
				t.Errorf("%d dead letters, want 0", len(ls))
			}
		})
	}
}

func TestEngine_RetryAfterHonoured(t *testing.T) {
	ep := newEndpoint(t, http.StatusTooManyRequests)
	ep.headers[0] = http.Header{"Retry-After": {"1"}}
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("slackish", ep.srv.URL, 1, fastRetry(5))})
	start := time.Now()
	h.accept(1, "slackish")
	eventually(t, "delivery", func() bool { return len(ep.received()) == 1 })
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("retried after %v, before the 1s Retry-After", waited)
	}
}

func TestEngine_PermanentFailureDeadLettersThenReplays(t *testing.T) {
	ep := newEndpoint(t, http.StatusBadRequest)
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, 3, fastRetry(10))})
	ids := h.accept(1, "orders")
	var letters []*deadletter.Letter
	eventually(t, "dead letter", func() bool {
		letters, _ = h.dl.List(deadletter.Filter{})
		return len(letters) == 1
	})
	l := letters[0]
	if ep.calls != 1 {
		t.Errorf("a permanent 400 was tried %d times, want 1", ep.calls)
	}
	if l.Sink != "orders" || l.ChangeID != ids[0] || len(l.Attempts) != 1 || l.Attempts[0].Status != 400 || !strings.HasPrefix(l.Reason, "permanent") {
		t.Errorf("letter %+v", l)
	}
	var change map[string]any
	if err := json.Unmarshal(l.Change, &change); err != nil || change["field"] != "feed" {
		t.Errorf("letter change %s (%v)", l.Change, err)
	}
	eventually(t, "spool drained", func() bool { return pending(t, h.spool) == 0 })

	// The service is fixed; replay through the running relay's replay folder.
	if err := h.dl.QueueReplay(l.ID); err != nil {
		t.Fatal(err)
	}
	rp := &relay.Replayer{DL: h.dl, Spool: embedded.New(h.spool), Notify: h.engine.Notify, Log: discard()}
	if n, err := rp.Once(context.Background()); n != 1 || err != nil {
		t.Fatalf("replayed %d, %v", n, err)
	}
	eventually(t, "replayed delivery", func() bool { return len(ep.received()) == 1 })
	if got := ep.received()[0]; got != ids[0] {
		t.Errorf("replayed %q, want %q", got, ids[0])
	}
	if p, _ := h.dl.Pending(); len(p) != 0 {
		t.Errorf("%d letters still queued", len(p))
	}
}

func TestEngine_GivesUpAfterMaxAttempts(t *testing.T) {
	ep := newEndpoint(t, 500, 500, 500, 500, 500, 500)
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, 0, fastRetry(3))})
	h.accept(1, "orders")
	var letters []*deadletter.Letter
	eventually(t, "dead letter", func() bool {
		letters, _ = h.dl.List(deadletter.Filter{})
		return len(letters) == 1
	})
	if got := len(letters[0].Attempts); got != 3 {
		t.Errorf("%d attempts recorded, want 3", got)
	}
	if !strings.Contains(letters[0].Reason, "giving up after 3 attempt(s)") {
		t.Errorf("reason %q", letters[0].Reason)
	}
}

func TestEngine_SinkDownThenBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // down: connection refused
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", "http://"+addr+"/hook", 0, fastRetry(1000))})
	ids := h.accept(20, "orders")
	time.Sleep(50 * time.Millisecond) // let a few attempts fail

	ep := &endpoint{headers: map[int]http.Header{}}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", addr, err)
	}
	srv := &http.Server{Handler: ep}
	go srv.Serve(ln)
	defer srv.Close()
	eventually(t, "every change delivered", func() bool { return len(ep.received()) >= len(ids) })
	seen := map[string]bool{}
	for _, id := range ep.received() {
		seen[id] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("change %s not delivered", id)
		}
	}
	if ls, _ := h.dl.List(deadletter.Filter{}); len(ls) != 0 {
		t.Errorf("%d dead letters, want 0", len(ls))
	}
}

func TestEngine_SlowSinkDoesNotHoldOthers(t *testing.T) {
	slow := newEndpoint(t)
	slow.block = make(chan struct{})
	fast := newEndpoint(t)
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{
		h.httpSink("slow", slow.srv.URL, 0, fastRetry(5)),
		h.httpSink("fast", fast.srv.URL, 0, fastRetry(5)),
	})
	ids := h.accept(50, "slow", "fast")
	eventually(t, "fast sink gets everything while slow is stuck", func() bool { return len(fast.received()) == len(ids) })
	if n := len(slow.received()); n != 0 {
		t.Errorf("slow sink finished %d", n)
	}
	close(slow.block)
	eventually(t, "slow sink catches up", func() bool { return len(slow.received()) == len(ids) })
}

func TestEngine_ResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	ep := newEndpoint(t)
	h := newHarness(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	h.engine.Close(ctx) // a relay that stopped delivering: the changes are only spooled
	cancel()
	ids := h.accept(10, "orders")
	h.close()

	h = newHarness(t, dir)
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, 0, fastRetry(5))})
	eventually(t, "pending deliveries resumed", func() bool { return len(ep.received()) == len(ids) })
}

func TestEngine_UnconfiguredSinkIsDeadLettered(t *testing.T) {
	h := newHarness(t, t.TempDir())
	if err := h.engine.SetSinks(nil); err != nil {
		t.Fatal(err)
	}
	// Spooled for a sink the config no longer has (a request routed with the rules from
	// before a reload): Notify hands them to a runner that dead-letters them.
	h.accept(2, "gone")
	eventually(t, "dead letters", func() bool {
		ls, _ := h.dl.List(deadletter.Filter{Sink: "gone"})
		return len(ls) == 2
	})
	eventually(t, "spool drained", func() bool { return pending(t, h.spool) == 0 })
}

func TestEngine_CloseLeavesUnattemptedInSpool(t *testing.T) {
	dir := t.TempDir()
	ep := newEndpoint(t)
	ep.block = make(chan struct{})
	h := newHarness(t, dir)
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, 0, fastRetry(5))})
	ids := h.accept(30, "orders")
	eventually(t, "attempts in flight", func() bool {
		ep.mu.Lock()
		defer ep.mu.Unlock()
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	h.engine.Close(ctx) // in-flight attempts are cancelled: they did not count
	cancel()
	if n := pending(t, h.spool); n != len(ids) {
		t.Errorf("%d pending after shutdown, want all %d (none was delivered)", n, len(ids))
	}
	h.spool.Close()
	h.engine = nil
	close(ep.block)

	h = newHarness(t, dir)
	h.engine.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, 0, fastRetry(5))})
	eventually(t, "delivered after restart", func() bool { return len(ep.received()) >= len(ids) })
}

// TestEngine_RawDeadLetterKeepsExactBody: a body: raw change that is dead-lettered and then
// replayed still carries the exact bytes Meta signed (indentation in the letter file must not
// rewrite them), so the receiver can verify X-Hub-Signature-256.
func TestEngine_RawDeadLetterKeepsExactBody(t *testing.T) {
	ep := newEndpoint(t, http.StatusBadRequest)
	h := newHarness(t, t.TempDir())
	s, err := httpsink.New(httpsink.Options{Name: "mirror", URL: ep.srv.URL, Raw: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.engine.SetSinks([]relay.SinkConfig{{Sink: s, Concurrency: 1, Retry: fastRetry(3)}})
	body := []byte("{\n  \"object\": \"page\",\n  \"entry\": [ {\"id\": \"1\", \"time\": 2, \"changes\": [{\"field\": \"feed\", \"value\": {\"verb\": \"add\"}}]} ]\n}")
	ev := relay.Event{ID: "raw:shop:1", App: "shop", Object: "page", Entry: relay.Entry{ID: "1"}, Source: relay.SourceRaw,
		Value: body, Signature: relay.Sign(body, "app-secret"), ReceivedAt: time.Now()}
	if _, err := h.spool.Accept(context.Background(), []spool.Item{{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"mirror"}}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	h.engine.Notify([]string{"mirror"})
	var letters []*deadletter.Letter
	eventually(t, "dead letter", func() bool { letters, _ = h.dl.List(deadletter.Filter{}); return len(letters) == 1 })
	got, err := relay.LetterEvent(letters[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Value, body) || got.Signature != ev.Signature || got.Source != relay.SourceRaw {
		t.Fatalf("replayed raw change differs from what Meta signed:\n%s", got.Value)
	}
	if err := relay.NewVerifier([]string{"app-secret"}, false).Verify(got.Value, got.Signature, ""); err != nil {
		t.Errorf("signature no longer verifies: %v", err)
	}
}

func TestReplayItem_RefusesChangeWithoutObject(t *testing.T) {
	l := &deadletter.Letter{ID: "x", Sink: "s", Change: json.RawMessage(`{"corrupt_record_base64":"AAEC"}`)}
	if _, err := relay.ReplayItem(l, nil); err == nil {
		t.Error("a letter of an unreadable record was accepted for replay")
	}
}

// TestEngine_DownSinkIsNotHammered: while a sink keeps failing, its queue pauses with backoff;
// changes arriving meanwhile (each one waking the dispatcher) must not cut the pause short.
func TestEngine_DownSinkIsNotHammered(t *testing.T) {
	ep := newEndpoint(t)
	ep.script = make([]int, 100000)
	for i := range ep.script {
		ep.script[i] = http.StatusServiceUnavailable
	}
	h := newHarness(t, t.TempDir())
	pol := relay.RetryPolicy{MaxAttempts: 1000, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, MaxAge: time.Hour}
	cfg := h.httpSink("down", ep.srv.URL, 0, pol)
	cfg.Concurrency = 2
	h.engine.SetSinks([]relay.SinkConfig{cfg})
	// A backlog of 200 changes, then new ones trickling in (each waking the dispatcher).
	values := make([]string, 200)
	for i := range values {
		values[i] = fmt.Sprintf(`{"n":%d}`, i)
	}
	h.acceptValues("down", values...)
	for i := range 30 {
		h.acceptValues("down", fmt.Sprintf(`{"late":%d}`, i))
		time.Sleep(10 * time.Millisecond)
	}
	ep.mu.Lock()
	calls := ep.calls
	ep.mu.Unlock()
	// Paused 50ms, 100ms, 200ms, 400ms… over ~300ms: a handful of attempts, not one per change.
	if calls >= 50 {
		t.Errorf("%d attempts against a down sink holding 230 changes: the pause is not honoured", calls)
	}
}
