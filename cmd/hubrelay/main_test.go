package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

const testSecret = "test-app-secret-3f9a"

// syncBuffer is a goroutine-safe log sink for the relay under test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// collector is an HTTP sink endpoint that records every envelope it is sent.
type collector struct {
	mu     sync.Mutex
	got    []map[string]any
	fail   int  // answer 503 to this many requests first
	reject bool // answer 400 (a permanent failure) to everything
	calls  int
	srv    *httptest.Server
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		defer c.mu.Unlock()
		c.calls++
		if c.reject {
			http.Error(w, "no such order", http.StatusBadRequest)
			return
		}
		if c.fail > 0 {
			c.fail--
			http.Error(w, "try later", http.StatusServiceUnavailable)
			return
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Errorf("sink got invalid JSON: %v: %s", err, body)
		}
		c.got = append(c.got, m)
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.got {
		id, _ := m["id"].(string)
		out = append(out, id)
	}
	return out
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// relayUnderTest is a running `hubrelay serve`.
type relayUnderTest struct {
	url    string
	dir    string
	cfg    string
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

func writeConfig(t *testing.T, dir, addr, sinkURL string) string {
	t.Helper()
	cfg := fmt.Sprintf(`server:
  listen: %s
  path: /webhooks
  max_body_bytes: 65536
apps:
  - name: shop
    verify_token: ${TEST_VERIFY_TOKEN}
    app_secrets: [old-secret-rotated-out, ${TEST_APP_SECRET}]
storage:
  dir: %s
sinks:
  - name: orders
    type: http
    url: %s
    retry: {max_attempts: 5, min_backoff: 10ms, max_backoff: 50ms, in_process: 0}
  - name: archive
    type: file
    path: %s
rules:
  - name: whatsapp-inbound
    object: whatsapp_business_account
    field: messages
    when: 'value.messages != nil'
    sinks: [orders, archive]
  - name: page-photos
    object: page
    field: feed
    verb: [add, edited]
    when: 'value.item == "photo"'
    sinks: [archive]
`, addr, filepath.Join(dir, "data"), sinkURL, filepath.Join(dir, "data", "events.jsonl"))
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func testGetenv(k string) string {
	switch k {
	case "TEST_VERIFY_TOKEN":
		return "verify-me-42"
	case "TEST_APP_SECRET":
		return testSecret
	}
	return ""
}

func startRelay(t *testing.T, dir, cfgPath string) *relayUnderTest {
	t.Helper()
	return startServe(t, dir, cfgPath, serveOptions{})
}

// startRelayHealth is startRelay polling health at healthURL (default: the server's own
// /healthz, right when admin.listen is not set).
func startRelayHealth(t *testing.T, dir, cfgPath, healthURL string) *relayUnderTest {
	t.Helper()
	return startServe(t, dir, cfgPath, serveOptions{health: healthURL})
}

// listenAddr returns server.listen of the config at cfgPath (the tests' configs set it).
func listenAddr(cfgPath string) string {
	raw, _ := os.ReadFile(cfgPath)
	_, rest, _ := strings.Cut(string(raw), "listen:")
	line, _, _ := strings.Cut(rest, "\n")
	return strings.TrimSpace(line)
}

// serveOptions says how startServe runs `hubrelay serve` and knows it is up.
type serveOptions struct {
	getenv func(string) string // default testGetenv
	args   []string            // more serve flags
	health string              // the URL polled; default the server's own /healthz
	client *http.Client        // polls health; default http.DefaultClient
}

// startServe runs `hubrelay serve -config cfgPath` in this process until the test ends and
// waits (generously: the machine is shared) for its health URL to answer 200.
func startServe(t *testing.T, dir, cfgPath string, o serveOptions) *relayUnderTest {
	t.Helper()
	if o.getenv == nil {
		o.getenv = testGetenv
	}
	if o.client == nil {
		o.client = http.DefaultClient
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &relayUnderTest{dir: dir, cfg: cfgPath, logs: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	args := append([]string{"serve", "-config", cfgPath}, o.args...)
	go func() {
		r.done <- run(ctx, args, o.getenv, strings.NewReader(""), io.Discard, r.logs)
	}()
	addr := listenAddr(cfgPath)
	r.url = "http://" + addr
	if o.health == "" {
		o.health = r.url + "/healthz"
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := o.client.Get(o.health)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-r.done:
			t.Fatalf("relay exited early: %v\nlogs:\n%s", err, r.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay did not become healthy\nlogs:\n%s", r.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *relayUnderTest) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("serve returned %v\nlogs:\n%s", err, r.logs)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("serve did not stop\nlogs:\n%s", r.logs)
	}
}

func post(t *testing.T, url string, body []byte, sig string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set("X-Hub-Signature-256", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, what, 15*time.Second, cond)
}

// waitForWithin is waitFor with a deadline of its own, for waits involving processes.
func waitForWithin(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestServe_EndToEnd(t *testing.T) {
	sink := newCollector(t)
	sink.fail = 2 // the first two attempts fail: delivery must retry
	dir := t.TempDir()
	r := startRelay(t, dir, writeConfig(t, dir, freeAddr(t), sink.srv.URL))
	hook := r.url + "/webhooks"

	t.Run("verification", func(t *testing.T) {
		cases := []struct {
			name, query string
			status      int
			body        string
		}{
			{"ok", "hub.mode=subscribe&hub.verify_token=verify-me-42&hub.challenge=1158201444", 200, "1158201444"},
			{"opaque challenge echoed byte for byte", "hub.mode=subscribe&hub.verify_token=verify-me-42&hub.challenge=a%2Fb%20c", 200, "a/b c"},
			{"wrong token", "hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1", 403, ""},
			{"wrong mode", "hub.mode=unsubscribe&hub.verify_token=verify-me-42&hub.challenge=1", 403, ""},
			{"no token", "hub.mode=subscribe&hub.challenge=1", 403, ""},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				resp, err := http.Get(hook + "?" + c.query)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != c.status {
					t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
				}
				if c.status == 200 {
					if string(b) != c.body {
						t.Errorf("body %q, want %q", b, c.body)
					}
					if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
						t.Errorf("content type %q", ct)
					}
				}
			})
		}
	})

	wa, _ := os.ReadFile("testdata/whatsapp_text_message.json")
	photo, _ := os.ReadFile("testdata/page_feed_add_photo.json")

	t.Run("rejections", func(t *testing.T) {
		big := bytes.Repeat([]byte(" "), 70000)
		cases := []struct {
			name   string
			method string
			body   []byte
			sig    string
			status int
		}{
			{"missing signature", "POST", wa, "", 401},
			{"wrong secret", "POST", wa, relay.Sign(wa, "not-the-secret"), 401},
			{"body changed after signing", "POST", append(bytes.Clone(wa), ' '), relay.Sign(wa, testSecret), 401},
			{"malformed JSON, signed", "POST", []byte(`{"object":`), relay.Sign([]byte(`{"object":`), testSecret), 400},
			{"not an envelope, signed", "POST", []byte(`[1,2]`), relay.Sign([]byte(`[1,2]`), testSecret), 400},
			{"too large", "POST", big, relay.Sign(big, testSecret), 413},
			{"other method", "PUT", wa, relay.Sign(wa, testSecret), 405},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				req, _ := http.NewRequest(c.method, hook, bytes.NewReader(c.body))
				if c.sig != "" {
					req.Header.Set("X-Hub-Signature-256", c.sig)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != c.status {
					t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
				}
			})
		}
	})

	t.Run("accept, retry, deliver, dedup", func(t *testing.T) {
		if st, body := post(t, hook, wa, relay.Sign(wa, testSecret)); st != 200 {
			t.Fatalf("status %d %s", st, body)
		}
		if st, _ := post(t, hook, photo, relay.Sign(photo, testSecret)); st != 200 {
			t.Fatalf("photo status %d", st)
		}
		waitFor(t, "delivery to orders", func() bool { return len(sink.ids()) == 1 })
		// The same change again, re-batched with an entry.time (Meta's send time changes
		// between retries): acknowledged, not delivered again.
		again := bytes.Replace(wa, []byte(`"id": "102290129340398",`), []byte(`"id": "102290129340398", "time": 1750000999,`), 1)
		if bytes.Equal(again, wa) {
			t.Fatal("test payload not changed")
		}
		if st, _ := post(t, hook, again, relay.Sign(again, testSecret)); st != 200 {
			t.Fatalf("repeat status %d", st)
		}
		archive := filepath.Join(r.dir, "data", "events.jsonl")
		waitFor(t, "archive lines", func() bool {
			b, _ := os.ReadFile(archive)
			return bytes.Count(b, []byte("\n")) == 2
		})
		time.Sleep(100 * time.Millisecond) // a wrong second delivery would show up by now
		if ids := sink.ids(); len(ids) != 1 || !strings.HasPrefix(ids[0], "wa:") {
			t.Fatalf("orders got %v, want exactly the one WhatsApp change", ids)
		}
		sink.mu.Lock()
		got := sink.got[0]
		sink.mu.Unlock()
		if got["object"] != "whatsapp_business_account" || got["field"] != "messages" {
			t.Errorf("envelope %v", got)
		}
	})

	t.Run("secrets stay out of logs", func(t *testing.T) {
		logs := r.logs.String()
		for _, secret := range []string{testSecret, "verify-me-42", relay.Sign(wa, testSecret)[7:]} {
			if strings.Contains(logs, secret) {
				t.Errorf("logs contain a secret %q", secret)
			}
		}
	})
}

func TestCheck_ExampleConfig(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"check", "-config", "../../config.example.yaml"}, func(string) string { return "" }, nil, &out, &out)
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "ok") {
		t.Errorf("output %q", out.String())
	}
}

