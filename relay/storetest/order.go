package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// testScheduled: Scheduled lists a sink's parked deliveries in Seq order from after, up to
// max, whatever their due time, and nothing ready, promoted or done.
func testScheduled(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "s", "other"), item("b", "B", "s"), item("c", "C", "s"), item("d", "D", "s"))
	ds := ready(t, s, "s", 0, 10)
	if len(ds) != 4 {
		t.Fatalf("Ready: %d deliveries, want 4", len(ds))
	}
	far, near := t0.Add(time.Hour), t0.Add(-time.Minute)
	if err := s.Reschedule("s", ds[2].Seq, far, 1, []byte("h")); err != nil {
		t.Fatal(err)
	}
	if err := s.Reschedule("s", ds[0].Seq, far.Add(time.Hour), 2, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Reschedule("s", ds[3].Seq, near, 1, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Scheduled("s", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Seq != ds[0].Seq || got[1].Seq != ds[2].Seq || got[2].Seq != ds[3].Seq {
		t.Fatalf("Scheduled = %v, want seqs %d %d %d", seqsOf(got), ds[0].Seq, ds[2].Seq, ds[3].Seq)
	}
	if string(got[1].Data) != "C" || got[1].Attempt != 1 || string(got[1].History) != "h" || got[1].Sink != "s" {
		t.Fatalf("Scheduled[1] = %+v, want data C, attempt 1, history h", got[1])
	}
	if got, _ := s.Scheduled("s", ds[0].Seq, 1); len(got) != 1 || got[0].Seq != ds[2].Seq {
		t.Fatalf("Scheduled(after %d, max 1) = %v, want [%d]", ds[0].Seq, seqsOf(got), ds[2].Seq)
	}
	if got, _ := s.Scheduled("other", 0, 10); len(got) != 0 {
		t.Fatalf("Scheduled(other) = %v, want none", seqsOf(got))
	}
	if _, err := s.Promote(t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("s", ds[2].Seq); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Scheduled("s", 0, 10); len(got) != 1 || got[0].Seq != ds[0].Seq {
		t.Fatalf("after a promotion and a done, Scheduled = %v, want [%d]", seqsOf(got), ds[0].Seq)
	}
}

// testDoneSync: DoneSync removes deliveries, ready or scheduled, as Done does, and what it
// removed stays removed after a reopen.
func testDoneSync(t *testing.T, newStore NewFunc) {
	opener := newStore(t, Options{DedupWindow: window})
	s := opener()
	accept(t, s, time.Now(), item("a", "A", "s"), item("b", "B", "s"), item("c", "C", "s"))
	ds := ready(t, s, "s", 0, 10)
	if len(ds) != 3 {
		t.Fatalf("Ready: %d deliveries, want 3", len(ds))
	}
	if err := s.Reschedule("s", ds[1].Seq, t0.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.DoneSync("s", ds[0].Seq, ds[1].Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.DoneSync("s", ds[0].Seq); err != nil {
		t.Fatalf("DoneSync again: %v", err)
	}
	if err := s.DoneSync("s"); err != nil {
		t.Fatalf("DoneSync of nothing: %v", err)
	}
	s.Close()
	s = opener()
	defer s.Close()
	if got := ready(t, s, "s", 0, 10); len(got) != 1 || got[0].Seq != ds[2].Seq {
		t.Fatalf("after a reopen, Ready = %v, want [%d]", seqsOf(got), ds[2].Seq)
	}
	if got, err := s.Scheduled("s", 0, 10); err != nil || len(got) != 0 {
		t.Fatalf("after a reopen, Scheduled = %v, %v; want none", seqsOf(got), err)
	}
}

func seqsOf(ds []relay.Delivery) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

// orderSink receives changes "k<key>-<n>" keyed "<key>", with random latency, failing a fifth
// of the attempts, and checks that a key never has two deliveries in flight and that each
// key's changes arrive in order (a repeat of the last one delivered is allowed: at least
// once).
type orderSink struct {
	name string
	mu   sync.Mutex
	busy map[string]bool
	last map[string]int
	down bool // every attempt fails
	bad  []string
}

func (s *orderSink) Name() string { return s.name }

func (s *orderSink) Deliver(ctx context.Context, ev *relay.Event) error {
	key, n, _ := strings.Cut(strings.TrimPrefix(ev.ID, "k"), "-")
	i, _ := strconv.Atoi(n)
	s.mu.Lock()
	if s.busy[key] {
		s.bad = append(s.bad, fmt.Sprintf("%s: a second delivery of key %s in flight", ev.ID, key))
	}
	s.busy[key] = true
	s.mu.Unlock()
	select {
	case <-time.After(time.Duration(rand.IntN(2000)) * time.Microsecond):
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.busy[key] = false
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if s.down || rand.IntN(5) == 0 {
		return &relay.StatusError{Status: 503, Msg: "status 503"}
	}
	last, seen := s.last[key]
	if seen && i < last || !seen && i != 0 || seen && i > last+1 {
		s.bad = append(s.bad, fmt.Sprintf("key %s: change %d after %d (seen %v)", key, i, last, seen))
	}
	s.last[key] = max(last, i)
	return nil
}

func (s *orderSink) done(keys, perKey int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.last) < keys {
		return false
	}
	for _, v := range s.last {
		if v != perKey-1 {
			return false
		}
	}
	return true
}

func scheduled(t *testing.T, s relay.Store, sink string) int {
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st[sink].Scheduled
}

type nopLetters struct{}

func (nopLetters) Write(*deadletter.Letter) error { return nil }

// testOrder: the delivery engine over this store delivers an order_by sink's changes of each
// key one at a time and in acceptance order, across a failing sink's retries and a restart of
// the engine and the store, while keys share the sink's concurrency.
func testOrder(t *testing.T, newStore NewFunc) {
	opener := newStore(t, Options{DedupWindow: window})
	const keys, perKey, sink = 12, 15, "ordered"
	st := &orderSink{name: sink, busy: map[string]bool{}, last: map[string]int{}}
	cfg := relay.SinkConfig{Sink: st, Concurrency: 8,
		Retry: relay.RetryPolicy{MinBackoff: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}}
	start := func() (Engine, *relay.Engine) {
		s := opener()
		e := relay.NewEngine(s, nopLetters{}, nil, slog.New(slog.DiscardHandler))
		e.Start()
		if err := e.SetSinks([]relay.SinkConfig{cfg}); err != nil {
			t.Fatal(err)
		}
		return s, e
	}
	stop := func(s Engine, e *relay.Engine) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		e.Close(ctx)
		s.Close()
	}
	s, e := start()
	// Keys interleaved, several changes per Accept, in order per key.
	for n := range perKey {
		var items []relay.Item
		for k := range keys {
			ev := relay.Event{ID: fmt.Sprintf("k%d-%d", k, n), App: "a", Object: "page", Field: "feed",
				Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: t0,
				Order: []relay.OrderKey{{Sink: "elsewhere", Key: "x"}, {Sink: sink, Key: strconv.Itoa(k)}}}
			items = append(items, relay.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{sink}})
		}
		accept(t, s, time.Now(), items...)
		e.Notify([]string{sink})
		if n == perKey/2 {
			// A restart with retries pending: their keys' later changes must wait for them.
			st.mu.Lock()
			st.down = true
			st.mu.Unlock()
			deadline := time.Now().Add(30 * time.Second)
			for scheduled(t, s, sink) == 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			stop(s, e)
			st.mu.Lock()
			st.down = false
			st.mu.Unlock()
			s, e = start()
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for !st.done(keys, perKey) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stop(s, e)
	ok := st.done(keys, perKey)
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, b := range st.bad {
		t.Error(b)
	}
	if !ok {
		t.Fatalf("not every change delivered: last per key %v", st.last)
	}
}
