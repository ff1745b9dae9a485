package storetest

import (
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// setPaused calls SetPaused and checks what it reports.
func setPaused(t *testing.T, s relay.SinkControls, sink string, paused bool, at time.Time, by string, wantChanged bool) relay.SinkState {
	t.Helper()
	st, changed, err := s.SetPaused(sink, paused, at, by)
	if err != nil {
		t.Fatalf("SetPaused(%q, %v): %v", sink, paused, err)
	}
	if changed != wantChanged {
		t.Fatalf("SetPaused(%q, %v): changed = %v, want %v", sink, paused, changed, wantChanged)
	}
	if st.Sink != sink || st.Paused != paused {
		t.Fatalf("SetPaused(%q, %v) = %+v", sink, paused, st)
	}
	return st
}

func states(t *testing.T, s relay.SinkControls) map[string]relay.SinkState {
	t.Helper()
	m, err := s.SinkStates()
	if err != nil {
		t.Fatalf("SinkStates: %v", err)
	}
	return m
}

// wantState checks that got is want, times compared with Equal.
func wantState(t *testing.T, what string, got, want relay.SinkState) {
	t.Helper()
	if got.Sink != want.Sink || got.Paused != want.Paused || !got.Since.Equal(want.Since) || got.By != want.By {
		t.Fatalf("%s: state = %+v, want %+v", what, got, want)
	}
}

// testPause: pausing records who and when, a second pause changes nothing, a resume records
// its own time, resuming a sink never paused is no change; the queue itself is untouched
// (the engine, not storage, holds deliveries back).
func testPause(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	if m := states(t, s); len(m) != 0 {
		t.Fatalf("SinkStates of new storage = %v, want none", m)
	}
	st := setPaused(t, s, "other", false, t0, "nobody", false)
	if !st.Since.IsZero() {
		t.Fatalf("resume of a sink never paused: since = %v, want zero", st.Since)
	}
	if m := states(t, s); len(m) != 0 {
		t.Fatalf("SinkStates after resuming a sink never paused = %v, want none", m)
	}
	at := t0.Add(1500 * time.Microsecond)
	want := relay.SinkState{Sink: "orders", Paused: true, Since: at, By: "cli: alice@ops1"}
	wantState(t, "pause", setPaused(t, s, "orders", true, at, "cli: alice@ops1", true), want)
	wantState(t, "second pause", setPaused(t, s, "orders", true, at.Add(time.Minute), "cli: bob@ops2", false), want)
	m := states(t, s)
	if len(m) != 1 {
		t.Fatalf("SinkStates = %v, want orders only", m)
	}
	wantState(t, "SinkStates", m["orders"], want)

	accept(t, s, t0, item("a", "A", "orders", "archive"))
	wantDatas(t, "ready of a paused sink", ready(t, s, "orders", 0, 10), "A")

	res := at.Add(time.Hour)
	want = relay.SinkState{Sink: "orders", Since: res, By: "api: carol from 127.0.0.1:4000"}
	wantState(t, "resume", setPaused(t, s, "orders", false, res, want.By, true), want)
	wantState(t, "second resume", setPaused(t, s, "orders", false, res.Add(time.Hour), "x", false), want)
	wantState(t, "SinkStates after resume", states(t, s)["orders"], want)
	setPaused(t, s, "archive", true, res, "y", true)
	if m := states(t, s); len(m) != 2 || !m["archive"].Paused || m["orders"].Paused {
		t.Fatalf("SinkStates = %v, want archive paused and orders resumed", m)
	}
}

// testPauseReopen: the state survives a restart.
func testPauseReopen(t *testing.T, newStore NewFunc) {
	openIt := newStore(t, Options{DedupWindow: window})
	s := openIt()
	at := t0.Add(time.Minute)
	setPaused(t, s, "orders", true, at, "cli: alice", true)
	setPaused(t, s, "archive", true, at, "cli: alice", true)
	setPaused(t, s, "archive", false, at.Add(time.Second), "cli: bob", true)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openIt()
	defer s.Close()
	m := states(t, s)
	wantState(t, "orders after reopening", m["orders"], relay.SinkState{Sink: "orders", Paused: true, Since: at, By: "cli: alice"})
	wantState(t, "archive after reopening", m["archive"], relay.SinkState{Sink: "archive", Since: at.Add(time.Second), By: "cli: bob"})
}

// testPauseConcurrent: of concurrent pauses of one sink exactly one changes it.
func testPauseConcurrent(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	const n = 8
	var wg sync.WaitGroup
	changed := make(chan bool, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := s.SetPaused("orders", true, t0.Add(time.Duration(i)*time.Second), "racer")
			if err != nil {
				t.Errorf("SetPaused: %v", err)
			}
			changed <- c
		}()
	}
	wg.Wait()
	close(changed)
	k := 0
	for c := range changed {
		if c {
			k++
		}
	}
	if k != 1 {
		t.Fatalf("%d of %d concurrent pauses changed the state, want 1", k, n)
	}
}
