package relay_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/front"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/rules"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

const ingestSecret = "ingest-secret"

func newReceiver(t *testing.T, specs []rules.Spec, raw ...string) (*relay.Receiver, *spool.Spool) {
	t.Helper()
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	set, err := rules.Compile(specs)
	if err != nil {
		t.Fatal(err)
	}
	rc := relay.NewReceiver(relay.ReceiverConfig{
		Apps:         []relay.App{{Name: "shop", Path: "/webhooks", VerifyToken: "tok", Verifier: relay.NewVerifier([]string{ingestSecret}, false)}},
		MaxBodyBytes: 1 << 20,
		Limits:       relay.Limits{MaxChanges: 5000, MaxDepth: 64},
	}, embedded.New(sp), relay.NewRouter(set, raw), nil, nil, discard())
	return rc, sp
}

func postTo(h http.Handler, body []byte, sig string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/webhooks", bytes.NewReader(body))
	if sig != "" {
		req.Header.Set("X-Hub-Signature-256", sig)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func spoolCounts(t *testing.T, sp *spool.Spool) (deliveries, keys int) {
	t.Helper()
	keys, err := sp.DedupLen()
	if err != nil {
		t.Fatal(err)
	}
	return pending(t, sp), keys
}

var allToOrders = []rules.Spec{{Name: "all", Sinks: []string{"orders"}}}

func TestReceiver_BadSignatureLeavesNoTrace(t *testing.T) {
	rc, sp := newReceiver(t, allToOrders)
	body, _ := os.ReadFile("testdata/ingest/whatsapp_text_message.json")
	for _, sig := range []string{"", "sha256=00", relay.Sign(body, "wrong"), relay.SignSHA1(body, ingestSecret)} {
		if rec := postTo(rc, body, sig); rec.Code != http.StatusUnauthorized {
			t.Errorf("signature %q: status %d, want 401", sig, rec.Code)
		}
	}
	if d, k := spoolCounts(t, sp); d != 0 || k != 0 {
		t.Errorf("spool holds %d deliveries and %d keys after rejected requests", d, k)
	}
}

func TestReceiver_SpoolFailureIs503(t *testing.T) {
	rc, sp := newReceiver(t, allToOrders)
	body, _ := os.ReadFile("testdata/ingest/whatsapp_text_message.json")
	sp.Close() // the spool cannot commit any more
	if rec := postTo(rc, body, relay.Sign(body, ingestSecret)); rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", rec.Code)
	}
}

func TestReceiver_BatchSplitAndDedup(t *testing.T) {
	rc, sp := newReceiver(t, allToOrders)
	body, _ := os.ReadFile("testdata/ingest/large_batch_messenger_100_entries.json")
	if rec := postTo(rc, body, relay.Sign(body, ingestSecret)); rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if d, k := spoolCounts(t, sp); d != 100 || k != 100 {
		t.Fatalf("%d deliveries, %d keys; want 100 each", d, k)
	}
	// Meta retries: the same updates, re-batched (entries reversed) and with new entry.time.
	events, err := relay.Decode(body, "shop", time.Now(), relay.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var rebatched bytes.Buffer
	rebatched.WriteString(`{"object":"page","entry":[`)
	for i := len(events) - 1; i >= 0; i-- {
		ev := events[i]
		rebatched.WriteString(`{"id":"` + ev.Entry.ID + `","time":1999999999999,"messaging":[`)
		rebatched.Write(ev.Value)
		rebatched.WriteString(`]}`)
		if i > 0 {
			rebatched.WriteByte(',')
		}
	}
	rebatched.WriteString(`]}`)
	b := rebatched.Bytes()
	if rec := postTo(rc, b, relay.Sign(b, ingestSecret)); rec.Code != http.StatusOK {
		t.Fatalf("retry status %d: %s", rec.Code, rec.Body)
	}
	if d, k := spoolCounts(t, sp); d != 100 || k != 100 {
		t.Errorf("after the retry: %d deliveries, %d keys; want still 100 each", d, k)
	}
}

func TestReceiver_RawSinkGetsNotificationOnce(t *testing.T) {
	rc, sp := newReceiver(t, []rules.Spec{{Name: "all", Sinks: []string{"mirror", "orders"}}}, "mirror")
	body, _ := os.ReadFile("testdata/ingest/large_batch_messenger_100_entries.json")
	sig := relay.Sign(body, ingestSecret)
	if rec := postTo(rc, body, sig); rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	ds, err := sp.Ready("mirror", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 {
		t.Fatalf("mirror has %d deliveries, want 1 for the whole notification", len(ds))
	}
	var ev relay.Event
	if err := relay.UnmarshalBinary(ds[0].Data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Source != relay.SourceRaw || !bytes.Equal(ev.Value, body) || ev.Signature != sig {
		t.Errorf("raw delivery does not carry the exact body and Meta's signature")
	}
	if n, _ := sp.Ready("orders", 0, 1000); len(n) != 100 {
		t.Errorf("orders has %d deliveries, want 100", len(n))
	}
	// An identical retry is not forwarded again.
	postTo(rc, body, sig)
	if ds, _ := sp.Ready("mirror", 0, 10); len(ds) != 1 {
		t.Errorf("mirror has %d deliveries after an identical retry, want 1", len(ds))
	}
}

func TestReceiver_Verification(t *testing.T) {
	rc, _ := newReceiver(t, allToOrders)
	cases := []struct {
		method, target string
		status         int
		body           string
	}{
		{"GET", "/webhooks?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=abc%3Cscript%3E", 200, "abc<script>"},
		{"GET", "/webhooks?hub.mode=subscribe&hub.verify_token=tok2&hub.challenge=1", 403, ""},
		{"GET", "/elsewhere?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=1", 404, ""},
		{"DELETE", "/webhooks", 405, ""},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		rc.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, nil))
		if rec.Code != c.status {
			t.Errorf("%s %s: status %d, want %d", c.method, c.target, rec.Code, c.status)
			continue
		}
		if c.status == 200 {
			if rec.Body.String() != c.body {
				t.Errorf("challenge %q, want %q", rec.Body, c.body)
			}
			if rec.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Error("challenge answered without nosniff")
			}
		}
	}
}

// loggingReceiver returns a receiver on a fresh spool, routing everything to "orders", that
// logs JSON lines to the returned buffer.
func loggingReceiver(t *testing.T, cfg relay.ReceiverConfig) (*relay.Receiver, *bytes.Buffer) {
	t.Helper()
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	set, _ := rules.Compile(allToOrders)
	logs := &bytes.Buffer{}
	return relay.NewReceiver(cfg, embedded.New(sp), relay.NewRouter(set, nil), nil, nil, slog.New(slog.NewJSONHandler(logs, nil))), logs
}

// TestReceiver_LogsClientBehindTrustedProxy: log lines name the client a trusted proxy
// forwarded, and the peer itself for anyone else (whose X-Forwarded-For is ignored).
func TestReceiver_LogsClientBehindTrustedProxy(t *testing.T) {
	trusted, _ := front.ParseCIDRs([]string{"10.0.0.0/8"})
	cases := []struct{ peer, want string }{
		{"10.1.2.3:5555", `"remote":"203.0.113.9"`},
		{"198.51.100.7:4444", `"remote":"198.51.100.7"`},
	}
	for _, c := range cases {
		// A receiver each: refusals of one kind are logged once a second.
		rc, logs := loggingReceiver(t, relay.ReceiverConfig{
			Apps: []relay.App{{Name: "shop", Path: "/webhooks", VerifyToken: "tok", Verifier: relay.NewVerifier([]string{ingestSecret}, false)}},
		})
		h := front.WithClientIP(rc, trusted)
		req := httptest.NewRequest(http.MethodGet, "/webhooks?hub.mode=subscribe&hub.verify_token=wrong", nil)
		req.RemoteAddr = c.peer
		req.Header.Set("X-Forwarded-For", "203.0.113.9")
		h.ServeHTTP(httptest.NewRecorder(), req)
		if !strings.Contains(logs.String(), c.want) {
			t.Errorf("peer %s: log %s lacks %s", c.peer, logs.String(), c.want)
		}
	}
}

// TestReceiver_LogsNameTheApp: the lines about a notification name the app whose secret
// verified it, also after Configure renames the apps.
func TestReceiver_LogsNameTheApp(t *testing.T) {
	apps := func(a, b string) relay.ReceiverConfig {
		return relay.ReceiverConfig{Apps: []relay.App{
			{Name: a, Path: "/webhooks", VerifyToken: "tok", Verifier: relay.NewVerifier([]string{"secret-a"}, false)},
			{Name: b, Path: "/webhooks", VerifyToken: "tok", Verifier: relay.NewVerifier([]string{ingestSecret}, false)},
		}}
	}
	rc, logs := loggingReceiver(t, apps("shop", "support"))
	for i, want := range []string{"support", "helpdesk"} {
		if i > 0 {
			rc.Configure(apps("shop", want))
		}
		logs.Reset()
		body := waBody(fmt.Sprint("logs", i), 1)
		if rec := postTo(rc, body, relay.Sign(body, ingestSecret)); rec.Code != http.StatusOK {
			t.Fatalf("status %d", rec.Code)
		}
		line := logs.String()
		if !strings.Contains(line, `"msg":"notification accepted"`) || !strings.Contains(line, `"component":"ingest","app":"`+want+`"`) {
			t.Errorf("log %s lacks the app %q", line, want)
		}
	}
}
