package console

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// Every secret of the test config holds "s3cr3t", so that a leak is easy to find.
const testConfig = `
admin: {listen: 127.0.0.1:0, console: true}
apps:
  - {name: shop, verify_token: verify-s3cr3t, app_secrets: [app-s3cr3t-1, app-s3cr3t-2]}
  - {name: other, path: /other, verify_token: verify2-s3cr3t, app_secrets: [app2-s3cr3t]}
sinks:
  - {name: orders, type: http, url: "http://127.0.0.1:1/x", headers: {Authorization: "Bearer hdr-s3cr3t"}, sign_secret: sign-s3cr3t}
  - {name: ops, type: slack, webhook_url: "https://hooks.slack.com/services/T0/B0/slack-s3cr3t"}
rules:
  - {name: wa, object: whatsapp_business_account, sinks: [orders, ops]}
  - {name: broken, object: page, when: 'value.item.x > 3', sinks: [ops]}
`

const adminToken = "admin-s3cr3t-token"

var secrets = []string{"verify-s3cr3t", "app-s3cr3t-1", "app-s3cr3t-2", "verify2-s3cr3t", "app2-s3cr3t", "hdr-s3cr3t",
	"sign-s3cr3t", "slack-s3cr3t", adminToken, "s3cr3t"}

type fixture struct {
	h    *Handler
	feed *Feed
	dl   *deadletter.Dir
	sp   *embedded.Store
	srv  *httptest.Server
	cfg  *config.Config
}