func TestCheck_ReportsProblems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	os.WriteFile(path, []byte(`server:
  lisen: 1
apps:
  - name: a
    verify_token: t
    app_secrets: [s]
sinks:
  - name: x
    type: file
    path: /tmp/x
rules:
  - name: r
    sinks: [missing]
`), 0o600)
	var out bytes.Buffer
	err := run(context.Background(), []string{"check", "-config", path}, func(string) string { return "" }, nil, &out, &out)
	if exitCode(err) != 1 {
		t.Fatalf("exit %d, want 1", exitCode(err))
	}
	for _, want := range []string{path + ":2:3:", path + ":13:13:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRoute_JSON(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "127.0.0.1:0", "http://127.0.0.1:1/")
	cases := []struct {
		payload string
		want    []routeLine
	}{
		{"testdata/whatsapp_text_message.json", []routeLine{{Object: "whatsapp_business_account", Field: "messages", EntryID: "102290129340398", Rules: []string{"whatsapp-inbound"}, Sinks: []string{"orders", "archive"}}}},
		{"testdata/page_feed_add_photo.json", []routeLine{{Object: "page", Field: "feed", EntryID: "517161164821567", Rules: []string{"page-photos"}, Sinks: []string{"archive"}}}},
		{"testdata/whatsapp_status_failed_with_errors.json", []routeLine{{Object: "whatsapp_business_account", Field: "messages", EntryID: "102290129340398", Rules: []string{}, Sinks: []string{}}}},
	}
	for _, c := range cases {
		t.Run(filepath.Base(c.payload), func(t *testing.T) {
			var out, errb bytes.Buffer
			if err := run(context.Background(), []string{"route", "-config", cfg, "-json", c.payload}, testGetenv, nil, &out, &errb); err != nil {
				t.Fatalf("route: %v\n%s", err, errb.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != len(c.want) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(c.want), out.String())
			}
			for i, line := range lines {
				var raw map[string]json.RawMessage
				if err := json.Unmarshal([]byte(line), &raw); err != nil {
					t.Fatal(err)
				}
				for _, k := range []string{"object", "field", "verb", "entry_id", "rules", "sinks"} {
					if _, ok := raw[k]; !ok {
						t.Errorf("line lacks key %q: %s", k, line)
					}
				}
				var got routeLine
				json.Unmarshal([]byte(line), &got)
				w := c.want[i]
				if got.Object != w.Object || got.Field != w.Field || got.EntryID != w.EntryID ||
					strings.Join(got.Rules, ",") != strings.Join(w.Rules, ",") || strings.Join(got.Sinks, ",") != strings.Join(w.Sinks, ",") {
					t.Errorf("got %+v, want %+v", got, w)
				}
			}
		})
	}
}

