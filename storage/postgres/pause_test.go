package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// orderSink records the change ids it took, in order.
type orderSink struct {
	mu  sync.Mutex
	got []string
}

func (s *orderSink) Name() string { return "orders" }

func (s *orderSink) Deliver(_ context.Context, ev *relay.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, ev.ID)
	return nil
}

func (s *orderSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

type noLetters struct{ t *testing.T }

func (n noLetters) Write(l *deadletter.Letter) error {
	n.t.Errorf("dead letter for %s: %s", l.ChangeID, l.Reason)
	return nil
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReplicas_Pause: a pause made through one replica's engine reaches the other replica
// within its poll interval; while paused neither delivers, and both keep accepting; the pause
// survives a restart of both; a resume through the other replica delivers the backlog in
// order.
func TestReplicas_Pause(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	const poll = 200 * time.Millisecond
	sink := &orderSink{}
	type replica struct {
		st *postgres.Store
		e  *relay.Engine
	}
	start := func() (a, b replica) {
		for _, r := range []*replica{&a, &b} {
			r.st = open(t, url, schema, postgres.Options{PollInterval: poll})
			r.e = relay.NewEngine(r.st, noLetters{t}, nil, slog.New(slog.DiscardHandler))
			r.e.Start()
			if err := r.e.SetSinks([]relay.SinkConfig{{Sink: sink, Concurrency: 1, Retry: relay.RetryPolicy{MaxAttempts: 3}}}); err != nil {
				t.Fatal(err)
			}
		}
		return a, b
	}
	stop := func(rs ...replica) {
		for _, r := range rs {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			r.e.Close(ctx)
			cancel()
			r.st.Close()
		}
	}
	n := 0
	accept := func(s *postgres.Store, k int) []string {
		var ids []string
		var items []relay.Item
		for range k {
			n++
			ev := relay.Event{ID: fmt.Sprintf("c%03d", n), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, ReceivedAt: time.Now()}
			ids = append(ids, ev.ID)
			items = append(items, relay.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"orders"}})
		}
		if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatal(err)
		}
		return ids
	}

	a, b := start()
	ids := accept(a.st, 5)
	waitUntil(t, "the first changes delivered", func() bool { return len(sink.received()) == 5 })
	if _, changed, err := a.e.SetPaused("orders", true, "test on replica a"); err != nil || !changed {
		t.Fatalf("pause: changed %v, %v", changed, err)
	}
	paused := time.Now()
	waitUntil(t, "replica b sees the pause", func() bool { return b.e.Paused()["orders"] })
	t.Logf("replica b saw the pause %s after it was made (poll interval %s)", time.Since(paused).Round(time.Millisecond), poll)
	held := accept(b.st, 10)
	held = append(held, accept(a.st, 10)...)
	time.Sleep(3 * poll) // a poll of each replica's queue would find them
	if got := sink.received(); len(got) != 5 {
		t.Fatalf("paused sink received %d changes, want the 5 from before the pause", len(got))
	}

	stop(a, b)
	a, b = start()
	if !a.e.Paused()["orders"] || !b.e.Paused()["orders"] {
		t.Fatal("not paused after a restart of both replicas")
	}
	time.Sleep(3 * poll)
	if got := sink.received(); len(got) != 5 {
		t.Fatalf("paused sink received %d changes after a restart", len(got))
	}
	if _, changed, err := b.e.SetPaused("orders", false, "test on replica b"); err != nil || !changed {
		t.Fatalf("resume: changed %v, %v", changed, err)
	}
	want := append(ids, held...)
	waitUntil(t, "the backlog delivered", func() bool { return len(sink.received()) == len(want) })
	if got := sink.received(); !slices.Equal(got, want) {
		t.Fatalf("delivered out of order:\n got %v\nwant %v", got, want)
	}
	stop(a, b)
}