// setup builds a console over a real spool and dead-letter directory, with the test config.
func setup(t *testing.T, token string, payloads bool) *fixture {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(testConfig), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sp, err := embedded.Open(filepath.Join(dir, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	dl, err := deadletter.Open(filepath.Join(dir, "dead-letter"))
	if err != nil {
		t.Fatal(err)
	}
	feed := NewFeed(payloads)
	router := relay.NewRouter(cfg.Rules, nil)
	rp := &relay.Replayer{DL: dl, Spool: sp, Router: router, Log: slog.New(slog.DiscardHandler)}
	replay := func(ctx context.Context, ids []string) (int, error) {
		if err := dl.QueueReplay(ids...); err != nil {
			return 0, err
		}
		return rp.Once(ctx)
	}
	h, err := New(Options{Token: token, Feed: feed, Router: router, Stats: sp.Stats,
		DeadLetters: dl, LettersAt: dl.Path(), Replay: replay})
	if err != nil {
		t.Fatal(err)
	}
	s := Setup{Payloads: payloads, Limits: relay.Limits{MaxChanges: 100, MaxDepth: 64}}
	for _, a := range cfg.Apps {
		s.Apps = append(s.Apps, App{Name: a.Name, Path: a.Path})
		s.Secrets = append(s.Secrets, a.VerifyToken)
		s.Secrets = append(s.Secrets, a.AppSecrets...)
	}
	for _, sk := range cfg.Sinks {
		s.Sinks = append(s.Sinks, sk.Name)
		s.Secrets = append(s.Secrets, sk.WebhookURL, sk.SignSecret, sk.Headers["Authorization"])
	}
	h.Configure(s)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{h: h, feed: feed, dl: dl, sp: sp, srv: srv, cfg: cfg}
}

// decode reads a testdata payload into events as the receiver would, keyed and routed.
func (f *fixture) events(t *testing.T, file, app string) ([]relay.Event, []relay.Route) {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	evs, err := relay.Decode(body, app, time.Now(), relay.Limits{MaxChanges: 100, MaxDepth: 64})
	if err != nil {
		t.Fatal(err)
	}
	router := relay.NewRouter(f.cfg.Rules, nil)
	rts := make([]relay.Route, len(evs))
	for i := range evs {
		evs[i].ID = relay.Key(&evs[i])
		rts[i] = router.Route(&evs[i], func(string, error) {})
		evs[i].Rules = rts[i].Rules
	}
	return evs, rts
}

// deadLetter writes a letter for ev whose errors quote secrets (as a careless sink might).
func (f *fixture) deadLetter(t *testing.T, ev *relay.Event, sink string, seq uint64) *deadletter.Letter {
	t.Helper()
	l := &deadletter.Letter{Sink: sink, Seq: seq, ChangeID: ev.ID, Rules: ev.Rules, FirstAt: time.Now().Add(-time.Hour).UTC(),
		Reason:   "giving up after 3 attempt(s): post https://hooks.slack.com/services/T0/B0/slack-s3cr3t: 500",
		Attempts: []deadletter.Attempt{{At: time.Now().UTC(), Status: 500, Error: "server said Bearer hdr-s3cr3t is wrong"}},
		Change:   relay.AppendEnvelope(nil, ev)}
	if err := f.dl.Write(l); err != nil {
		t.Fatal(err)
	}
	return l
}

type client struct {
	t       *testing.T
	f       *fixture
	auth    func(*http.Request)
	cookies []*http.Cookie
	csrf    string
}

func (f *fixture) client(t *testing.T, auth func(*http.Request)) *client {
	return &client{t: t, f: f, auth: auth}
}

func bearer(tok string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}

func basic(pass string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth("me", pass) }
}

var csrfMeta = regexp.MustCompile(`<meta name="csrf" content="([^"]+)">`)

// do sends a request; a page answer's session cookie and CSRF token are kept for later
// requests, as a browser would.
func (c *client) do(method, path, body string, hdr map[string]string) (int, string, http.Header) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.f.srv.URL+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.auth != nil {
		c.auth(req)
	}
	for _, ck := range c.cookies {
		req.AddCookie(ck)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ck := resp.Cookies(); len(ck) > 0 {
		c.cookies = ck
	}
	if m := csrfMeta.FindSubmatch(b); m != nil {
		c.csrf = string(m[1])
	}
	return resp.StatusCode, string(b), resp.Header
}

// post sends a state-changing request as the console page does.
func (c *client) post(path, body string) (int, string) {
	c.t.Helper()
	st, b, _ := c.do("POST", path, body, map[string]string{csrfHeader: c.csrf, "Origin": c.f.srv.URL, "Sec-Fetch-Site": "same-origin"})
	return st, b
}

func decodeJSON[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return v
}

func TestHandler_Auth(t *testing.T) {
	f := setup(t, adminToken, false)
	tests := []struct {
		name   string
		auth   func(*http.Request)
		status int
	}{
		{"no credentials", nil, http.StatusUnauthorized},
		{"wrong bearer", bearer("nope"), http.StatusUnauthorized},
		{"wrong basic password", basic("nope"), http.StatusUnauthorized},
		{"token as basic user, not password", func(r *http.Request) { r.SetBasicAuth(adminToken, "") }, http.StatusUnauthorized},
		{"bearer", bearer(adminToken), http.StatusOK},
		{"basic", basic(adminToken), http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/console/", "/console/tail", "/console/api/overview", "/console/api/tail", "/console/static/console.js"} {
				st, body, hdr := f.client(t, tc.auth).do("GET", path, "", nil)
				if st != tc.status {
					t.Errorf("GET %s = %d, want %d", path, st, tc.status)
				}
				if st == http.StatusUnauthorized {
					if !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Basic ") {
						t.Errorf("GET %s: no basic-auth challenge", path)
					}
					if strings.Contains(body, adminToken) {
						t.Errorf("401 body quotes the token")
					}
				}
			}
		})
	}
}

func TestHandler_NoTokenNeedsLoopbackHost(t *testing.T) {
	f := setup(t, "", false)
	for _, tc := range []struct {
		host   string
		status int
	}{
		{"", http.StatusOK}, // the test server's own 127.0.0.1:port
		{"localhost:9090", http.StatusOK},
		{"[::1]:9090", http.StatusOK},
		{"attacker.example:9090", http.StatusForbidden},
		{"10.0.0.1:9090", http.StatusForbidden},
	} {
		hdr := map[string]string{}
		if tc.host != "" {
			hdr["Host"] = tc.host
		}
		c := f.client(t, func(r *http.Request) {
			if tc.host != "" {
				r.Host = tc.host
			}
		})
		if st, _, _ := c.do("GET", "/console/api/overview", "", nil); st != tc.status {
			t.Errorf("Host %q: %d, want %d", tc.host, st, tc.status)
		}
	}
}

