package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// writePGConfig writes a config whose storage is the Postgres schema; the replicas of one test
// share it and differ only in their listen address, or, with urlB empty, in having no sink-b.
func writePGConfig(t *testing.T, dir, addr, pgURL, schema, urlA, urlB string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sinkB, routeB := fmt.Sprintf(`
  - name: sink-b
    type: http
    url: %s
    timeout: 5s
    concurrency: 4
    retry: {min_backoff: 10ms, max_backoff: 200ms, in_process: 1}`, urlB), ", sink-b"
	if urlB == "" {
		sinkB, routeB = "", ""
	}
	cfg := fmt.Sprintf(`server:
  listen: %s
  path: /webhooks
  shutdown_timeout: 10s
apps:
  - name: %s
    verify_token: crash-verify
    app_secrets: [${%s}]
storage:
  dir: %s
  postgres:
    url: %q
    schema: %s
    max_conns: 4
    lease: 3s
    poll_interval: 100ms
sinks:
  - name: sink-a
    type: http
    url: %s
    timeout: 5s
    concurrency: 4
    retry: {max_attempts: 3, min_backoff: 10ms, max_backoff: 200ms, in_process: 0}%s
rules:
  - name: whatsapp-inbound
    object: whatsapp_business_account
    field: messages
    when: 'value.messages != nil'
    sinks: [sink-a%s]
`, addr, crashApp, crashSecretEnv, filepath.Join(dir, "data"), pgURL, schema, urlA, sinkB, routeB)
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pgGetenv(k string) string {
	if k == crashSecretEnv {
		return crashSecret
	}
	return ""
}

// startPGRelay runs `hubrelay serve` on a writePGConfig config in this process and waits for
// /healthz.
func startPGRelay(t *testing.T, cfgPath string) *relayUnderTest {
	t.Helper()
	return startServe(t, "", cfgPath, serveOptions{getenv: pgGetenv})
}

// pgLoad pours notifications into relays from 8 workers, each posted until it is answered with
// something other than 503 (as Meta retries), and records the changes acknowledged.
type pgLoad struct {
	acked                        sync.Map // change id -> true
	answered, transport, unavail atomic.Int64
	wg                           sync.WaitGroup
}

// startPGLoad posts load[i] by worker w to url(i, w) until ctx ends.
func startPGLoad(t *testing.T, ctx context.Context, load []crashNotification, url func(i, w int) string) *pgLoad {
	l := &pgLoad{}
	var next atomic.Int64
	client := &http.Client{Timeout: 15 * time.Second}
	for w := range 8 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(load) {
					return
				}
				st, err := postUntilAnswered(ctx, client, url(i, w), load[i], &l.transport, &l.unavail)
				if err != nil {
					t.Errorf("notification %d: %v", i, err)
					return
				}
				if st == http.StatusOK {
					for _, id := range load[i].ids {
						l.acked.Store(id, true)
					}
				}
				l.answered.Add(1)
			}
		}()
	}
	return l
}

// wait waits for the whole load to be answered and returns the changes acknowledged.
func (l *pgLoad) wait() []string {
	l.wg.Wait()
	var want []string
	l.acked.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	return want
}

// waitDelivered waits (90 s at most) until every sink has received every change of want; on
// failure it calls dump, then fails the test.
func waitDelivered(t *testing.T, sinks []*crashSink, want []string, dump func()) {
	t.Helper()
	for _, s := range sinks {
		deadline := time.Now().Add(90 * time.Second)
		for len(s.missing(want)) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if m := s.missing(want); len(m) > 0 {
			dump()
			t.Fatalf("%s: %d of %d acknowledged changes never delivered (e.g. %s)", s.name, len(m), len(want), m[0])
		}
	}
}

