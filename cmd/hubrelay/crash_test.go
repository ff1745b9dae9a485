package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// The crash test checks DESIGN.md promises 1 and 2 against the real binary: every change
// acknowledged with 200 reaches every matching sink at least once (or is dead-lettered), across
// a kill -9 in the middle of a load; and a change accepted before the crash is still recognised
// as a repeat after it.

const (
	crashApp       = "shop"
	crashSecret    = "crash-app-secret-7c21"
	crashSecretEnv = "HUBRELAY_CRASH_APP_SECRET"
	crashPosters   = 16
	// crashShutdown is server.shutdown_timeout in the test config.
	crashShutdown = 10 * time.Second
)

// crashNotification is one signed POST of the load and the change ids it carries.
type crashNotification struct {
	body []byte
	sig  string
	ids  []string
}

// crashSink is an HTTP sink endpoint that records every delivery it gets: per change id, the
// received_at of each delivery (a redelivery from the spool repeats it, a second acceptance of
// the same change would not).
type crashSink struct {
	name string
	srv  *httptest.Server

	mu         sync.Mutex
	got        map[string][]string // change id -> received_at, one per delivery
	deliveries int
	problems   []string // bad bodies, Idempotency-Key not matching the id
}

func newCrashSink(t *testing.T, name string) *crashSink {
	s := &crashSink{name: name, got: map[string][]string{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *crashSink) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var env struct {
		ID         string `json:"id"`
		ReceivedAt string `json:"received_at"`
	}
	if err == nil {
		err = json.Unmarshal(body, &env)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.problems = append(s.problems, fmt.Sprintf("unreadable delivery: %v: %.200s", err, body))
	case env.ID == "":
		s.problems = append(s.problems, fmt.Sprintf("delivery without id: %.200s", body))
	case r.Header.Get("Idempotency-Key") != env.ID:
		s.problems = append(s.problems, fmt.Sprintf("Idempotency-Key %q, body id %q", r.Header.Get("Idempotency-Key"), env.ID))
	}
	if env.ID != "" {
		s.got[env.ID] = append(s.got[env.ID], env.ReceivedAt)
		s.deliveries++
	}
	w.WriteHeader(http.StatusOK)
}

// missing returns the ids of want this sink has not received yet.
func (s *crashSink) missing(want []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, id := range want {
		if len(s.got[id]) == 0 {
			out = append(out, id)
		}
	}
	return out
}

func (s *crashSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deliveries
}

// deliveriesOf returns the received_at of every delivery of id.
func (s *crashSink) deliveriesOf(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got[id])
}

// crashProcess is one run of the hubrelay binary.
type crashProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // cmd.Wait's result, once done is closed
	url  string
}