func TestSend_SignsExactBytes(t *testing.T) {
	payload, _ := os.ReadFile("testdata/messenger_message.json")
	var gotSig string
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotSig = r.Header.Get("X-Hub-Signature-256")
		gotBody, _ = io.ReadAll(r.Body)
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	var out bytes.Buffer
	err := run(context.Background(), []string{"send", "-url", srv.URL, "-secret", testSecret, "testdata/messenger_message.json"}, testGetenv, nil, &out, &out)
	if err != nil {
		t.Fatalf("send: %v\n%s", err, out.String())
	}
	if !bytes.Equal(gotBody, payload) {
		t.Error("body not sent byte for byte")
	}
	if err := relay.NewVerifier([]string{testSecret}, false).Verify(gotBody, gotSig, ""); err != nil {
		t.Errorf("signature does not verify: %v", err)
	}
	if !strings.Contains(out.String(), "200 OK") {
		t.Errorf("output %q", out.String())
	}
}

func (c *collector) setReject(v bool) {
	c.mu.Lock()
	c.reject = v
	c.mu.Unlock()
}

func (c *collector) callCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), args, testGetenv, strings.NewReader(""), &out, &out)
	return out.String(), err
}

// TestServe_DeadLetterReplayAndRestart: a permanent failure is dead-lettered, listed, shown
// and replayed through the running relay; after a restart a repeat of the change is still
// recognised and not delivered again; replay also works with no relay running.
func TestServe_DeadLetterReplayAndRestart(t *testing.T) {
	sink := newCollector(t)
	sink.setReject(true)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, freeAddr(t), sink.srv.URL)
	r := startRelay(t, dir, cfg)
	wa, _ := os.ReadFile("testdata/whatsapp_text_message.json")
	if st, _ := post(t, r.url+"/webhooks", wa, relay.Sign(wa, testSecret)); st != 200 {
		t.Fatalf("status %d", st)
	}
	dlDir := filepath.Join(dir, "data", "dead-letter")
	waitFor(t, "dead letter", func() bool {
		m, _ := filepath.Glob(filepath.Join(dlDir, "orders-*.json"))
		return len(m) == 1
	})
	out, err := cli(t, "deadletter", "list", "-config", cfg)
	if err != nil || !strings.Contains(out, "orders") || !strings.Contains(out, "permanent") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	m, _ := filepath.Glob(filepath.Join(dlDir, "orders-*.json"))
	id := strings.TrimSuffix(filepath.Base(m[0]), ".json")
	out, err = cli(t, "deadletter", "show", "-config", cfg, id)
	if err != nil || !strings.Contains(out, `"whatsapp_business_account"`) || !strings.Contains(out, "Does it come in another color?") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if strings.Contains(out, testSecret) {
		t.Error("dead letter holds the app secret")
	}

	sink.setReject(false)
	out, err = cli(t, "deadletter", "replay", "-config", cfg, "-sink", "orders")
	if err != nil || !strings.Contains(out, "queued for the running relay") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	waitFor(t, "replayed delivery", func() bool { return len(sink.ids()) == 1 })
	r.stop(t)

	// Restart on the same data: the repeat is recognised from the persisted dedup window.
	r = startRelay(t, dir, cfg)
	calls := sink.callCount()
	if st, _ := post(t, r.url+"/webhooks", wa, relay.Sign(wa, testSecret)); st != 200 {
		t.Fatalf("repeat status %d", st)
	}
	time.Sleep(100 * time.Millisecond)
	if n := sink.callCount(); n != calls {
		t.Errorf("a repeat after restart was delivered again (%d calls, want %d)", n, calls)
	}

	// A permanent failure with the relay stopped: replay opens the spool itself.
	sink.setReject(true)
	inbound := bytes.Replace(wa, []byte("wamid.HBgL"), []byte("wamid.NEW1"), 1)
	if st, _ := post(t, r.url+"/webhooks", inbound, relay.Sign(inbound, testSecret)); st != 200 {
		t.Fatalf("status %d", st)
	}
	waitFor(t, "second dead letter", func() bool {
		m, _ := filepath.Glob(filepath.Join(dlDir, "orders-*.json"))
		return len(m) == 1
	})
	r.stop(t)
	out, err = cli(t, "deadletter", "replay", "-config", cfg, "-all")
	if err != nil || !strings.Contains(out, "1 dead letter(s) replayed into the spool") {
		t.Fatalf("offline replay: %v\n%s", err, out)
	}
	sink.setReject(false)
	before := len(sink.ids())
	startRelay(t, dir, cfg)
	waitFor(t, "offline-replayed delivery", func() bool { return len(sink.ids()) == before+1 })
}