// newRefusingSink is a crashSink that answers status (recording nothing) while the returned
// flag is set, as it is at first.
func newRefusingSink(t *testing.T, name string, status int) (*crashSink, *atomic.Bool) {
	refuse := &atomic.Bool{}
	refuse.Store(true)
	s := &crashSink{name: name, got: map[string][]string{}}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			http.Error(w, "refused by the test", status)
			return
		}
		s.serveHTTP(w, r)
	}))
	t.Cleanup(s.srv.Close)
	return s, refuse
}

func pgCount(t *testing.T, pgURL, schema, table string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, table}.Sanitize()).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPostgres_TwoReplicasSameChange posts every notification to two replicas at the same
// moment: each change is delivered once to each sink. A bad signature writes nothing.
func TestPostgres_TwoReplicasSameChange(t *testing.T) {
	pgURL := pgtest.URL(t)
	schema := pgtest.Schema(t, pgURL)
	a, b := newCrashSink(t, "sink-a"), newCrashSink(t, "sink-b")
	dir := t.TempDir()
	r1 := startPGRelay(t, writePGConfig(t, filepath.Join(dir, "r1"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL))
	r2 := startPGRelay(t, writePGConfig(t, filepath.Join(dir, "r2"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL))

	forged := crashLoadItem(t, 0, 1, "forged")
	forged.sig = relay.Sign(forged.body, "not-the-secret")
	for _, r := range []*relayUnderTest{r1, r2} {
		if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", forged); err != nil || st != http.StatusUnauthorized {
			t.Fatalf("forged POST: %d, %v; want 401", st, err)
		}
	}
	if n := pgCount(t, pgURL, schema, "deliveries") + pgCount(t, pgURL, schema, "dedup"); n != 0 {
		t.Fatalf("a forged request left %d rows in the database", n)
	}

	const n = 60
	var want []string
	var wg sync.WaitGroup
	for i := range n {
		note := crashLoadItem(t, i, 1+i%3, "twice")
		want = append(want, note.ids...)
		for _, r := range []*relayUnderTest{r1, r2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", note); err != nil || st != http.StatusOK {
					t.Errorf("POST %d: %d, %v", i, st, err)
				}
			}()
		}
		if i%8 == 7 {
			wg.Wait()
		}
	}
	wg.Wait()
	for _, s := range []*crashSink{a, b} {
		waitFor(t, s.name+" deliveries", func() bool { return len(s.missing(want)) == 0 })
	}
	// Give a second delivery, if there were one, time to arrive.
	time.Sleep(500 * time.Millisecond)
	for _, s := range []*crashSink{a, b} {
		for _, id := range want {
			if got := s.deliveriesOf(id); len(got) != 1 {
				t.Errorf("%s: change %s delivered %d times", s.name, id, len(got))
			}
		}
		if len(s.problems) > 0 {
			t.Errorf("%s: %v", s.name, s.problems)
		}
	}
}