// TestCrash_KillDuringLoad kills the relay with SIGKILL while signed notifications pour in,
// restarts it on the same spool, and checks that every acknowledged change reaches both sinks,
// that nothing was dead-lettered, and that dedup survived the crash.
func TestCrash_KillDuringLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the hubrelay binary")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGTERM")
	}
	began := time.Now()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "hubrelay.log")
	t.Cleanup(func() {
		if t.Failed() {
			dumpRelayLog(t, logPath)
		}
	})
	bin, race := buildRelay(t, dir)
	t.Logf("built hubrelay (race detector: %v) in %s", race, time.Since(began).Round(time.Millisecond))
	total := 3000
	if race {
		total = 1000 // the race detector slows the relay several times over
	}

	sinkA, sinkB := newCrashSink(t, "sink-a"), newCrashSink(t, "sink-b")
	sinks := []*crashSink{sinkA, sinkB}
	cfgPath := writeCrashConfig(t, dir, freeAddr(t), sinkA.srv.URL, sinkB.srv.URL)
	dlDir := filepath.Join(dir, "data", "dead-letter")
	load := crashLoad(t, total)
	var changes int
	for _, n := range load {
		changes += len(n.ids)
	}

	run1 := startCrashProcess(t, bin, cfgPath, logPath, 1)
	hook := run1.url + "/webhooks"

	// Meta's side: 16 senders, each POST retried until it is acknowledged, as Meta retries a
	// notification that was not answered with 200.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: crashPosters, DisableCompression: true},
	}
	defer client.CloseIdleConnections()
	var (
		ackedN     atomic.Int64
		transport  atomic.Int64 // POSTs that got no answer (the relay was killed or down)
		unavail    atomic.Int64 // POSTs answered 503
		firstAcked atomic.Int64 // index of the first acknowledged notification, +1
		ackMu      sync.Mutex
		acked      = make([]bool, len(load))
		badStatus  []string
	)
	work := make(chan int)
	var posters sync.WaitGroup
	for range crashPosters {
		posters.Add(1)
		go func() {
			defer posters.Done()
			for i := range work {
				status, err := postUntilAnswered(ctx, client, hook, load[i], &transport, &unavail)
				ackMu.Lock()
				switch {
				case err != nil:
					badStatus = append(badStatus, fmt.Sprintf("notification %d: %v", i, err))
				case status != http.StatusOK:
					badStatus = append(badStatus, fmt.Sprintf("notification %d: status %d", i, status))
				default:
					acked[i] = true
					firstAcked.CompareAndSwap(0, int64(i)+1)
					ackMu.Unlock()
					ackedN.Add(1)
					continue
				}
				ackMu.Unlock()
			}
		}()
	}
	go func() {
		defer close(work)
		for i := range load {
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()

	// Kill -9 once about a third of the load is acknowledged.
	for ackedN.Load() < int64(total/3) {
		select {
		case <-run1.done:
			t.Fatalf("relay exited during the load: %v", run1.err)
		case <-ctx.Done():
			t.Fatalf("only %d of %d notifications acknowledged before the deadline", ackedN.Load(), total)
		case <-time.After(time.Millisecond):
		}
	}
	if err := run1.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill relay: %v", err)
	}
	<-run1.done
	killedAt := ackedN.Load()
	t.Logf("%s: killed after %d/%d notifications acknowledged; deliveries so far: %s %d, %s %d",
		time.Since(began).Round(time.Millisecond), killedAt, total, sinkA.name, sinkA.count(), sinkB.name, sinkB.count())

	run2 := startCrashProcess(t, bin, cfgPath, logPath, 2)
	if run2.url != run1.url {
		t.Fatalf("relay moved from %s to %s", run1.url, run2.url)
	}
	restartedAt := time.Now()
	posters.Wait()
	if ctx.Err() != nil {
		t.Fatalf("load did not finish: %d of %d notifications acknowledged", ackedN.Load(), total)
	}
	ackMu.Lock()
	var want []string
	for i, ok := range acked {
		if ok {
			want = append(want, load[i].ids...)
		}
	}
	for _, b := range badStatus[:min(len(badStatus), 20)] {
		t.Errorf("POST not acknowledged: %s", b)
	}
	ackMu.Unlock()
	t.Logf("%s: %d/%d notifications (%d/%d changes) acknowledged; %d POSTs got no answer (relay killed or restarting), %d got 503",
		time.Since(began).Round(time.Millisecond), ackedN.Load(), total, len(want), changes, transport.Load(), unavail.Load())

	// Every acknowledged change must reach both sinks.
	deadline := restartedAt.Add(60 * time.Second)
	for {
		if len(sinkA.missing(want)) == 0 && len(sinkB.missing(want)) == 0 {
			t.Logf("%s: deliveries caught up", time.Since(began).Round(time.Millisecond))
			break
		}
		select {
		case <-run2.done:
			t.Fatalf("restarted relay exited: %v", run2.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Logf("%s: gave up waiting for deliveries", time.Since(began).Round(time.Millisecond))
			break // reported below, after the shutdown and the dead-letter check
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Dedup survives the crash: the first change acknowledged (by the first run) sent again
	// is acknowledged and not accepted a second time. A marker posted after it flushes the
	// queue: deliveries are dispatched in acceptance order, and the shutdown below lets the
	// ones in flight finish, so a wrongly accepted repeat would have been delivered by then.
	again := load[firstAcked.Load()-1]
	if st, err := postOnce(client, run2.url+"/webhooks", again); err != nil || st != http.StatusOK {
		t.Errorf("repeat of an acknowledged notification: status %d, err %v; want 200", st, err)
	}
	marker := crashLoadItem(t, total+1, 1, "marker")
	if st, err := postOnce(client, run2.url+"/webhooks", marker); err != nil || st != http.StatusOK {
		t.Fatalf("marker: status %d, err %v; want 200", st, err)
	}
	waitCrash(t, run2, "marker delivery to both sinks", 30*time.Second, func() bool {
		return len(sinkA.missing(marker.ids)) == 0 && len(sinkB.missing(marker.ids)) == 0
	})

	// A clean stop: SIGTERM, exit 0 within the shutdown timeout.
	if err := run2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signal relay: %v", err)
	}
	select {
	case <-run2.done:
		if run2.err != nil {
			t.Errorf("relay exited with %v after SIGTERM, want exit 0", run2.err)
		}
	case <-time.After(crashShutdown + 10*time.Second):
		t.Errorf("relay did not exit within %s of SIGTERM (shutdown_timeout %s)", crashShutdown+10*time.Second, crashShutdown)
	}

	// Nothing dead-lettered: the sinks were healthy all along.
	letters, pending := readDeadLetters(t, dlDir)
	dead := map[string]bool{}
	for _, l := range slices.Concat(letters, pending) {
		dead[l.Sink+" "+l.ChangeID] = true
		if len(dead) <= 20 {
			t.Errorf("dead letter %s: sink %s, change %s: %s", l.ID, l.Sink, l.ChangeID, l.Reason)
		}
	}
	if len(dead) > 20 {
		t.Errorf("... %d dead letters in all", len(dead))
	}

	for _, s := range sinks {
		var lost []string
		for _, id := range s.missing(want) {
			if !dead[s.name+" "+id] {
				lost = append(lost, id)
			}
		}
		if len(lost) > 0 {
			t.Errorf("%s: %d of %d acknowledged changes never delivered nor dead-lettered (killed after %d acknowledged), first ones: %s",
				s.name, len(lost), len(want), killedAt, strings.Join(lost[:min(len(lost), 20)], " "))
		}
		s.mu.Lock()
		for _, p := range s.problems[:min(len(s.problems), 20)] {
			t.Errorf("%s: %s", s.name, p)
		}
		// Redeliveries (in flight at the kill) are allowed; a second acceptance is not.
		var extra, ids int
		var accepted2 []string
		for id, at := range s.got {
			if len(at) > 1 {
				extra += len(at) - 1
				ids++
			}
			if slices.ContainsFunc(at, func(a string) bool { return a != at[0] }) {
				accepted2 = append(accepted2, id)
			}
		}
		s.mu.Unlock()
		t.Logf("%s: %d deliveries, %d redeliveries of %d changes", s.name, s.count(), extra, ids)
		if len(accepted2) > 0 {
			slices.Sort(accepted2)
			t.Errorf("%s: %d changes accepted twice (deliveries with different received_at): %s",
				s.name, len(accepted2), strings.Join(accepted2[:min(len(accepted2), 20)], " "))
		}
		if got := s.deliveriesOf(again.ids[0]); len(got) == 0 {
			t.Errorf("%s: repeated change %s never delivered", s.name, again.ids[0])
		} else if slices.ContainsFunc(got, func(a string) bool { return a != got[0] }) {
			t.Errorf("%s: change %s acknowledged before the crash was accepted again after it (received_at %v)",
				s.name, again.ids[0], got)
		}
	}
}

// buildRelay builds the hubrelay binary into dir, with the race detector when this test
// binary has it (a race in the relay then makes it exit 66 instead of 0).
func buildRelay(t *testing.T, dir string) (bin string, race bool) {
	t.Helper()
	bin = filepath.Join(dir, "hubrelay")
	args := []string{"build", "-o", bin}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args, race = append(args, "-race"), true
			}
		}
	}
	cmd := exec.Command("go", append(args, "./")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, out)
	}
	return bin, race
}

