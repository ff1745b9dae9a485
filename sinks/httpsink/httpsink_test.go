package httpsink

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/sinks/sinktest"
)

const testSignSecret = "sign-s3cret-value"

// testEvent is a WhatsApp-shaped change whose value holds escapes and raw UTF-8.
func testEvent() *relay.Event {
	return &relay.Event{
		ID: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", App: "shop",
		Object: "whatsapp_business_account", Entry: relay.Entry{ID: "102290129340398"},
		Field: "messages", Source: relay.SourceChanges,
		Value:      json.RawMessage(`{"messaging_product":"whatsapp","messages":[{"text":{"body":"caf\u00e9 café \ud83d\udc4d"}}]}`),
		ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// captured is one request as the test server saw it.
type captured struct {
	header http.Header
	body   []byte
	at     time.Time
}

// recorder is an httptest server answering with the statuses of script in turn (the last one
// forever), recording every request.
type recorder struct {
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []captured
	script []func(w http.ResponseWriter, r *http.Request)
}

func newRecorder(t *testing.T, script ...func(w http.ResponseWriter, r *http.Request)) *recorder {
	t.Helper()
	rec := &recorder{script: script}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		n := len(rec.reqs)
		rec.reqs = append(rec.reqs, captured{header: r.Header.Clone(), body: body, at: time.Now()})
		rec.mu.Unlock()
		rec.script[min(n, len(rec.script)-1)](w, r)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *recorder) requests() []captured {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]captured(nil), rec.reqs...)
}

func status(code int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func retryAfter(code int, secs string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", secs)
		w.WriteHeader(code)
	}
}

