package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// The order tests run the hubrelay binary with an order_by: conversation sink against a
// receiver that answers with random latency and fails a fifth of its requests, and check
// that each conversation's changes arrive one at a time and in the order they were posted.

// orderPos is where a change stands in its conversation.
type orderPos struct {
	conv, n int
}

// orderReceiver is the sink's endpoint: it records, per conversation, the position of every
// change it accepted, in arrival order, and notes two changes of one conversation in flight
// at once.
type orderReceiver struct {
	srv  *httptest.Server
	pos  map[string]orderPos // change id -> position, filled before the load starts
	fail atomic.Bool         // fail a fifth of the requests

	mu        sync.Mutex
	got       map[int][]int // conversation -> positions received, in order
	busy      map[int]bool
	delivered map[string]bool
	overlaps  []string
	requests  int
}

func newOrderReceiver(t *testing.T, pos map[string]orderPos) *orderReceiver {
	r := &orderReceiver{pos: pos, got: map[int][]int{}, busy: map[int]bool{}, delivered: map[string]bool{}}
	r.fail.Store(true)
	r.srv = httptest.NewServer(http.HandlerFunc(r.serveHTTP))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *orderReceiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var env struct {
		ID string `json:"id"`
	}
	json.Unmarshal(body, &env)
	p, known := r.pos[env.ID]
	r.mu.Lock()
	r.requests++
	if known && r.busy[p.conv] {
		r.overlaps = append(r.overlaps, fmt.Sprintf("conversation %d: change %d arrived while another was in flight", p.conv, p.n))
	}
	if known {
		r.busy[p.conv] = true
	}
	r.mu.Unlock()
	time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	if known {
		r.busy[p.conv] = false
	}
	if r.fail.Load() && rand.IntN(5) == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if known {
		r.got[p.conv] = append(r.got[p.conv], p.n)
		r.delivered[env.ID] = true
	}
	w.WriteHeader(http.StatusOK)
}

func (r *orderReceiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.delivered)
}

// check reports every conversation whose changes arrived out of order: a change older than
// one delivered before it. A repeat of the change delivered just before (at least once: a
// crash between a delivery and its removal from the spool) is allowed when repeats is set.
func (r *orderReceiver) check(t *testing.T, repeats bool) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.overlaps {
		t.Error(o)
	}
	bad := 0
	for conv, got := range r.got {
		for i := 1; i < len(got); i++ {
			ok := got[i] == got[i-1]+1 || repeats && got[i] == got[i-1]
			if !ok && bad < 10 {
				t.Errorf("conversation %d: change %d arrived after change %d (%v)", conv, got[i], got[i-1], got)
			}
			if !ok {
				bad++
			}
		}
		if len(got) > 0 && got[0] != 0 {
			t.Errorf("conversation %d: first delivery is change %d", conv, got[0])
		}
	}
	if bad > 0 {
		t.Errorf("%d deliveries out of order", bad)
	}
}

// orderLoad is the notifications of conv conversations of n text messages each, one change
// per POST, with the position of every change.
func orderLoad(t *testing.T, tag string, convs, n int) ([][]crashNotification, map[string]orderPos) {
	t.Helper()
	load := make([][]crashNotification, convs)
	pos := map[string]orderPos{}
	for c := range convs {
		for i := range n {
			body := []byte(fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"C %d"},"wa_id":"1650555%04d"}],"messages":[{"from":"1650555%04d","id":"wamid.%s.%d.%d","timestamp":"%d","type":"text","text":{"body":"message %d"}}]},"field":"messages"}]}]}`,
				c, c, c, tag, c, i, 1750000000+i, i))
			load[c] = append(load[c], signedNotification(t, body))
			pos[load[c][i].ids[0]] = orderPos{conv: c, n: i}
		}
	}
	return load, pos
}

// signedNotification signs body with the test app's secret and lists its change ids.
func signedNotification(t *testing.T, body []byte) crashNotification {
	t.Helper()
	evs, err := relay.Decode(body, crashApp, time.Now(), relay.Limits{})
	if err != nil || len(evs) == 0 {
		t.Fatalf("test bug: %s decodes to %d changes: %v", body, len(evs), err)
	}
	n := crashNotification{body: body, sig: relay.Sign(body, crashSecret)}
	for i := range evs {
		n.ids = append(n.ids, relay.Key(&evs[i]))
	}
	return n
}

func writeOrderConfig(t *testing.T, dir, addr, url string, ordered bool) string {
	t.Helper()
	data := filepath.Join(dir, "data")
	orderBy := ""
	if ordered {
		orderBy = "    order_by: conversation\n"
	}
	cfg := fmt.Sprintf(`server:
  listen: %s
  shutdown_timeout: 10s
apps:
  - name: %s
    verify_token: order-verify
    app_secrets: [${%s}]
storage:
  dir: %s
sinks:
  - name: bot
    type: http
    url: %s
    timeout: 5s
    concurrency: 8
%s    retry: {max_attempts: 30, min_backoff: 5ms, max_backoff: 50ms, in_process: 0}
rules:
  - name: whatsapp
    object: whatsapp_business_account
    field: messages
    sinks: [bot]