func writeCrashConfig(t *testing.T, dir, addr, urlA, urlB string) string {
	t.Helper()
	data := filepath.Join(dir, "data")
	cfg := fmt.Sprintf(`server:
  listen: %s
  path: /webhooks
  shutdown_timeout: %s
apps:
  - name: %s
    verify_token: crash-verify
    app_secrets: [${%s}]
storage:
  dir: %s
dead_letter:
  dir: %s
sinks:
  - name: sink-a
    type: http
    url: %s
    timeout: 5s
    concurrency: 8
    retry: {min_backoff: 10ms, max_backoff: 200ms, in_process: 1}
  - name: sink-b
    type: http
    url: %s
    timeout: 5s
    concurrency: 8
    retry: {min_backoff: 10ms, max_backoff: 200ms, in_process: 1}
rules:
  - name: whatsapp-inbound
    object: whatsapp_business_account
    field: messages
    when: 'value.messages != nil'
    sinks: [sink-a, sink-b]
`, addr, crashShutdown, crashApp, crashSecretEnv, data, filepath.Join(data, "dead-letter"), urlA, urlB)
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// crashLoad returns n unique notifications; every tenth carries 2 to 5 changes.
func crashLoad(t *testing.T, n int) []crashNotification {
	t.Helper()
	out := make([]crashNotification, n)
	seen := map[string]bool{}
	for i := range out {
		k := 1
		if i%10 == 7 {
			k = 2 + i/10%4
		}
		out[i] = crashLoadItem(t, i, k, "load")
		for _, id := range out[i].ids {
			if seen[id] {
				t.Fatalf("test bug: change id %s generated twice", id)
			}
			seen[id] = true
		}
	}
	return out
}

// crashLoadItem returns a signed WhatsApp notification with k text messages, as k changes of
// one entry or k entries, and the change ids the relay gives them.
func crashLoadItem(t *testing.T, i, k int, tag string) crashNotification {
	t.Helper()
	changes := make([]string, k)
	for j := range changes {
		changes[j] = fmt.Sprintf(`{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Crash Test"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.%s.%06d.%d","timestamp":"%d","type":"text","text":{"body":"message %d of %d"}}]},"field":"messages"}`,
			tag, i, j, 1750000000+i, j+1, k)
	}
	var entries []string
	if i%2 == 0 {
		entries = []string{`{"id":"102290129340398","changes":[` + strings.Join(changes, ",") + `]}`}
	} else {
		for _, c := range changes {
			entries = append(entries, `{"id":"102290129340398","changes":[`+c+`]}`)
		}
	}
	body := []byte(`{"object":"whatsapp_business_account","entry":[` + strings.Join(entries, ",") + `]}`)
	evs, err := relay.Decode(body, crashApp, time.Now(), relay.Limits{})
	if err != nil || len(evs) != k {
		t.Fatalf("test bug: notification %d decodes to %d changes, err %v", i, len(evs), err)
	}
	n := crashNotification{body: body, sig: relay.Sign(body, crashSecret)}
	for j := range evs {
		n.ids = append(n.ids, relay.Key(&evs[j]))
	}
	return n
}

// postUntilAnswered posts n until the relay answers with something other than 503, retrying
// while it is down or cannot commit, as Meta does.
func postUntilAnswered(ctx context.Context, c *http.Client, url string, n crashNotification, transport, unavail *atomic.Int64) (int, error) {
	for {
		st, err := postOnce(c, url, n)
		switch {
		case err == nil && st != http.StatusServiceUnavailable:
			return st, nil
		case err != nil:
			transport.Add(1)
		default:
			unavail.Add(1)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no answer before the deadline: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func postOnce(c *http.Client, url string, n crashNotification) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(n.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", n.sig)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// startCrashProcess starts `hubrelay serve` with its output appended to logPath and waits for
// /healthz. The process is killed at cleanup if the test left it running.
func startCrashProcess(t *testing.T, bin, cfgPath, logPath string, run int) *crashProcess {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== hubrelay run %d ===\n", run)
	cmd := exec.Command(bin, "serve", "-config", cfgPath)
	cmd.Env = append(os.Environ(), crashSecretEnv+"="+crashSecret)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start relay: %v", err)
	}
	p := &crashProcess{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	p.url = "http://" + listenAddr(cfgPath)
	waitCrash(t, p, "/healthz", 20*time.Second, func() bool {
		resp, err := http.Get(p.url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// waitCrash polls cond until it holds, failing the test when p exits first or at the deadline.
func waitCrash(t *testing.T, p *crashProcess, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		select {
		case <-p.done:
			t.Fatalf("relay exited while waiting for %s: %v", what, p.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readDeadLetters returns the letters in dir and those queued for replay.
func readDeadLetters(t *testing.T, dir string) (letters, pending []*deadletter.Letter) {
	t.Helper()
	d, err := deadletter.Open(dir)
	if err != nil {
		t.Fatalf("open dead-letter dir: %v", err)
	}
	letters, err = d.List(deadletter.Filter{})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("list dead letters: %v", err)
	}
	pending, err = d.Pending()
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Errorf("list dead letters queued for replay: %v", err)
	}
	return letters, pending
}

// dumpRelayLog prints the relay's warnings, errors and anything that is not a JSON log line
// (a panic), then the last lines of the log.
func dumpRelayLog(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Logf("relay log: %v", err)
		return
	}
	defer f.Close()
	var notable, tail []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") || strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			if len(notable) < 60 {
				notable = append(notable, line)
			}
		}
		tail = append(tail, line)
		if len(tail) > 40 {
			tail = tail[1:]
		}
	}
	t.Logf("relay log %s, notable lines (first 60):\n%s", path, strings.Join(notable, "\n"))
	t.Logf("relay log, last %d lines:\n%s", len(tail), strings.Join(tail, "\n"))
}