// newSink returns a sink on url with millisecond backoff, logging everything to logs.
func newSink(t *testing.T, url string, logs io.Writer, mod func(*Options)) *Sink {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	o := Options{
		Name: "orders", URL: url, InProcessRetries: 2,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Timeout: 5 * time.Second,
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
	rec := newRecorder(t, status(http.StatusNoContent))
	s := newSink(t, rec.srv.URL+"/meta", nil, func(o *Options) {
		o.SignSecret = testSignSecret
		o.Headers = map[string]string{"authorization": "Bearer t0k3n", "X-Env": "test"}
	})
	ev := testEvent()
	if err := s.Deliver(context.Background(), ev); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	reqs := rec.requests()
	if len(reqs) != 1 {
		t.Fatalf("got %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	for k, want := range map[string]string{
		"Content-Type":    "application/json",
		"User-Agent":      "hubrelay",
		"Idempotency-Key": ev.ID,
		HeaderChangeID:    ev.ID,
		"Authorization":   "Bearer t0k3n",
		"X-Env":           "test",
	} {
		if got := r.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	if got := r.header.Get(HeaderMetaSignature); got != "" {
		t.Errorf("envelope request carries %s: %q", HeaderMetaSignature, got)
	}
	if want := Sign(r.body, testSignSecret); !hmac.Equal([]byte(r.header.Get(HeaderSignature)), []byte(want)) {
		t.Errorf("signature %q does not verify (want %q)", r.header.Get(HeaderSignature), want)
	}
	if want := relay.AppendEnvelope(nil, ev); !bytes.Equal(r.body, want) {
		t.Errorf("body:\n got %s\nwant %s", r.body, want)
	}
	var env struct {
		ID    string          `json:"id"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	if env.ID != ev.ID || !bytes.Equal(env.Value, ev.Value) {
		t.Errorf("envelope id %q value %s, want %q %s", env.ID, env.Value, ev.ID, ev.Value)
	}
}

func TestSink_Raw(t *testing.T) {
	rec := newRecorder(t, status(http.StatusOK))
	s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.Raw = true; o.SignSecret = testSignSecret })
	notification := []byte("{\"object\":\"page\",\n \"entry\":[{\"id\":\"1\",\"changes\":[{\"field\":\"feed\",\"value\":{\"m\":\"\\u00e4\\u00f6 äö\"}}]}]}")
	ev := &relay.Event{ID: "raw-1", Source: relay.SourceRaw, Value: notification, Signature: "sha256=0123abcd"}
	if err := s.Deliver(context.Background(), ev); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	r := rec.requests()[0]
	if !bytes.Equal(r.body, notification) {
		t.Errorf("body:\n got %q\nwant %q", r.body, notification)
	}
	if got := r.header.Get(HeaderMetaSignature); got != ev.Signature {
		t.Errorf("%s = %q, want %q", HeaderMetaSignature, got, ev.Signature)
	}
	if got, want := r.header.Get(HeaderSignature), Sign(notification, testSignSecret); got != want {
		t.Errorf("%s = %q, want %q", HeaderSignature, got, want)
	}

	err := s.Deliver(context.Background(), &relay.Event{ID: "empty"})
	if !errors.Is(err, relay.ErrPermanent) {
		t.Errorf("raw change without value: err = %v, want permanent", err)
	}
}

func TestSink_RetriesThenSucceeds(t *testing.T) {
	tests := []struct {
		name string
		fail func(http.ResponseWriter, *http.Request)
	}{
		{"500", status(http.StatusInternalServerError)},
		{"502", status(http.StatusBadGateway)},
		{"503 with Retry-After 0", retryAfter(http.StatusServiceUnavailable, "0")},
		{"408", status(http.StatusRequestTimeout)},
		{"429 without Retry-After", status(http.StatusTooManyRequests)},
		{"connection dropped", func(w http.ResponseWriter, _ *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, tt.fail, tt.fail, status(http.StatusOK))
			s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.InProcessRetries = 3 })
			if err := s.Deliver(context.Background(), testEvent()); err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			if n := len(rec.requests()); n != 3 {
				t.Errorf("got %d requests, want 3", n)
			}
		})
	}
}

func TestSink_RetryAfterHonoured(t *testing.T) {
	rec := newRecorder(t, retryAfter(http.StatusTooManyRequests, "1"), status(http.StatusOK))
	s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.MaxBackoff = 10 * time.Second })
	if err := s.Deliver(context.Background(), testEvent()); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	reqs := rec.requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want 2", len(reqs))
	}
	// Lower bound only: the retry must not come before the server said.
	if gap := reqs[1].at.Sub(reqs[0].at); gap < time.Second {
		t.Errorf("retry came %v after the 429, want at least Retry-After (1s)", gap)
	}
}

func TestSink_StatusErrors(t *testing.T) {
	tests := []struct {
		name     string
		answer   func(http.ResponseWriter, *http.Request)
		status   int
		perm     bool
		requests int // with InProcessRetries = 2
		attempts string
	}{
		{"400 permanent", status(http.StatusBadRequest), 400, true, 1, "after 1 attempt"},
		{"401 permanent", status(http.StatusUnauthorized), 401, true, 1, "after 1 attempt"},
		{"404 permanent", status(http.StatusNotFound), 404, true, 1, "after 1 attempt"},
		{"410 permanent", status(http.StatusGone), 410, true, 1, "after 1 attempt"},
		{"422 permanent", status(http.StatusUnprocessableEntity), 422, true, 1, "after 1 attempt"},
		{"500 forever", status(http.StatusInternalServerError), 500, false, 3, "after 3 attempts"},
		{"429 forever", status(http.StatusTooManyRequests), 429, false, 3, "after 3 attempts"},
		{"501 not retried", status(http.StatusNotImplemented), 501, false, 1, "after 1 attempt"},
		{"redirect not followed", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}, 302, false, 1, "after 1 attempt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, tt.answer)
			s := newSink(t, rec.srv.URL+"/hook", nil, nil)
			err := s.Deliver(context.Background(), testEvent())
			se, ok := errors.AsType[*relay.StatusError](err)
			if !ok {
				t.Fatalf("err = %T %v, want *relay.StatusError", err, err)
			}
			if se.Status != tt.status || se.Perm != tt.perm || errors.Is(err, relay.ErrPermanent) != tt.perm {
				t.Errorf("status %d perm %v (Is %v), want %d %v", se.Status, se.Perm, errors.Is(err, relay.ErrPermanent), tt.status, tt.perm)
			}
			want := fmt.Sprintf("orders: POST %s/hook: status %d %s", rec.srv.URL, tt.status, tt.attempts)
			if err.Error() != want {
				t.Errorf("err = %q, want %q", err, want)
			}
			if n := len(rec.requests()); n != tt.requests {
				t.Errorf("got %d requests, want %d", n, tt.requests)
			}
		})
	}
}

func TestSink_ConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	s := newSink(t, url, nil, nil)
	err := s.Deliver(context.Background(), testEvent())
	se, ok := errors.AsType[*relay.StatusError](err)
	if !ok || se.Status != 0 || se.Perm || errors.Is(err, relay.ErrPermanent) {
		t.Fatalf("err = %#v, want non-permanent *relay.StatusError with status 0", err)
	}
	if !strings.Contains(err.Error(), "after 3 attempts") {
		t.Errorf("err = %q, want the attempt count", err)
	}
}

func TestSink_Timeout(t *testing.T) {
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.Timeout = 20 * time.Millisecond; o.InProcessRetries = 1 })
	err := s.Deliver(context.Background(), testEvent())
	se, ok := errors.AsType[*relay.StatusError](err)
	if !ok || se.Perm || se.Status != 0 {
		t.Fatalf("err = %#v, want non-permanent *relay.StatusError", err)
	}
	// Count attempts on the client side: on a loaded machine the second one may time out
	// before the server sees it.
	if !strings.Contains(err.Error(), "after 2 attempts") {
		t.Errorf("err = %q, want 2 attempts", err)
	}
}

func TestSink_ContextCancelled(t *testing.T) {
	tests := []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request)
	}{
		{"during request", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{"during backoff", retryAfter(http.StatusServiceUnavailable, "60")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrived := make(chan struct{}, 10)
			rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				tt.answer(w, r)
			})
			s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.MaxBackoff = time.Minute; o.Timeout = time.Minute })
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Deliver(ctx, testEvent()) }()
			<-arrived
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("err = %v, want context.Canceled", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Deliver did not return after cancel")
			}
		})
	}
}

func TestSink_SecretsNeverShown(t *testing.T) {
	secrets := []string{"p4ssw0rd", "s3cr3tT0ken", "Bearer hdr-t0k3n", "hdr-t0k3n", testSignSecret}
	tests := []struct {
		name   string
		answer func(http.ResponseWriter, *http.Request) // nil: server closed (connection refused)
	}{
		{"500 forever", status(http.StatusInternalServerError)},
		{"400", status(http.StatusBadRequest)},
		{"timeout", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
		{"connection dropped", func(w http.ResponseWriter, _ *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
		}},
		{"connection refused", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var base string
			if tt.answer != nil {
				base = newRecorder(t, tt.answer).srv.URL
			} else {
				srv := httptest.NewServer(http.NotFoundHandler())
				base = srv.URL
				srv.Close()
			}
			url := strings.Replace(base, "http://", "http://admin:p4ssw0rd@", 1) + "/hook?token=s3cr3tT0ken&v=1"
			var logs syncBuffer
			s := newSink(t, url, &logs, func(o *Options) {
				o.SignSecret = testSignSecret
				o.Headers = map[string]string{"Authorization": "Bearer hdr-t0k3n"}
				o.Timeout = 50 * time.Millisecond
			})
			err := s.Deliver(context.Background(), testEvent())
			if err == nil {
				t.Fatal("Deliver succeeded, want an error")
			}
			if !strings.Contains(err.Error(), "/hook?token=REDACTED&v=REDACTED") {
				t.Errorf("err = %q, want the redacted URL", err)
			}
			if logs.String() == "" {
				t.Error("no logs captured: the test cannot see leaks")
			}
			for _, sec := range secrets {
				if strings.Contains(err.Error(), sec) {
					t.Errorf("error %q contains secret %q", err, sec)
				}
				if strings.Contains(logs.String(), sec) {
					t.Errorf("logs contain secret %q:\n%s", sec, logs.String())
				}
			}
		})
	}
}

func TestNew_Invalid(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no name", Options{URL: "http://x"}, "name"},
		{"no url", Options{Name: "a"}, "url is empty"},
		{"bad scheme", Options{Name: "a", URL: "ftp://x/y"}, "scheme"},
		{"no host", Options{Name: "a", URL: "http:///path"}, "no host"},
		{"bad url keeps password out", Options{Name: "a", URL: "http://u:p4ssw0rd@host:port/"}, "parse url"},
		{"negative retries", Options{Name: "a", URL: "http://x", InProcessRetries: -1}, "retries"},
		{"bad method", Options{Name: "a", URL: "http://x", Method: "PO ST"}, "method"},
		{"bad header name", Options{Name: "a", URL: "http://x", Headers: map[string]string{"X Y": "v"}}, "header name"},
		{"reserved header", Options{Name: "a", URL: "http://x", Headers: map[string]string{"idempotency-key": "v"}}, "set by the sink"},
		{"header value with newline", Options{Name: "a", URL: "http://x", Headers: map[string]string{"X-A": "a\r\nB: c"}}, "line break"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "p4ssw0rd") {
				t.Errorf("err = %q shows the password", err)
			}
		})
	}
}

func BenchmarkSink_Deliver(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	for _, signed := range []bool{false, true} {
		b.Run(fmt.Sprintf("signed=%v", signed), func(b *testing.B) {
			o := Options{Name: "bench", URL: srv.URL, InProcessRetries: 2}
			if signed {
				o.SignSecret = testSignSecret
			}
			s, err := New(o)
			if err != nil {
				b.Fatal(err)
			}
			var failed atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ev := testEvent()
				for pb.Next() {
					if err := s.Deliver(context.Background(), ev); err != nil {
						failed.Add(1)
					}
				}
			})
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d deliveries failed", n)
			}
		})
	}
}

// batchEvents returns n changes with distinct ids b0, b1, …
func batchEvents(n int) []*relay.Event {
	evs := make([]*relay.Event, n)
	for i := range evs {
		ev := testEvent()
		ev.ID = fmt.Sprintf("b%d", i)
		ev.Value = json.RawMessage(fmt.Sprintf(`{"n":%d,"text":"caf\u00e9 café"}`, i))
		evs[i] = ev
	}
	return evs
}

// wantBatchKey computes the batch Idempotency-Key independently of BatchKey.
func wantBatchKey(ids ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(ids, "\n")))
	return "batch:" + hex.EncodeToString(sum[:])
}

func TestSink_DeliverBatch(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d changes", n), func(t *testing.T) {
			rec := newRecorder(t, status(http.StatusOK))
			s := newSink(t, rec.srv.URL, nil, func(o *Options) {
				o.SignSecret = testSignSecret
				o.Headers = map[string]string{"Authorization": "Bearer t0k3n"}
			})
			evs := batchEvents(n)
			ids := make([]string, n)
			want := []byte{'['}
			for i, ev := range evs {
				ids[i] = ev.ID
				if i > 0 {
					want = append(want, ',')
				}
				want = relay.AppendEnvelope(want, ev)
			}
			want = append(want, ']')

			if err := s.DeliverBatch(context.Background(), evs); err != nil {
				t.Fatalf("DeliverBatch: %v", err)
			}
			reqs := rec.requests()
			if len(reqs) != 1 {
				t.Fatalf("got %d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if !bytes.Equal(r.body, want) {
				t.Errorf("body:\n got %s\nwant %s", r.body, want)
			}
			var got []struct {
				ID    string          `json:"id"`
				Value json.RawMessage `json:"value"`
			}
			if err := json.Unmarshal(r.body, &got); err != nil {
				t.Fatalf("body is not a JSON array: %v", err)
			}
			if len(got) != n {
				t.Fatalf("array holds %d elements, want %d", len(got), n)
			}
			for i, el := range got {
				if el.ID != evs[i].ID || !bytes.Equal(el.Value, evs[i].Value) {
					t.Errorf("element %d: id %q value %s, want %q %s", i, el.ID, el.Value, evs[i].ID, evs[i].Value)
				}
			}
			for k, want := range map[string]string{
				"Content-Type":  "application/json",
				"User-Agent":    "hubrelay",
				"Authorization": "Bearer t0k3n",
				HeaderBatchSize: fmt.Sprint(n),
				// Independent of BatchKey: "batch:" + hex SHA-256 of the ids joined by "\n".
				HeaderIdempotencyKey: wantBatchKey(ids...),
				HeaderChangeID:       "",
				HeaderMetaSignature:  "",
			} {
				if got := r.header.Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
			sig := []byte(r.header.Get(HeaderSignature))
			if want := Sign(r.body, testSignSecret); !hmac.Equal(sig, []byte(want)) {
				t.Errorf("signature %q does not verify over the array (want %q)", sig, want)
			}
		})
	}
}

func TestBatchKey(t *testing.T) {
	evs := batchEvents(3)
	key := BatchKey(evs)
	if want := wantBatchKey("b0", "b1", "b2"); key != want {
		t.Fatalf("BatchKey = %q, want %q", key, want)
	}
	tests := []struct {
		name string
		evs  []*relay.Event
		same bool
	}{
		{"same changes again", batchEvents(3), true},
		{"other order", []*relay.Event{evs[1], evs[0], evs[2]}, false},
		{"fewer changes", evs[:2], false},
		{"one change", evs[:1], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := BatchKey(tt.evs); (got == key) != tt.same {
				t.Errorf("BatchKey = %q, key of b0,b1,b2 = %q, want same = %v", got, key, tt.same)
			}
		})
	}
	if one := BatchKey(evs[:1]); one == evs[0].ID || !strings.HasPrefix(one, BatchKeyPrefix) {
		t.Errorf("one-change batch key %q must differ from Deliver's key %q and start with %q", one, evs[0].ID, BatchKeyPrefix)
	}
}

func TestSink_DeliverBatchRetriedAsUnit(t *testing.T) {
	rec := newRecorder(t, retryAfter(http.StatusServiceUnavailable, "0"), status(http.StatusOK))
	s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.SignSecret = testSignSecret })
	if err := s.DeliverBatch(context.Background(), batchEvents(5)); err != nil {
		t.Fatalf("DeliverBatch: %v", err)
	}
	reqs := rec.requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want 2 (503, then 200)", len(reqs))
	}
	if !bytes.Equal(reqs[0].body, reqs[1].body) {
		t.Errorf("retry body differs:\n%s\n%s", reqs[0].body, reqs[1].body)
	}
	for _, k := range []string{HeaderIdempotencyKey, HeaderSignature, HeaderBatchSize} {
		if a, b := reqs[0].header.Get(k), reqs[1].header.Get(k); a != b || a == "" {
			t.Errorf("header %s: first %q, retry %q, want equal and set", k, a, b)
		}
	}
}

func TestSink_DeliverBatchStatusErrors(t *testing.T) {
	tests := []struct {
		name     string
		answer   func(http.ResponseWriter, *http.Request)
		status   int
		perm     bool
		requests int
	}{
		{"400 permanent", status(http.StatusBadRequest), 400, true, 1},
		{"413 permanent", status(http.StatusRequestEntityTooLarge), 413, true, 1},
		{"500 forever", status(http.StatusInternalServerError), 500, false, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder(t, tt.answer)
			s := newSink(t, rec.srv.URL+"/hook", nil, nil)
			err := s.DeliverBatch(context.Background(), batchEvents(3))
			se, ok := errors.AsType[*relay.StatusError](err)
			if !ok {
				t.Fatalf("err = %T %v, want *relay.StatusError", err, err)
			}
			if se.Status != tt.status || se.Perm != tt.perm || errors.Is(err, relay.ErrPermanent) != tt.perm {
				t.Errorf("status %d perm %v, want %d %v", se.Status, se.Perm, tt.status, tt.perm)
			}
			if want := "(batch of 3 changes)"; !strings.HasSuffix(err.Error(), want) {
				t.Errorf("err = %q, want it to end with %q", err, want)
			}
			if n := len(rec.requests()); n != tt.requests {
				t.Errorf("got %d requests, want %d", n, tt.requests)
			}
		})
	}
}

func TestSink_DeliverBatchContextCancelled(t *testing.T) {
	rec := newRecorder(t, status(http.StatusOK))
	s := newSink(t, rec.srv.URL, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.DeliverBatch(ctx, batchEvents(2)); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if err := s.DeliverBatch(context.Background(), nil); err != nil {
		t.Errorf("empty batch: err = %v, want nil", err)
	}
	if n := len(rec.requests()); n != 0 {
		t.Errorf("got %d requests, want none", n)
	}
}

// TestSink_DeliverBatchRaw: a raw sink forwards one notification with Meta's own signature;
// a batch of one is that, a larger batch is refused before anything is sent.
func TestSink_DeliverBatchRaw(t *testing.T) {
	notif := func(i int) []byte { return []byte(fmt.Sprintf(`{"object":"page","entry":[{"id":"%d"}]}`, i)) }
	evs := make([]*relay.Event, 3)
	for i := range evs {
		evs[i] = &relay.Event{ID: fmt.Sprintf("raw-%d", i), Source: relay.SourceRaw, Value: notif(i), Signature: fmt.Sprintf("sha256=%02x", i)}
	}
	rec := newRecorder(t, status(http.StatusOK))
	s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.Raw = true })
	if err := s.DeliverBatch(context.Background(), evs[:1]); err != nil {
		t.Fatalf("batch of one: %v", err)
	}
	reqs := rec.requests()
	if len(reqs) != 1 || !bytes.Equal(reqs[0].body, evs[0].Value) || reqs[0].header.Get(HeaderMetaSignature) != evs[0].Signature ||
		reqs[0].header.Get(HeaderBatchSize) != "" {
		t.Fatalf("batch of one not forwarded as the raw notification: %d requests", len(reqs))
	}
	if err := s.DeliverBatch(context.Background(), evs); !errors.Is(err, relay.ErrPermanent) {
		t.Fatalf("batch of 3 on a raw sink: %v, want a permanent error", err)
	}
	if n := len(rec.requests()); n != 1 {
		t.Errorf("%d requests after the refused batch, want still 1", n)
	}
}

// TestSink_RawSHA1 forwards a notification that was verified with the legacy header only.
func TestSink_RawSHA1(t *testing.T) {
	rec := newRecorder(t, status(http.StatusOK))
	s := newSink(t, rec.srv.URL, nil, func(o *Options) { o.Raw = true })
	ev := &relay.Event{ID: "raw-1", Source: relay.SourceRaw, Value: []byte(`{"object":"page","entry":[]}`), Signature: "sha1=abcd"}
	if err := s.Deliver(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	r := rec.requests()[0]
	if r.header.Get("X-Hub-Signature") != "sha1=abcd" || r.header.Get(HeaderMetaSignature) != "" {
		t.Errorf("headers %v", r.header)
	}
}

// BenchmarkDeliverBatch_100 compares one DeliverBatch of 100 changes with 100 Deliver calls,
// one after the other, on a loopback server.
func BenchmarkDeliverBatch_100(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	const n = 100
	evs := make([]*relay.Event, n)
	for i := range evs {
		ev := testEvent()
		ev.ID = fmt.Sprintf("%s-%03d", ev.ID, i)
		evs[i] = ev
	}
	s, err := New(Options{Name: "bench", URL: srv.URL, SignSecret: testSignSecret})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	run := func(b *testing.B, deliver func() error) {
		b.ReportAllocs()
		for b.Loop() {
			if err := deliver(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "changes/s")
	}
	b.Run("DeliverBatch", func(b *testing.B) {
		run(b, func() error { return s.DeliverBatch(ctx, evs) })
	})
	b.Run("100xDeliver", func(b *testing.B) {
		run(b, func() error {
			for _, ev := range evs {
				if err := s.Deliver(ctx, ev); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// TestConformance runs the sink contract's suite (sinks/sinktest) against a loopback server.
func TestConformance(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) *sinktest.Target {
		ep := sinktest.NewEndpoint(t, sinktest.EnvelopeIDs)
		s, err := New(Options{Name: "orders", URL: ep.URL, Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return ep.Target(s)
	})
}
