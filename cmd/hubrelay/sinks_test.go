package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// adminToken is the admin token of the pause tests' relays.
const adminToken = "pause-test-admin-token-51"

// messageIDs returns the WhatsApp message ids of the changes c took, in arrival order.
func (c *collector) messageIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.got {
		v, _ := m["value"].(map[string]any)
		msgs, _ := v["messages"].([]any)
		if len(msgs) > 0 {
			id, _ := msgs[0].(map[string]any)["id"].(string)
			out = append(out, id)
		}
	}
	return out
}

// archived counts the lines of the file sink's output.
func archived(t *testing.T, dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "data", "events.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// pauseConfig is writeConfig with orders delivering one at a time (so that its order shows)
// and, when admin is not "", an admin listener with a token.
func pauseConfig(t *testing.T, dir, addr, sinkURL, admin string) string {
	t.Helper()
	path := writeConfig(t, dir, addr, sinkURL)
	raw, _ := os.ReadFile(path)
	cfg := strings.Replace(string(raw), "    retry: {max_attempts: 5", "    concurrency: 1\n    retry: {max_attempts: 5", 1)
	if admin != "" {
		cfg = strings.Replace(cfg, "apps:\n", fmt.Sprintf("admin:\n  listen: %s\n  token: %s\napps:\n", admin, adminToken), 1)
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSinks_PauseResume: `hubrelay sinks pause` through the running relay's admin API stops
// deliveries to one sink while the other takes every change and Meta still gets 200; the
// state and the backlog show in `sinks list` and the metrics; the pause holds across a
// restart and is readable with the relay stopped; resumed, the sink gets its backlog in the
// order the changes were posted. Paused with the relay stopped, the relay starts paused.
func TestSinks_PauseResume(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	admin := freeAddr(t)
	cfg := pauseConfig(t, dir, freeAddr(t), sink.srv.URL, admin)
	r := startRelayHealth(t, dir, cfg, "http://"+admin+"/healthz")
	metricsURL := "http://" + admin + "/metrics"

	out, err := cli(t, "sinks", "pause", "-config", cfg, "orders")
	if err != nil || !strings.Contains(out, "sink orders paused through the running relay") {
		t.Fatalf("pause: %v\n%s", err, out)
	}
	if out, err := cli(t, "sinks", "pause", "-config", cfg, "orders"); err != nil || !strings.Contains(out, "already paused") {
		t.Fatalf("second pause: %v\n%s", err, out)
	}
	var want []string
	postN := func(n int) {
		for range n {
			id := fmt.Sprintf("pause-%02d", len(want))
			want = append(want, "wamid."+id)
			body := waPayload(id)
			if st, b := post(t, r.url+"/webhooks", body, relay.Sign(body, testSecret)); st != 200 {
				t.Fatalf("POST while paused: %d %s", st, b)
			}
		}
	}
	postN(6)
	waitLong(t, "the archive sink takes every change", func() bool { return archived(t, dir) == 6 })
	waitLong(t, "the backlog in the metrics", func() bool {
		return metricValue(t, metricsURL, "hubrelay_spool_pending", `sink="orders"`, `state="ready"`) == 6
	})
	if v := metricValue(t, metricsURL, "hubrelay_sink_paused", `sink="orders"`); v != 1 {
		t.Errorf("hubrelay_sink_paused{orders} = %v, want 1", v)
	}
	if v := metricValue(t, metricsURL, "hubrelay_sink_paused", `sink="archive"`); v != 0 {
		t.Errorf("hubrelay_sink_paused{archive} = %v, want 0", v)
	}
	out, err = cli(t, "sinks", "list", "-config", cfg)
	if err != nil || !regexpLine(out, `orders\s+paused\s+\S+\s+cli: \S+ via admin api from 127\.0\.0\.1:\d+\s+6\s+0`) || !regexpLine(out, `archive\s+delivering`) {
		t.Fatalf("list while running: %v\n%s", err, out)
	}
	if !strings.Contains(r.logs.String(), `"msg":"sink paused"`) || !strings.Contains(r.logs.String(), `via admin api from 127.0.0.1`) {
		t.Errorf("no info line for the pause with who and where:\n%.3000s", r.logs)
	}

	r.stop(t)
	out, err = cli(t, "sinks", "list", "-config", cfg)
	if err != nil || !regexpLine(out, `orders\s+paused\s.*\s6\s+0\s`) {
		t.Fatalf("list with the relay stopped: %v\n%s", err, out)
	}
	r = startRelayHealth(t, dir, cfg, "http://"+admin+"/healthz")
	postN(4)
	waitLong(t, "the archive sink takes the changes after the restart", func() bool { return archived(t, dir) == 10 })
	time.Sleep(2500 * time.Millisecond) // a sweep of the dispatcher would find the backlog
	if n := sink.callCount(); n != 0 {
		t.Fatalf("the paused sink got %d requests", n)
	}

	out, err = cli(t, "sinks", "resume", "-config", cfg, "orders")
	if err != nil || !strings.Contains(out, "sink orders resumed") || !strings.Contains(out, "10 ready") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	waitLong(t, "the backlog delivered", func() bool { return len(sink.messageIDs()) == len(want) })
	if got := sink.messageIDs(); !slices.Equal(got, want) {
		t.Fatalf("backlog out of order:\n got %v\nwant %v", got, want)
	}

	// Paused while no relay runs: straight into the spool; the relay starts paused.
	r.stop(t)
	if out, err := cli(t, "sinks", "pause", "-config", cfg, "orders"); err != nil || !strings.Contains(out, "in the spool (no relay is running") {
		t.Fatalf("pause with the relay stopped: %v\n%s", err, out)
	}
	r = startRelayHealth(t, dir, cfg, "http://"+admin+"/healthz")
	postN(1)
	waitLong(t, "archive", func() bool { return archived(t, dir) == 11 })
	time.Sleep(2500 * time.Millisecond)
	if n := len(sink.messageIDs()); n != 10 {
		t.Fatalf("paused while stopped: the sink got %d changes, want the 10 from before", n)
	}
	if out, err := cli(t, "sinks", "resume", "-config", cfg, "orders"); err != nil {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	waitLong(t, "the last change delivered", func() bool { return len(sink.messageIDs()) == 11 })
}

// waitLong polls cond for up to a minute: these tests run relays, fsync and Postgres on a
// loaded machine.
func waitLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// regexpLine reports whether a line of out matches pattern.
func regexpLine(out, pattern string) bool {
	re := regexp.MustCompile(pattern)
	for l := range strings.SplitSeq(out, "\n") {
		if re.MatchString(l) {
			return true
		}
	}
	return false
}

// TestSinks_CLIMistakes: a sink name that is not configured is refused with the nearest one;
// a relay that holds the spool without admin.listen is not bypassed.
func TestSinks_CLIMistakes(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	cfg := pauseConfig(t, dir, freeAddr(t), sink.srv.URL, "")
	out, err := cli(t, "sinks", "pause", "-config", cfg, "ordres")
	if err == nil || !strings.Contains(out, `no sink named "ordres"`) || !strings.Contains(out, `did you mean "orders"?`) {
		t.Fatalf("typo: %v\n%s", err, out)
	}
	r := startRelay(t, dir, cfg)
	out, err = cli(t, "sinks", "pause", "-config", cfg, "orders")
	if err == nil || !strings.Contains(out, "held by a running relay, and admin.listen is not set") {
		t.Fatalf("running relay without admin.listen: %v\n%s", err, out)
	}
	body := waPayload("cli-mistakes")
	post(t, r.url+"/webhooks", body, relay.Sign(body, testSecret))
	waitLong(t, "delivered: nothing was paused", func() bool { return len(sink.ids()) == 1 })
	// The control API is not on the webhook listener.
	if st, _ := apiDo(t, "POST", r.url+"/api/sinks/orders/pause", "application/json", "Bearer "+adminToken, nil); st != http.StatusNotFound && st != http.StatusMethodNotAllowed {
		t.Errorf("pause on the webhook listener: status %d", st)
	}
}

// apiDo makes one admin API request; hdr are extra headers.
func apiDo(t *testing.T, method, url, ctype, auth string, hdr map[string]string) (int, string) {
	t.Helper()
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader(`{"by":"api test"}`)
	}
	req, _ := http.NewRequestWithContext(context.Background(), method, url, body)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSinks_AdminAPIAuth: the admin API wants the token, refuses browsers and form posts,
// names unknown sinks with the nearest one, and changes nothing when it refuses.
func TestSinks_AdminAPIAuth(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	admin := freeAddr(t)
	cfg := pauseConfig(t, dir, freeAddr(t), sink.srv.URL, admin)
	startRelayHealth(t, dir, cfg, "http://"+admin+"/healthz")
	base := "http://" + admin + "/api/sinks"
	good := "Bearer " + adminToken
	cases := []struct {
		name         string
		method, path string
		ctype, auth  string
		hdr          map[string]string
		status       int
		want         string
	}{
		{"no token", "GET", "", "", "", nil, 401, "unauthorized"},
		{"wrong token", "POST", "/orders/pause", "application/json", "Bearer nope", nil, 401, "unauthorized"},
		{"token as basic password", "GET", "", "", "Basic " + basicAuth("ops", adminToken), nil, 200, `"name":"orders"`},
		{"browser (Origin)", "POST", "/orders/pause", "application/json", good, map[string]string{"Origin": "http://evil.example"}, 403, "browsers"},
		{"browser (Sec-Fetch-Site)", "POST", "/orders/pause", "application/json", good, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403, "browsers"},
		{"form post", "POST", "/orders/pause", "application/x-www-form-urlencoded", good, nil, 403, "Content-Type"},
		{"unknown sink", "POST", "/ordres/pause", "application/json", good, nil, 404, `did you mean \"orders\"?`},
		{"unknown action", "POST", "/orders/stop", "application/json", good, nil, 404, "pause or resume"},
		{"list", "GET", "", "", good, nil, 200, `"paused":false`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, b := apiDo(t, c.method, base+c.path, c.ctype, c.auth, c.hdr)
			if st != c.status || !strings.Contains(b, c.want) {
				t.Fatalf("status %d %s; want %d with %q", st, b, c.status, c.want)
			}
		})
	}
	if st, b := apiDo(t, "GET", base, "", good, nil); st != 200 || strings.Contains(b, `"paused":true`) {
		t.Fatalf("after the refusals: %d %s; want nothing paused", st, b)
	}
	st, b := apiDo(t, "POST", base+"/orders/pause", "application/json", good, nil)
	if st != 200 || !strings.Contains(b, `"paused":true`) || !strings.Contains(b, `"changed":true`) || !strings.Contains(b, `"by":"api test via admin api from 127.0.0.1:`) {
		t.Fatalf("pause: %d %s", st, b)
	}
	st, b = apiDo(t, "POST", base+"/orders/resume", "application/json", good, nil)
	if st != 200 || !strings.Contains(b, `"paused":false`) || !strings.Contains(b, `"changed":true`) {
		t.Fatalf("resume: %d %s", st, b)
	}
}

// TestSinks_PausePostgres: with two replicas on one database, `hubrelay sinks pause` writes
// the database directly; both replicas stop delivering to the sink within their poll interval
// while the other sink takes everything; resumed, the sink gets every change.
func TestSinks_PausePostgres(t *testing.T) {
	pgURL := pgtest.URL(t)
	schema := pgtest.Schema(t, pgURL)
	a, b := newCrashSink(t, "sink-a"), newCrashSink(t, "sink-b")
	dir := t.TempDir()
	cfg1 := writePGConfig(t, filepath.Join(dir, "r1"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL)
	r1 := startPGRelay(t, cfg1)
	r2 := startPGRelay(t, writePGConfig(t, filepath.Join(dir, "r2"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL))
	pgCLI := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), args, pgGetenv, strings.NewReader(""), &out, &out)
		return out.String(), err
	}
	out, err := pgCLI("sinks", "pause", "-config", cfg1, "sink-a")
	if err != nil || !strings.Contains(out, "in the database (every replica within its poll interval, 100ms") {
		t.Fatalf("pause: %v\n%s", err, out)
	}
	// 100ms poll interval: give both replicas a few.
	time.Sleep(time.Second)
	var want []string
	for i := range 10 {
		note := crashLoadItem(t, i, 1, "paused")
		want = append(want, note.ids...)
		r := []*relayUnderTest{r1, r2}[i%2]
		if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", note); err != nil || st != http.StatusOK {
			t.Fatalf("POST %d while paused: %d, %v", i, st, err)
		}
	}
	waitLong(t, "sink-b takes every change", func() bool { return len(b.missing(want)) == 0 })
	time.Sleep(time.Second) // several poll intervals of both replicas
	if got := len(want) - len(a.missing(want)); got != 0 {
		t.Fatalf("paused sink-a got %d changes", got)
	}
	out, err = pgCLI("sinks", "list", "-config", cfg1)
	if err != nil || !regexpLine(out, `sink-a\s+paused\s+\S+\s+cli: \S+\s+10\s+0`) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := pgCLI("sinks", "resume", "-config", cfg1, "sink-a"); err != nil || !strings.Contains(out, "sink sink-a resumed in the database") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	waitLong(t, "sink-a takes the backlog", func() bool { return len(a.missing(want)) == 0 })
}

func basicAuth(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}
