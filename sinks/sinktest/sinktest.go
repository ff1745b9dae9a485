// Package sinktest is the conformance suite of relay's sink contract (relay/sink.go). Every
// sink package runs it from its own tests against a real destination (a loopback HTTP server,
// a file in a temporary directory), as relay/storetest does for storage engines:
//
//	func TestConformance(t *testing.T) {
//		sinktest.Run(t, func(t *testing.T) *sinktest.Target {
//			ep := sinktest.NewEndpoint(t, sinktest.EnvelopeIDs)
//			s, err := New(Options{Name: "orders", URL: ep.URL})
//			...
//			return ep.Target(s)
//		})
//	}
//
// It checks what the delivery engine relies on: Deliver honours its context (a cancelled
// attempt is neither success nor permanent), a refusal that retrying cannot cure wraps
// relay.ErrPermanent and one it may cure does not, sinks that speak HTTP return a
// *relay.StatusError with the status, a batch is delivered as a unit and in order, and a
// relay.SinkCloser closes once, honouring its context, and delivers nothing afterwards.
package sinktest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Target is a sink under test with its destination.
type Target struct {
	Sink relay.Sink
	// Received returns the ids of the changes the destination holds, in arrival order.
	Received func() []string
	// Reject makes the destination refuse what comes from now on in a way retrying cannot
	// cure (an HTTP 400); nil when it cannot be made to.
	Reject func()
	// Fail makes it fail in a way a later attempt may cure (an HTTP 503); nil when it cannot.
	Fail func()
	// Hang makes it take requests and never answer until they are abandoned; nil when it
	// cannot.
	Hang func()
	// Heal makes it take changes again.
	Heal func()
	// HTTP says the sink speaks HTTP: its failures must carry the status (*relay.StatusError).
	HTTP bool
	// RejectStatus and FailStatus are the statuses Reject and Fail answer with (HTTP only).
	RejectStatus, FailStatus int
}

// NewFunc makes a fresh target for one case. The sink must make no quick retries of its own
// (in-process retries 0), so that a failure comes back from the first request.
type NewFunc func(t *testing.T) *Target

// deadline bounds every call the suite makes: generous, for a loaded machine.
const deadline = 30 * time.Second

// Run runs every case of the suite that the target supports, each on a fresh target.
func Run(t *testing.T, newTarget NewFunc) {
	cases := []struct {
		name string
		fn   func(t *testing.T, tg *Target)
	}{
		{"Delivers", testDelivers},
		{"CancelledContext", testCancelled},
		{"CancelDuringAttempt", testCancelDuring},
		{"Permanent", testPermanent},
		{"Transient", testTransient},
		{"BatchAsUnit", testBatch},
		{"Close", testClose},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.fn(t, newTarget(t))
		})
	}
}

var seq int

// event returns a new change with a unique id.
func event() *relay.Event {
	seq++
	return &relay.Event{ID: fmt.Sprintf("sinktest:%d:%d", time.Now().UnixNano(), seq), App: "shop", Object: "page",
		Entry: relay.Entry{ID: "1", Time: 1}, Field: "feed", Verb: "add", Source: relay.SourceChanges,
		Value: []byte(`{"item":"photo"}`), ReceivedAt: time.Now()}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), deadline)
	t.Cleanup(cancel)
	return c
}