func TestHandler_CSRF(t *testing.T) {
	f := setup(t, adminToken, false)
	evs, _ := f.events(t, "whatsapp_text_message.json", "shop")
	l := f.deadLetter(t, &evs[0], "orders", 1)
	body := `{"ids":["` + l.ID + `"]}`
	browser := func(t *testing.T) *client {
		c := f.client(t, basic(adminToken))
		if st, _, _ := c.do("GET", "/console/deadletters", "", nil); st != 200 || c.csrf == "" || len(c.cookies) == 0 {
			t.Fatalf("page: %d, csrf %q, cookies %v", st, c.csrf, c.cookies)
		}
		return c
	}
	tests := []struct {
		name   string
		hdr    func(c *client) map[string]string
		noCk   bool
		status int
		msg    string
	}{
		{"no csrf header", func(c *client) map[string]string { return map[string]string{"Origin": f.srv.URL} }, false, 403, "X-Console-CSRF"},
		{"wrong csrf header", func(c *client) map[string]string { return map[string]string{csrfHeader: "x" + c.csrf} }, false, 403, "X-Console-CSRF"},
		{"cross origin", func(c *client) map[string]string {
			return map[string]string{csrfHeader: c.csrf, "Origin": "http://attacker.example"}
		}, false, 403, "origin"},
		{"cross site fetch", func(c *client) map[string]string {
			return map[string]string{csrfHeader: c.csrf, "Sec-Fetch-Site": "cross-site"}
		}, false, 403, "cross-site"},
		{"no session cookie", func(c *client) map[string]string { return map[string]string{csrfHeader: c.csrf} }, true, 403, "session"},
		{"token of another session", func(c *client) map[string]string {
			return map[string]string{csrfHeader: f.h.csrfToken(strings.Repeat("ab", 16))}
		}, false, 403, "X-Console-CSRF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := browser(t)
			hdr := tc.hdr(c)
			if tc.noCk {
				c.cookies = nil
			}
			st, b, _ := c.do("POST", "/console/api/deadletters/replay", body, hdr)
			if st != tc.status || !strings.Contains(b, tc.msg) {
				t.Errorf("POST = %d %s, want %d mentioning %q", st, b, tc.status, tc.msg)
			}
			if _, err := f.dl.Get(l.ID); err != nil {
				t.Errorf("refused request replayed the letter: %v", err)
			}
		})
	}
	t.Run("bearer needs no csrf", func(t *testing.T) {
		st, b, _ := f.client(t, bearer(adminToken)).do("POST", "/console/api/route", `{"app":"shop","payload":{"object":"page","entry":[]}}`, nil)
		if st != 200 {
			t.Errorf("POST with bearer = %d %s", st, b)
		}
	})
	t.Run("page session passes", func(t *testing.T) {
		c := browser(t)
		st, b := c.post("/console/api/deadletters/replay", body)
		if st != 200 {
			t.Fatalf("replay = %d %s", st, b)
		}
		if r := decodeJSON[ReplayResult](t, b); r.Replayed != 1 || r.Queued != 1 {
			t.Errorf("replay result %+v", r)
		}
	})
}

