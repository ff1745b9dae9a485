package slack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/sinks/sinktest"
)

// hookPath is the secret part of a test webhook URL.
const hookPath = "/services/T0SECRET/B0SECRET/XoXoSeCrEtToKeN"

func testEvent() *relay.Event {
	return &relay.Event{
		ID: "k1", App: "shop", Object: "page", Entry: relay.Entry{ID: "104", Time: 1700000000},
		Field: "feed", Verb: "add", Value: json.RawMessage(`{"item":"photo","message":"caf\u00e9 <b>&"}`),
		ReceivedAt: time.Unix(1700000001, 0).UTC(),
	}
}

// answer is one reply of the fake Slack.
type answer struct {
	status     int
	body       string
	retryAfter string
}

// fakeSlack answers like an incoming webhook: the replies of script in turn (the last one
// forever) on hookPath, 404 no_service elsewhere.
type fakeSlack struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies [][]byte
	times  []time.Time
	ctypes []string
	script []answer
}

func newFakeSlack(t *testing.T, script ...answer) *fakeSlack {
	t.Helper()
	f := &fakeSlack{script: script}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != hookPath || r.Method != http.MethodPost {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, "no_service")
			return
		}
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		n := len(f.bodies)
		f.bodies = append(f.bodies, body)
		f.times = append(f.times, time.Now())
		f.ctypes = append(f.ctypes, r.Header.Get("Content-Type"))
		f.mu.Unlock()
		a := f.script[min(n, len(f.script)-1)]
		if a.retryAfter != "" {
			w.Header().Set("Retry-After", a.retryAfter)
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSlack) url() string { return f.srv.URL + hookPath }

func (f *fakeSlack) requests() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.bodies)
}

var okAnswer = answer{status: http.StatusOK, body: "ok"}

func newSink(t *testing.T, url string, logs io.Writer, mod func(*Options)) *Sink {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	o := Options{
		Name: "ops", WebhookURL: url, InProcessRetries: 2,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Second, Timeout: 5 * time.Second,
		Text: func(ev *relay.Event) (string, error) {
			return "New " + ev.Field + " on page " + ev.Entry.ID + " <https://x.test|view> & more", nil
		},
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func TestSink_Success(t *testing.T) {
	blocks := []any{map[string]any{"type": "section", "text": map[string]any{"type": "mrkdwn", "text": "*feed*"}}}
	tests := []struct {
		name       string
		blocks     func(*relay.Event) (any, error)
		wantBlocks bool
	}{
		{"text only", nil, false},
		{"with blocks", func(*relay.Event) (any, error) { return blocks, nil }, true},
		{"blocks func returns nil", func(*relay.Event) (any, error) { return nil, nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSlack(t, okAnswer)
			s := newSink(t, f.url(), nil, func(o *Options) { o.Blocks = tt.blocks })
			if err := s.Deliver(context.Background(), testEvent()); err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			if f.ctypes[0] != "application/json" {
				t.Errorf("Content-Type = %q", f.ctypes[0])
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(f.bodies[0], &got); err != nil {
				t.Fatalf("body %s: %v", f.bodies[0], err)
			}
			var text string
			_ = json.Unmarshal(got["text"], &text)
			if want := "New feed on page 104 <https://x.test|view> & more"; text != want {
				t.Errorf("text = %q, want %q", text, want)
			}
			if _, has := got["blocks"]; has != tt.wantBlocks {
				t.Errorf("blocks present = %v, want %v (body %s)", has, tt.wantBlocks, f.bodies[0])
			}
			if tt.wantBlocks {
				want, _ := json.Marshal(blocks)
				if !bytes.Equal(got["blocks"], want) {
					t.Errorf("blocks = %s, want %s", got["blocks"], want)
				}
			}
		})
	}
}

func TestSink_DefaultText(t *testing.T) {
	f := newFakeSlack(t, okAnswer)
	s := newSink(t, f.url(), nil, func(o *Options) { o.Text = nil })
	if err := s.Deliver(context.Background(), testEvent()); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if want := `{"text":"page feed add on 104"}`; string(f.bodies[0]) != want {
		t.Errorf("body = %s, want %s", f.bodies[0], want)
	}
}

func TestSink_RateLimitedThenOK(t *testing.T) {
	f := newFakeSlack(t, answer{status: http.StatusTooManyRequests, body: "rate_limited", retryAfter: "1"}, okAnswer)
	s := newSink(t, f.url(), nil, nil)
	if err := s.Deliver(context.Background(), testEvent()); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if n := f.requests(); n != 2 {
		t.Fatalf("got %d requests, want 2", n)
	}
	if gap := f.times[1].Sub(f.times[0]); gap < time.Second {
		t.Errorf("retry came %v after the 429, want at least Retry-After (1s)", gap)
	}
}

func TestSink_ServerErrorThenOK(t *testing.T) {
	f := newFakeSlack(t, answer{status: http.StatusInternalServerError, body: "rollup_error"},
		answer{status: http.StatusServiceUnavailable}, okAnswer)
	s := newSink(t, f.url(), nil, nil)
	if err := s.Deliver(context.Background(), testEvent()); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if n := f.requests(); n != 3 {
		t.Errorf("got %d requests, want 3", n)
	}
}

func TestSink_Errors(t *testing.T) {
	tests := []struct {
		name     string
		answer   answer
		status   int
		perm     bool
		requests int
		wantMsg  string
	}{
		{"invalid_payload", answer{status: 400, body: "invalid_payload"}, 400, true, 1, "ops: POST http://127.0.0.1/…: status 400 invalid_payload after 1 attempt"},
		{"invalid_blocks", answer{status: 400, body: "invalid_blocks"}, 400, true, 1, "status 400 invalid_blocks"},
		{"action_prohibited", answer{status: 403, body: "action_prohibited"}, 403, true, 1, "status 403 action_prohibited"},
		{"channel_not_found", answer{status: 404, body: "channel_not_found"}, 404, true, 1, "status 404 channel_not_found"},
		{"channel_is_archived", answer{status: 410, body: "channel_is_archived"}, 410, true, 1, "status 410 channel_is_archived"},
		{"html body not shown", answer{status: 400, body: "<html>oops</html>"}, 400, true, 1, "status 400 after 1 attempt"},
		{"500 forever", answer{status: 500, body: "rollup_error"}, 500, false, 3, "status 500 rollup_error after 3 attempts"},
		{"429 forever", answer{status: 429, body: "rate_limited", retryAfter: "0"}, 429, false, 3, "status 429 rate_limited after 3 attempts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSlack(t, tt.answer)
			s := newSink(t, f.url(), nil, nil)
			err := s.Deliver(context.Background(), testEvent())
			se, ok := errors.AsType[*relay.StatusError](err)
			if !ok {
				t.Fatalf("err = %T %v, want *relay.StatusError", err, err)
			}
			if se.Status != tt.status || errors.Is(err, relay.ErrPermanent) != tt.perm {
				t.Errorf("status %d permanent %v, want %d %v", se.Status, errors.Is(err, relay.ErrPermanent), tt.status, tt.perm)
			}
			msg := strings.Replace(err.Error(), f.srv.Listener.Addr().String(), "127.0.0.1", 1)
			if !strings.Contains(msg, tt.wantMsg) {
				t.Errorf("err = %q, want it to contain %q", msg, tt.wantMsg)
			}
			if n := f.requests(); n != tt.requests {
				t.Errorf("got %d requests, want %d", n, tt.requests)
			}
		})
	}
}

func TestSink_RenderErrorsArePermanent(t *testing.T) {
	boom := errors.New("undefined field nope")
	tests := []struct {
		name string
		mod  func(*Options)
	}{
		{"text", func(o *Options) { o.Text = func(*relay.Event) (string, error) { return "", boom } }},
		{"blocks", func(o *Options) { o.Blocks = func(*relay.Event) (any, error) { return nil, boom } }},
		{"blocks not encodable", func(o *Options) {
			o.Blocks = func(*relay.Event) (any, error) { return []any{func() {}}, nil }
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSlack(t, okAnswer)
			s := newSink(t, f.url(), nil, tt.mod)
			err := s.Deliver(context.Background(), testEvent())
			if !errors.Is(err, relay.ErrPermanent) {
				t.Fatalf("err = %v, want permanent", err)
			}
			if n := f.requests(); n != 0 {
				t.Errorf("got %d requests, want none", n)
			}
		})
	}
}

func TestSink_ContextCancelled(t *testing.T) {
	f := newFakeSlack(t, answer{status: 429, body: "rate_limited", retryAfter: "60"})
	s := newSink(t, f.url(), nil, func(o *Options) { o.MaxBackoff = time.Minute })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Deliver(ctx, testEvent()) }()
	for deadline := time.Now().Add(10 * time.Second); f.requests() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no request arrived")
		}
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Deliver did not return after cancel")
	}
}