// TestPostgres_KillReplicaUnderLoad: two replicas under load, one SIGKILLed and restarted:
// every change acknowledged by either reaches every sink.
func TestPostgres_KillReplicaUnderLoad(t *testing.T) {
	pgURL := pgtest.URL(t)
	schema := pgtest.Schema(t, pgURL)
	a, b := newCrashSink(t, "sink-a"), newCrashSink(t, "sink-b")
	dir := t.TempDir()
	bin, _ := buildRelay(t, dir)
	cfg1 := writePGConfig(t, filepath.Join(dir, "r1"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL)
	cfg2 := writePGConfig(t, filepath.Join(dir, "r2"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL)
	log1, log2 := filepath.Join(dir, "r1.log"), filepath.Join(dir, "r2.log")
	p1 := startCrashProcess(t, bin, cfg1, log1, 1)
	p2 := startCrashProcess(t, bin, cfg2, log2, 1)
	url1, url2 := p1.url, p2.url

	load := crashLoad(t, 400)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := startPGLoad(t, ctx, load, func(i, w int) string {
		if (i+w)%2 == 1 {
			return url2 + "/webhooks"
		}
		return url1 + "/webhooks"
	})
	waitCrash(t, p1, "a third of the load answered", time.Minute, func() bool { return l.answered.Load() >= int64(len(load)/3) })
	p1.cmd.Process.Signal(syscall.SIGKILL)
	<-p1.done
	time.Sleep(500 * time.Millisecond)
	p1 = startCrashProcess(t, bin, cfg1, log1, 2)
	want := l.wait()
	if len(want) == 0 {
		t.Fatal("nothing was acknowledged")
	}
	waitDelivered(t, []*crashSink{a, b}, want, func() {
		dumpRelayLog(t, log1)
		dumpRelayLog(t, log2)
	})
	t.Logf("acknowledged %d changes; sink-a got %d deliveries, sink-b %d; %d transport errors, %d 503s while a replica was down",
		len(want), a.count(), b.count(), l.transport.Load(), l.unavail.Load())
	_ = p2
}

// TestPostgres_DeadLetters: a permanent failure is dead-lettered in the database; list, show
// and export read it there while the relay runs, and replay puts it back on the shared queue.
func TestPostgres_DeadLetters(t *testing.T) {
	pgURL := pgtest.URL(t)
	schema := pgtest.Schema(t, pgURL)
	a, rejectA := newRefusingSink(t, "sink-a", http.StatusBadRequest)
	b := newCrashSink(t, "sink-b")
	dir := t.TempDir()
	// A password in the URL (the test server trusts loopback, so it is ignored) must never
	// reach a log line or an output.
	const pw = "s3cret-db-pw"
	withPW := strings.Replace(pgURL, "postgres@", "postgres:"+pw+"@", 1)
	cfg := writePGConfig(t, dir, freeAddr(t), withPW, schema, a.srv.URL, b.srv.URL)
	r := startPGRelay(t, cfg)
	defer func() {
		if strings.Contains(r.logs.String(), pw) {
			t.Error("the relay's logs hold the database password")
		}
	}()
	note := crashLoadItem(t, 1, 1, "dead")
	if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", note); err != nil || st != 200 {
		t.Fatalf("POST: %d, %v", st, err)
	}
	cliPG := func(args ...string) (string, error) {
		var out strings.Builder
		err := run(context.Background(), args, pgGetenv, strings.NewReader(""), &out, &out)
		if strings.Contains(out.String(), pw) {
			t.Errorf("hubrelay %s printed the database password", strings.Join(args[:2], " "))
		}
		return out.String(), err
	}
	waitFor(t, "dead letter in the database", func() bool { return pgCount(t, pgURL, schema, "dead_letters") == 1 })
	out, err := cliPG("deadletter", "list", "-config", cfg)
	if err != nil || !strings.Contains(out, "ID  ") || !strings.Contains(out, "sink-a-") || !strings.Contains(out, "permanent") ||
		!strings.Contains(out, note.ids[0]) {
		t.Fatalf("list: %v\n%s", err, out)
	}
	id := strings.Fields(strings.Split(out, "\n")[1])[0]
	out, err = cliPG("deadletter", "show", "-config", cfg, id)
	if err != nil || !strings.Contains(out, `"whatsapp_business_account"`) || !strings.Contains(out, `"reason": "permanent:`) {
		t.Fatalf("show: %v\n%s", err, out)
	}
	exp := filepath.Join(dir, "export")
	out, err = cliPG("deadletter", "export", "-config", cfg, "-dir", exp)
	if err != nil || !strings.Contains(out, "1 dead letter(s) exported") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(exp, id+".json")); err != nil {
		t.Fatalf("exported file: %v", err)
	}
	rejectA.Store(false)
	out, err = cliPG("deadletter", "replay", "-config", cfg, "-all")
	if err != nil || !strings.Contains(out, "1 dead letter(s) replayed into the database") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	waitFor(t, "replayed delivery", func() bool { return len(a.missing(note.ids)) == 0 })
	if n := pgCount(t, pgURL, schema, "dead_letters"); n != 0 {
		t.Fatalf("%d dead letters left after replay", n)
	}
	if len(b.missing(note.ids)) != 0 {
		t.Fatal("sink-b never got the change")
	}
	resp, err := http.Get(r.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{`hubrelay_postgres_commit_seconds_count{outcome="ok"}`, `hubrelay_postgres_claim_lag_seconds_count{sink="sink-a"}`,
		"hubrelay_postgres_pool_max_connections 4", `hubrelay_dead_letters{sink="sink-a"} 0`} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics has no %s", m)
		}
	}
	if strings.Contains(string(body), pw) {
		t.Error("/metrics holds the database password")
	}
}