// TestHandler_API exercises every endpoint of the API with the bearer token.
func TestHandler_API(t *testing.T) {
	f := setup(t, adminToken, false)
	c := f.client(t, bearer(adminToken))
	wa, waRt := f.events(t, "whatsapp_text_message.json", "shop")
	ms, msRt := f.events(t, "messenger_message.json", "other")
	for i := range wa {
		f.feed.Request("shop", relay.OutcomeAccepted, time.Duration(i+3)*time.Millisecond)
		f.feed.Change(&wa[i], &waRt[i], false)
	}
	f.feed.Change(&wa[0], &waRt[0], true)
	f.feed.Request("shop", relay.OutcomeDuplicate, time.Millisecond)
	f.feed.Request("", relay.OutcomeBadSignature, time.Millisecond)
	for i := range ms {
		f.feed.Change(&ms[i], &msRt[i], false)
	}
	// wa[0]: delivered to ops, retried then dead-lettered for orders.
	id := wa[0].ID
	f.feed.Trace(relay.DeliveryTrace{Sink: "ops", ChangeID: id, Attempt: 1, At: time.Now(), Outcome: "delivered"})
	f.feed.Delivered("ops", 1, time.Second)
	retryAt := time.Now().Add(time.Minute)
	f.feed.Trace(relay.DeliveryTrace{Sink: "orders", ChangeID: id, Attempt: 1, At: time.Now(), Status: 502, Err: "502 from http://127.0.0.1:1/x", Outcome: "retrying", RetryAt: retryAt})
	l := f.deadLetter(t, &wa[0], "orders", 7)
	f.feed.Trace(relay.DeliveryTrace{Sink: "orders", ChangeID: id, Attempt: 2, At: time.Now(), Status: 500, Err: "Bearer hdr-s3cr3t refused", Outcome: "dead_letter", DeadLetter: l.ID})
	f.feed.DeadLettered("orders")

	t.Run("overview", func(t *testing.T) {
		st, b, _ := c.do("GET", "/console/api/overview", "", nil)
		if st != 200 {
			t.Fatalf("%d %s", st, b)
		}
		ov := decodeJSON[Overview](t, b)
		if len(ov.Apps) != 3 || ov.Apps[0].App != "shop" || ov.Apps[0].Path != "/webhooks" || ov.Apps[1].Path != "/other" || ov.Apps[2].App != "" {
			t.Fatalf("apps %+v", ov.Apps)
		}
		shop := ov.Apps[0]
		if shop.Totals["accepted"] != len(wa) || shop.Totals["duplicate"] != 1 || len(shop.Points) != Buckets {
			t.Errorf("shop totals %v, %d points", shop.Totals, len(shop.Points))
		}
		if shop.Points[Buckets-1].Outcomes["accepted"] != len(wa) {
			t.Errorf("current bucket %v", shop.Points[Buckets-1])
		}
		if shop.AckN != len(wa)+1 || shop.AckP50 <= 0 || shop.AckP99 < shop.AckP50 {
			t.Errorf("ack p50 %v p99 %v n %d", shop.AckP50, shop.AckP99, shop.AckN)
		}
		if ov.Apps[2].Totals["bad_signature"] != 1 {
			t.Errorf("refused requests %v", ov.Apps[2].Totals)
		}
		if len(ov.Sinks) != 2 || ov.Sinks[0].Name != "orders" || ov.Sinks[0].DeadLetters != 1 || ov.Sinks[0].Paused != nil {
			t.Errorf("sinks %+v", ov.Sinks)
		}
		if ov.Sinks[0].LastError != "[redacted] refused" || ov.Sinks[1].Delivered != 1 || ov.Sinks[1].DeliveredPerSecond <= 0 {
			t.Errorf("sink activity %+v", ov.Sinks)
		}
	})
	t.Run("tail", func(t *testing.T) {
		st, b, _ := c.do("GET", "/console/api/tail", "", nil)
		if st != 200 {
			t.Fatalf("%d %s", st, b)
		}
		tl := decodeJSON[Tail](t, b)
		want := len(wa) + 1 + len(ms)
		if len(tl.Items) != want || tl.LastSeq != uint64(want) || tl.Payloads || !strings.Contains(tl.PayloadsNote, "log.payloads") {
			t.Fatalf("tail: %d items, last %d, note %q", len(tl.Items), tl.LastSeq, tl.PayloadsNote)
		}
		if n := tl.Items[len(tl.Items)-1]; n.ChangeID != wa[0].ID || n.Duplicate || n.Object != "whatsapp_business_account" ||
			strings.Join(n.Sinks, ",") != "orders,ops" || strings.Join(n.Rules, ",") != "wa" || n.Value != "" {
			t.Errorf("oldest item %+v", n)
		}
		for _, q := range []struct {
			query string
			n     int
		}{
			{"app=other", len(ms)}, {"object=whatsapp_business_account", len(wa) + 1}, {"field=messages", len(wa) + 1},
			{"after=" + itoa(want-1), 1}, {"limit=2", 2}, {"app=nobody", 0},
		} {
			_, b, _ := c.do("GET", "/console/api/tail?"+q.query, "", nil)
			if got := decodeJSON[Tail](t, b); len(got.Items) != q.n {
				t.Errorf("tail?%s: %d items, want %d", q.query, len(got.Items), q.n)
			}
		}
		if st, _, _ := c.do("GET", "/console/api/tail?after=x", "", nil); st != 400 {
			t.Errorf("bad after: %d", st)
		}
	})
	t.Run("story", func(t *testing.T) {
		st, b, _ := c.do("GET", "/console/api/changes/"+id, "", nil)
		if st != 200 {
			t.Fatalf("%d %s", st, b)
		}
		s := decodeJSON[Story](t, b)
		if len(s.Accepted) != 2 || s.Accepted[0].Duplicate || !s.Accepted[1].Duplicate || len(s.Attempts) != 3 || len(s.DeadLetters) != 1 {
			t.Fatalf("story %+v", s)
		}
		now := map[string]string{}
		for _, sn := range s.Sinks {
			now[sn.Sink] = sn.State
		}
		if now["ops"] != "delivered" || now["orders"] != "dead_letter" {
			t.Errorf("now %+v", s.Sinks)
		}
		if strings.Contains(b, "s3cr3t") {
			t.Errorf("story leaks a secret: %s", b)
		}
		// Replayed: the letter leaves the directory; the story says so.
		if err := f.dl.Remove(l.ID); err != nil {
			t.Fatal(err)
		}
		_, b, _ = c.do("GET", "/console/api/changes/"+id, "", nil)
		for _, sn := range decodeJSON[Story](t, b).Sinks {
			if sn.Sink == "orders" && sn.State != "replayed" {
				t.Errorf("after removal: %+v", sn)
			}
		}
		f.deadLetter(t, &wa[0], "orders", 7)
		// A change routed but not attempted yet is pending; an unknown one is a 404 that
		// says what is remembered.
		_, b, _ = c.do("GET", "/console/api/changes/"+ms[0].ID, "", nil)
		if s := decodeJSON[Story](t, b); len(msRt[0].Sinks) > 0 && (len(s.Sinks) == 0 || s.Sinks[0].State != "pending") {
			t.Errorf("pending story %+v", s)
		}
		st, b, _ = c.do("GET", "/console/api/changes/nope", "", nil)
		if st != 404 || !strings.Contains(b, "remembers the last") {
			t.Errorf("unknown change: %d %s", st, b)
		}
	})
	t.Run("dead letters", func(t *testing.T) {
		f.deadLetter(t, &wa[0], "ops", 8)
		for _, q := range []struct {
			query string
			n     int
		}{{"", 2}, {"sink=orders", 1}, {"rule=wa", 2}, {"rule=nope", 0}, {"since=1m", 2}, {"since=2000-01-01T00:00:00Z", 2}, {"change_id=" + id, 2}} {
			st, b, _ := c.do("GET", "/console/api/deadletters?"+q.query, "", nil)
			if st != 200 {
				t.Fatalf("%s: %d %s", q.query, st, b)
			}
			ll := decodeJSON[LetterList](t, b)
			if ll.Total != q.n || len(ll.Letters) != q.n {
				t.Errorf("deadletters?%s: %d, want %d", q.query, ll.Total, q.n)
			}
			if strings.Contains(b, "s3cr3t") {
				t.Errorf("list leaks a secret: %s", b)
			}
		}
		if st, _, _ := c.do("GET", "/console/api/deadletters?since=yesterday", "", nil); st != 400 {
			t.Errorf("bad since: %d", st)
		}
		st, b, _ := c.do("GET", "/console/api/deadletters/"+l.ID, "", nil)
		if st != 200 {
			t.Fatalf("detail: %d %s", st, b)
		}
		d := decodeJSON[LetterDetail](t, b)
		if d.ChangeID != id || !d.ValueHidden || strings.Contains(string(d.Change), `"value"`) || len(d.AttemptLog) != 1 ||
			!strings.Contains(d.AttemptLog[0].Error, "[redacted]") || !strings.Contains(d.Reason, "[redacted]") {
			t.Errorf("detail %s", b)
		}
		if st, _, _ := c.do("GET", "/console/api/deadletters/nope", "", nil); st != 404 {
			t.Errorf("missing letter: %d", st)
		}
		if st, _, _ := c.do("GET", "/console/api/deadletters/..%2Fx", "", nil); st != 400 && st != 404 {
			t.Errorf("bad id: %d", st)
		}
	})
	t.Run("replay", func(t *testing.T) {
		for _, tc := range []struct {
			body   string
			status int
		}{{`{}`, 400}, {`{"ids":["nope"]}`, 404}, {`{"idz":[]}`, 400}, {`not json`, 400}} {
			if st, b, _ := c.do("POST", "/console/api/deadletters/replay", tc.body, nil); st != tc.status {
				t.Errorf("replay %s = %d %s, want %d", tc.body, st, b, tc.status)
			}
		}
		st, b, _ := c.do("POST", "/console/api/deadletters/replay", `{"all":true,"sink":"ops"}`, nil)
		if r := decodeJSON[ReplayResult](t, b); st != 200 || r.Replayed != 1 {
			t.Fatalf("replay all ops: %d %s", st, b)
		}
		stats, err := f.sp.Stats()
		if err != nil || stats["ops"].Ready != 1 {
			t.Errorf("spool after replay: %+v %v", stats, err)
		}
		if left, _ := f.dl.List(deadletter.Filter{}); len(left) != 1 || left[0].Sink != "orders" {
			t.Errorf("letters left: %d", len(left))
		}
	})
	t.Run("route", func(t *testing.T) {
		payload, _ := os.ReadFile("testdata/whatsapp_text_message.json")
		st, b := 0, ""
		st, b, _ = c.do("POST", "/console/api/route", `{"app":"shop","payload":`+string(payload)+`}`, nil)
		if st != 200 {
			t.Fatalf("%d %s", st, b)
		}
		r := decodeJSON[RouteResult](t, b)
		if len(r.Changes) != len(wa) || r.Changes[0].ID != wa[0].ID || strings.Join(r.Changes[0].Sinks, ",") != "ops,orders" {
			t.Errorf("route %s", b)
		}
		page := `{"object":"page","entry":[{"id":"1","time":1,"changes":[{"field":"feed","value":{"item":"photo","verb":"add"}}]}]}`
		_, b, _ = c.do("POST", "/console/api/route", `{"payload":`+page+`}`, nil)
		r = decodeJSON[RouteResult](t, b)
		if r.App != "shop" || len(r.Changes) != 1 || len(r.Changes[0].RuleErrors) != 1 || r.Changes[0].RuleErrors[0].Rule != "broken" ||
			r.Changes[0].RuleErrors[0].Hint == "" || len(r.Changes[0].Rules) != 0 {
			t.Errorf("rule error not explained: %s", b)
		}
		for _, tc := range []struct {
			body   string
			status int
		}{
			{`{"app":"nobody","payload":{}}`, 400},
			{`{"app":"shop"}`, 400},
			{`{"app":"shop","payload":{"entry":[]}}`, 422},
			{`{"app":"shop","payload":"x"}`, 422},
		} {
			if st, b, _ := c.do("POST", "/console/api/route", tc.body, nil); st != tc.status {
				t.Errorf("route %s = %d %s, want %d", tc.body, st, b, tc.status)
			}
		}
		if st, _, _ := c.do("POST", "/console/api/route", "", map[string]string{"Content-Type": "text/plain"}); st != 415 {
			t.Errorf("not JSON: %d", st)
		}
	})
	t.Run("sinks without pause support", func(t *testing.T) {
		if st, b, _ := c.do("POST", "/console/api/sinks/orders/pause", "{}", nil); st != 404 || !strings.Contains(b, "pause") {
			t.Errorf("pause = %d %s", st, b)
		}
	})
	t.Run("unknown endpoint", func(t *testing.T) {
		if st, b, _ := c.do("GET", "/console/api/nope", "", nil); st != 404 || !strings.Contains(b, "API.md") {
			t.Errorf("%d %s", st, b)
		}
	})
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestHandler_SecretHygiene renders every page and every GET answer with secrets in the
// config, in the errors of dead letters and attempts, and asserts that none appears.
func TestHandler_SecretHygiene(t *testing.T) {
	for _, payloads := range []bool{false, true} {
		f := setup(t, adminToken, payloads)
		wa, rt := f.events(t, "whatsapp_text_message.json", "shop")
		f.feed.Change(&wa[0], &rt[0], false)
		f.feed.Trace(relay.DeliveryTrace{Sink: "ops", ChangeID: wa[0].ID, Attempt: 1, At: time.Now(), Status: 404,
			Err: "post https://hooks.slack.com/services/T0/B0/slack-s3cr3t: 404", Outcome: "retrying", RetryAt: time.Now()})
		l := f.deadLetter(t, &wa[0], "ops", 3)
		c := f.client(t, basic(adminToken))
		paths := []string{"/console/", "/console/tail", "/console/change?id=" + wa[0].ID, "/console/deadletters", "/console/route",
			"/console/api/overview", "/console/api/tail", "/console/api/changes/" + wa[0].ID, "/console/api/deadletters",
			"/console/api/deadletters/" + l.ID, "/console/static/console.js", "/console/static/console.css"}
		for _, p := range paths {
			st, body, hdr := c.do("GET", p, "", nil)
			if st != 200 {
				t.Errorf("GET %s = %d", p, st)
			}
			all := body
			for k, v := range hdr {
				all += k + ": " + strings.Join(v, ",")
			}
			for _, s := range secrets {
				if strings.Contains(all, s) {
					t.Errorf("payloads=%v: GET %s shows secret %q", payloads, p, s)
				}
			}
			if p == "/console/api/tail" && payloads != strings.Contains(body, `"value"`) {
				t.Errorf("payloads=%v: tail value shown = %v", payloads, !payloads)
			}
		}
		_, b := c.post("/console/api/route", `{"payload":{"object":"page","entry":[{"id":"1","changes":[{"field":"feed","value":{"item":"slack-s3cr3t"}}]}]}}`)
		if strings.Contains(b, "s3cr3t") {
			t.Errorf("route answer shows a secret: %s", b)
		}
	}
}

func TestHandler_PagesAndHeaders(t *testing.T) {
	f := setup(t, adminToken, false)
	var c *client
	for page, want := range map[string]string{
		"/console/": `id="sinks"`, "/console/tail": "hidden", "/console/change": "kept in memory, lost at restart",
		"/console/deadletters": `id="letters"`, "/console/route": `id="route"`,
	} {
		c = f.client(t, basic(adminToken))
		st, body, hdr := c.do("GET", page, "", nil)
		if st != 200 || !strings.Contains(body, want) || !strings.Contains(body, `<meta name="viewport"`) {
			t.Errorf("GET %s = %d, want a page with %q", page, st, want)
		}
		if !strings.Contains(hdr.Get("Content-Security-Policy"), "script-src 'self'") || hdr.Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s headers %v", page, hdr)
		}
		ck := hdr.Get("Set-Cookie")
		if !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Strict") {
			t.Errorf("session cookie %q", ck)
		}
	}
	if st, _, _ := c.do("GET", "/console/nope", "", nil); st != 404 {
		t.Errorf("unknown page %d", st)
	}
	_, js, hdr := c.do("GET", "/console/static/console.js", "", nil)
	if !strings.Contains(js, "X-Console-CSRF") || !strings.Contains(hdr.Get("Cache-Control"), "immutable") {
		t.Errorf("static js: %.80s %v", js, hdr)
	}
}