func TestSink_WebhookURLNeverShown(t *testing.T) {
	tests := []struct {
		name   string
		script []answer // nil: connection refused
	}{
		{"404", []answer{{status: 404, body: "no_service"}}},
		{"500 forever", []answer{{status: 500}}},
		{"connection refused", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var url string
			if tt.script != nil {
				url = newFakeSlack(t, tt.script...).url()
			} else {
				srv := httptest.NewServer(http.NotFoundHandler())
				url = srv.URL + hookPath
				srv.Close()
			}
			var logs strings.Builder
			s := newSink(t, url, &logs, nil)
			err := s.Deliver(context.Background(), testEvent())
			if err == nil {
				t.Fatal("Deliver succeeded, want an error")
			}
			if !strings.Contains(err.Error(), "/…") {
				t.Errorf("err = %q, want the redacted URL", err)
			}
			if logs.Len() == 0 {
				t.Error("no logs captured: the test cannot see leaks")
			}
			for _, secret := range []string{"T0SECRET", "B0SECRET", "XoXoSeCrEtToKeN", "services/"} {
				if strings.Contains(err.Error(), secret) || strings.Contains(logs.String(), secret) {
					t.Errorf("%q leaked:\nerr: %v\nlogs:\n%s", secret, err, logs.String())
				}
			}
		})
	}
	if _, err := New(Options{Name: "ops", WebhookURL: "https://hooks.slack.com" + hookPath + "%zz"}); err == nil || strings.Contains(err.Error(), "SeCrEt") {
		t.Errorf("New with a bad URL: err = %v, want an error without the URL", err)
	}
}

// TestConformance runs the sink contract's suite (sinks/sinktest) against a loopback server
// standing in for Slack; the message text is the change id, for the server to find.
func TestConformance(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) *sinktest.Target {
		ep := sinktest.NewEndpoint(t, func(body []byte) []string {
			var m struct{ Text string }
			if json.Unmarshal(body, &m) != nil || m.Text == "" {
				return nil
			}
			return []string{m.Text}
		})
		s, err := New(Options{Name: "ops", WebhookURL: ep.URL + hookPath, Timeout: 30 * time.Second,
			Text: func(ev *relay.Event) (string, error) { return ev.ID, nil }})
		if err != nil {
			t.Fatal(err)
		}
		return ep.Target(s)
	})
}