// TestPostgres_ReplicasWithDifferentSinks is a rolling config change: r1 runs sink-a and
// sink-b, r2 only sink-a, on one database. r2 finds sink-b's deliveries pending at start, and
// while r1 restarts no replica runs sink-b; r2 must leave them (a live replica ran sink-b within
// storage.postgres.sink_grace) instead of dead-lettering them as not configured, and r1
// delivers them when it is back. Nothing is dead-lettered, every change reaches its sinks.
func TestPostgres_ReplicasWithDifferentSinks(t *testing.T) {
	pgURL := pgtest.URL(t)
	schema := pgtest.Schema(t, pgURL)
	a := newCrashSink(t, "sink-a")
	b, holdB := newRefusingSink(t, "sink-b", http.StatusServiceUnavailable) // its deliveries stay pending
	dir := t.TempDir()
	cfg1 := writePGConfig(t, filepath.Join(dir, "r1"), freeAddr(t), pgURL, schema, a.srv.URL, b.srv.URL)
	cfg2 := writePGConfig(t, filepath.Join(dir, "r2"), freeAddr(t), pgURL, schema, a.srv.URL, "")
	r1 := startPGRelay(t, cfg1)
	postAll := func(r *relayUnderTest, from, n int) (ids []string) {
		for i := from; i < from+n; i++ {
			note := crashLoadItem(t, i, 1+i%3, "rolling")
			if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", note); err != nil || st != http.StatusOK {
				t.Fatalf("POST %d: %d, %v", i, st, err)
			}
			ids = append(ids, note.ids...)
		}
		return ids
	}
	toBoth := postAll(r1, 0, 20)
	waitForWithin(t, "sink-a deliveries from r1", time.Minute, func() bool { return len(a.missing(toBoth)) == 0 })
	r2 := startPGRelay(t, cfg2)
	waitForWithin(t, "r2 finding sink-b's deliveries", time.Minute, func() bool {
		return strings.Contains(r2.logs.String(), "deliveries pending for a sink not in the config")
	})
	// r1 restarts: meanwhile no replica runs sink-b, and r2 polls its queue every 100ms.
	r1.stop(t)
	toA := postAll(r2, 20, 20)
	time.Sleep(2 * time.Second)
	if n := pgCount(t, pgURL, schema, "dead_letters"); n != 0 {
		t.Fatalf("r2 dead-lettered %d of sink-b's deliveries while r1 restarted\nr2 logs:\n%s", n, r2.logs)
	}
	r1 = startPGRelay(t, cfg1)
	holdB.Store(false)
	waitForWithin(t, "sink-b deliveries once r1 is back", time.Minute, func() bool { return len(b.missing(toBoth)) == 0 })
	waitForWithin(t, "sink-a deliveries", time.Minute, func() bool { return len(a.missing(append(toBoth, toA...))) == 0 })
	if n := pgCount(t, pgURL, schema, "dead_letters"); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
	for _, r := range []*relayUnderTest{r1, r2} {
		if strings.Contains(r.logs.String(), "is not configured") {
			t.Errorf("a delivery was refused as not configured:\n%s", r.logs)
		}
	}
}