`, addr, crashApp, crashSecretEnv, data, url, orderBy)
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// orderRun posts load, each conversation's notifications in order (the next one once the
// last is acknowledged), all conversations at once, to a relay started on dir, and waits
// until every change is delivered. With kill set it SIGKILLs the relay once a third of the
// changes are delivered and starts it again on the same spool. It returns the time from the
// first POST to the last delivery.
func orderRun(t *testing.T, bin, dir string, load [][]crashNotification, recv *orderReceiver, ordered, kill bool) time.Duration {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "hubrelay.log")
	t.Cleanup(func() {
		if t.Failed() {
			dumpRelayLog(t, logPath)
		}
	})
	cfgPath := writeOrderConfig(t, dir, freeAddr(t), recv.srv.URL, ordered)
	proc := startCrashProcess(t, bin, cfgPath, logPath, 1)
	hook := proc.url + "/webhooks"
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: len(load)}}
	defer client.CloseIdleConnections()
	var transport, unavail atomic.Int64
	total := 0
	for _, c := range load {
		total += len(c)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(load))
	for _, conv := range load {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, n := range conv {
				st, err := postUntilAnswered(ctx, client, hook, n, &transport, &unavail)
				if err == nil && st != http.StatusOK {
					err = fmt.Errorf("status %d", st)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	if kill {
		waitCrash(t, proc, "a third delivered", 60*time.Second, func() bool { return recv.count() >= total/3 })
		if err := proc.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-proc.done
		t.Logf("killed with %d of %d delivered", recv.count(), total)
		proc = startCrashProcess(t, bin, cfgPath, logPath, 2)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("post: %v", err)
	}
	waitCrash(t, proc, "every change delivered", 120*time.Second, func() bool { return recv.count() == total })
	took := time.Since(start)
	if err := proc.cmd.Process.Signal(syscall.SIGTERM); err == nil {
		<-proc.done
	}
	return took
}

// TestOrder_Conversations: 50 conversations × 40 messages, posted in order per conversation
// and concurrently across conversations, to a sink with order_by: conversation and
// concurrency 8 whose receiver fails a fifth of its requests: every conversation arrives in
// order and whole. The same load without order_by, in the same run, gives the throughput to
// compare with.
func TestOrder_Conversations(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the hubrelay binary")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGTERM")
	}
	dir := t.TempDir()
	bin, race := buildRelay(t, dir)
	const convs, perConv = 50, 40
	load, pos := orderLoad(t, "conv", convs, perConv)
	total := float64(convs * perConv)

	off := newOrderReceiver(t, pos)
	tookOff := orderRun(t, bin, filepath.Join(dir, "off"), load, off, false, false)
	on := newOrderReceiver(t, pos)
	tookOn := orderRun(t, bin, filepath.Join(dir, "on"), load, on, true, false)
	on.check(t, false)
	t.Logf("%d conversations × %d messages, concurrency 8, 20%% of requests failing (race detector: %v): "+
		"order_by off %.0f changes/s (%s), on %.0f changes/s (%s): on/off %.2f",
		convs, perConv, race, total/tookOff.Seconds(), tookOff.Round(time.Millisecond),
		total/tookOn.Seconds(), tookOn.Round(time.Millisecond), tookOff.Seconds()/tookOn.Seconds())
}

// TestOrder_KillDuringLoad: the same load with a SIGKILL of the relay a third of the way and a
// restart on the same spool: each conversation still arrives in order, a repeat of the change
// delivered last before the crash aside, and whole.
func TestOrder_KillDuringLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the hubrelay binary")
	}
	if runtime.GOOS == "windows" {
		t.Skip("needs SIGKILL")
	}
	dir := t.TempDir()
	bin, _ := buildRelay(t, dir)
	load, pos := orderLoad(t, "kill", 50, 40)
	recv := newOrderReceiver(t, pos)
	orderRun(t, bin, filepath.Join(dir, "run"), load, recv, true, true)
	recv.check(t, true)
}

// TestOrder_WhatsAppStatuses: the sent, delivered and read statuses of each message, posted
// in that order, arrive in that order, through a receiver failing a fifth of its requests.
func TestOrder_WhatsAppStatuses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the hubrelay binary")
	}
	dir := t.TempDir()
	bin, _ := buildRelay(t, dir)
	statuses := []string{"sent", "delivered", "read"}
	const customers, messages = 10, 5
	load := make([][]crashNotification, customers)
	pos := map[string]orderPos{}
	for c := range customers {
		for m := range messages {
			for i, st := range statuses {
				body := []byte(fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.out.%d.%d","status":"%s","timestamp":"%d","recipient_id":"1650555%04d"}]},"field":"messages"}]}]}`,
					c, m, st, 1750030141+i, c))
				n := signedNotification(t, body)
				pos[n.ids[0]] = orderPos{conv: c, n: m*len(statuses) + i}
				load[c] = append(load[c], n)
			}
		}
	}
	recv := newOrderReceiver(t, pos)
	orderRun(t, bin, filepath.Join(dir, "run"), load, recv, true, false)
	recv.check(t, false)
	recv.mu.Lock()
	defer recv.mu.Unlock()
	if !strings.Contains(fmt.Sprint(recv.got[0]), "0 1 2") {
		t.Errorf("customer 0's statuses arrived as %v", recv.got[0])
	}
}