// waitReceived waits until the destination holds ids, in that order, at its end.
func waitReceived(t *testing.T, tg *Target, ids ...string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for {
		got := tg.Received()
		if len(got) >= len(ids) && slices.Equal(got[len(got)-len(ids):], ids) {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("destination holds %v, want it to end with %v", got, ids)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testDelivers(t *testing.T, tg *Target) {
	ev := event()
	if err := tg.Sink.Deliver(ctx(t), ev); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	waitReceived(t, tg, ev.ID)
	if tg.Sink.Name() == "" {
		t.Fatal("Name() is empty")
	}
}

// testCancelled: a context cancelled before the call fails the attempt without sending it,
// with an error that is not permanent and wraps context.Canceled.
func testCancelled(t *testing.T, tg *Target) {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	before := len(tg.Received())
	err := tg.Sink.Deliver(c, event())
	if err == nil {
		t.Fatal("Deliver with a cancelled context: nil error")
	}
	if errors.Is(err, relay.ErrPermanent) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Deliver with a cancelled context: %v; want an error wrapping context.Canceled, not permanent", err)
	}
	if n := len(tg.Received()); n != before {
		t.Fatalf("Deliver with a cancelled context delivered %d change(s)", n-before)
	}
}

// testCancelDuring: an attempt stuck on a destination that does not answer ends when its
// context is cancelled, not permanent.
func testCancelDuring(t *testing.T, tg *Target) {
	if tg.Hang == nil {
		t.Skip("the destination cannot be made to hang")
	}
	tg.Hang()
	defer tg.Heal()
	c, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- tg.Sink.Deliver(c, event()) }()
	time.Sleep(50 * time.Millisecond) // let the request reach the destination
	cancel()
	select {
	case err := <-errc:
		if err == nil || errors.Is(err, relay.ErrPermanent) || !errors.Is(err, context.Canceled) {
			t.Fatalf("Deliver cancelled while the destination hangs: %v; want an error wrapping context.Canceled, not permanent", err)
		}
	case <-time.After(deadline):
		t.Fatal("Deliver did not return after its context was cancelled")
	}
}

func testPermanent(t *testing.T, tg *Target) {
	if tg.Reject == nil {
		t.Skip("the destination cannot be made to refuse")
	}
	tg.Reject()
	err := tg.Sink.Deliver(ctx(t), event())
	if !errors.Is(err, relay.ErrPermanent) {
		t.Fatalf("Deliver to a destination that refuses: %v; want an error wrapping relay.ErrPermanent", err)
	}
	wantStatus(t, tg, err, tg.RejectStatus, true)
}

func testTransient(t *testing.T, tg *Target) {
	if tg.Fail == nil {
		t.Skip("the destination cannot be made to fail")
	}
	tg.Fail()
	ev := event()
	err := tg.Sink.Deliver(ctx(t), ev)
	if err == nil || errors.Is(err, relay.ErrPermanent) {
		t.Fatalf("Deliver to a destination that fails for now: %v; want a non-permanent error", err)
	}
	wantStatus(t, tg, err, tg.FailStatus, false)
	tg.Heal()
	if err := tg.Sink.Deliver(ctx(t), ev); err != nil {
		t.Fatalf("Deliver again once the destination is back: %v", err)
	}
	waitReceived(t, tg, ev.ID)
}

// wantStatus checks that an HTTP sink's error is a *relay.StatusError with the status.
func wantStatus(t *testing.T, tg *Target, err error, status int, perm bool) {
	t.Helper()
	if !tg.HTTP {
		return
	}
	var se *relay.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *relay.StatusError", err, err)
	}
	if se.Status != status || se.Perm != perm {
		t.Fatalf("StatusError{Status: %d, Perm: %v}, want {%d, %v}", se.Status, se.Perm, status, perm)
	}
}

// testBatch: a batch goes as one unit in order; a failed batch is taken again whole; a refused
// batch is permanent.
func testBatch(t *testing.T, tg *Target) {
	bs, ok := tg.Sink.(relay.BatchSink)
	if !ok {
		t.Skip("not a relay.BatchSink")
	}
	evs := []*relay.Event{event(), event(), event()}
	ids := []string{evs[0].ID, evs[1].ID, evs[2].ID}
	if err := bs.DeliverBatch(ctx(t), evs); err != nil {
		t.Fatalf("DeliverBatch: %v", err)
	}
	waitReceived(t, tg, ids...)
	if tg.Fail != nil {
		evs = []*relay.Event{event(), event(), event()}
		ids = []string{evs[0].ID, evs[1].ID, evs[2].ID}
		tg.Fail()
		if err := bs.DeliverBatch(ctx(t), evs); err == nil || errors.Is(err, relay.ErrPermanent) {
			t.Fatalf("DeliverBatch to a failing destination: %v; want a non-permanent error", err)
		}
		for _, id := range tg.Received() {
			if slices.Contains(ids, id) {
				t.Fatalf("a failed batch left change %s at the destination", id)
			}
		}
		tg.Heal()
		if err := bs.DeliverBatch(ctx(t), evs); err != nil {
			t.Fatalf("DeliverBatch again: %v", err)
		}
		waitReceived(t, tg, ids...)
	}
	if tg.Reject != nil {
		tg.Reject()
		if err := bs.DeliverBatch(ctx(t), []*relay.Event{event(), event()}); !errors.Is(err, relay.ErrPermanent) {
			t.Fatalf("DeliverBatch to a destination that refuses: %v; want relay.ErrPermanent", err)
		}
	}
}

// testClose: Close returns nil, a second Close too, and Deliver after Close fails without
// delivering.
func testClose(t *testing.T, tg *Target) {
	sc, ok := tg.Sink.(relay.SinkCloser)
	if !ok {
		t.Skip("not a relay.SinkCloser")
	}
	ev := event()
	if err := tg.Sink.Deliver(ctx(t), ev); err != nil {
		t.Fatalf("Deliver: %v", err)
	}
	if err := sc.Close(ctx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitReceived(t, tg, ev.ID) // what was delivered before Close is kept
	if err := sc.Close(ctx(t)); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	before := len(tg.Received())
	if err := tg.Sink.Deliver(ctx(t), event()); err == nil {
		t.Fatal("Deliver after Close: nil error")
	}
	if n := len(tg.Received()); n != before {
		t.Fatalf("Deliver after Close delivered %d change(s)", n-before)
	}
}
