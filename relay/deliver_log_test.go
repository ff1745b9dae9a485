package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// jsonLog collects JSON log lines.
type jsonLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *jsonLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// tally returns, for the lines whose msg is msg, how many there are and how many events they
// account for (each line plus its suppressed count).
func (l *jsonLog) tally(t *testing.T, msg string) (lines, events int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(l.buf.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if rec["msg"] != msg {
			continue
		}
		lines++
		events++
		if n, ok := rec[relay.SuppressedKey].(float64); ok {
			events += int(n)
		}
	}
	return lines, events
}

// count returns how many lines contain every one of subs.
func (l *jsonLog) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range strings.Split(l.buf.String(), "\n") {
		for _, sub := range subs {
			if !strings.Contains(line, sub) {
				continue next
			}
		}
		n++
	}
	return n
}

// failingQueue is a store whose Done fails every call, as under a full disk.
type failingQueue struct {
	relay.Queue
	dones atomic.Int64
}

func (q *failingQueue) Done(string, ...uint64) error {
	q.dones.Add(1)
	return errors.New("commit spool: no space left on device")
}

// failingDL is a dead-letter directory that cannot write a letter.
type failingDL struct{ writes atomic.Int64 }

func (d *failingDL) Write(*deadletter.Letter) error {
	d.writes.Add(1)
	return errors.New("write dead letter: no space left on device")
}

// loggedEngine is an engine over a new spool in dir whose failure lines go through a sampler
// whose interval never ends during the test (its clock stands still): each kind of line is
// written once, and Close writes the count of the rest.
func loggedEngine(t *testing.T, q func(relay.Queue) relay.Queue, dl relay.DeadLetters) (*relay.Engine, *spool.Spool, *jsonLog) {
	t.Helper()
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	logs := &jsonLog{}
	e := relay.NewEngine(q(embedded.New(sp)), dl, nil, slog.New(slog.NewJSONHandler(logs, nil)))
	now := time.Unix(1_800_000_000, 0)
	relay.SetFailureLog(e, relay.NewLogSamplerClock(time.Hour, func() time.Time { return now }))
	e.Start()
	return e, sp, logs
}

// statuses is a script of n answers with status.
func statuses(n, status int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = status
	}
	return s
}

func closeEngine(t *testing.T, e *relay.Engine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestEngine_MassDeadLetterLogSampled: a sink gone permanently 4xx for many changes
// dead-letters every one of them, but the log gets one line per kind per interval (plus the
// count written at Close), and those lines account for every change.
func TestEngine_MassDeadLetterLogSampled(t *testing.T) {
	const n = 1000
	script := statuses(2*n, http.StatusBadRequest)
	for i := 1; i < len(script); i += 2 {
		script[i] = http.StatusNotFound // another reason: it gets its own lines
	}
	ep := newEndpoint(t, script...)
	dir := t.TempDir()
	dl, err := deadletter.Open(filepath.Join(dir, "dead-letter"))
	if err != nil {
		t.Fatal(err)
	}
	e, sp, logs := loggedEngine(t, func(q relay.Queue) relay.Queue { return q }, dl)
	h := &harness{t: t, dir: dir, spool: sp, dl: dl, engine: e}
	e.SetSinks([]relay.SinkConfig{h.httpSink("orders", ep.srv.URL, 0, fastRetry(3))})
	h.accept(n, "orders")
	waitUntil(t, "every change dead-lettered", func() bool { return pending(t, sp) == 0 })
	closeEngine(t, e)
	h.engine = nil
	if letters, _ := dl.List(deadletter.Filter{}); len(letters) != n {
		t.Fatalf("%d dead letters, want %d", len(letters), n)
	}
	for _, msg := range []string{"delivery rejected permanently", "delivery dead-lettered"} {
		lines, events := logs.tally(t, msg)
		// Per kind (sink orders, reason "permanent", status 400 or 404): its first line, and
		// the count of the others at Close.
		if lines > 4 || events != n {
			t.Errorf("%q: %d lines accounting for %d changes, want at most 4 for all %d", msg, lines, events, n)
		}
	}
	for _, status := range []string{`"status":400`, `"status":404`} {
		if logs.count("delivery rejected permanently", status) == 0 {
			t.Errorf("no line for the changes rejected with %s:\n%s", status, logs.buf.String())
		}
	}
}

// TestEngine_StorageFailureLogSampled: a store whose Done fails every call and a dead-letter
// directory that cannot write keep the engine retrying for many operations; each failure
// line is written once for the (frozen) interval and the lines count every failure.
func TestEngine_StorageFailureLogSampled(t *testing.T) {
	ok := newEndpoint(t)
	bad := newEndpoint(t, statuses(1<<20, http.StatusBadRequest)...)
	fq := &failingQueue{}
	fdl := &failingDL{}
	e, sp, logs := loggedEngine(t, func(q relay.Queue) relay.Queue { fq.Queue = q; return fq }, fdl)
	h := &harness{t: t, spool: sp, engine: e}
	pol := fastRetry(3)
	e.SetSinks([]relay.SinkConfig{h.httpSink("ok", ok.srv.URL, 0, pol), h.httpSink("bad", bad.srv.URL, 0, pol)})
	h.accept(20, "ok", "bad")
	waitUntil(t, "many failed commits and letters", func() bool { return fq.dones.Load() >= 300 && fdl.writes.Load() >= 100 })
	closeEngine(t, e)
	h.engine = nil
	for _, c := range []struct {
		msg  string
		want int64
	}{
		{"remove delivered changes from spool", fq.dones.Load()},
		{"write dead letter, will retry the delivery", fdl.writes.Load()},
	} {
		lines, events := logs.tally(t, c.msg)
		if lines > 2 || int64(events) != c.want {
			t.Errorf("%q: %d lines accounting for %d failures, want at most 2 for all %d", c.msg, lines, events, c.want)
		}
	}
}
