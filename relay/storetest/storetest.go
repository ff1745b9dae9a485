// Package storetest is the conformance suite of relay's storage contract (relay.Store). Every
// engine runs it from its own tests, as Litestream's backends run RunWithReplicaClient and
// nats-server runs each store test against memstore and filestore:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, opt storetest.Options) func() storetest.Engine {
//			dir := t.TempDir()
//			return func() storetest.Engine { return openMyEngine(t, dir, opt) }
//		})
//	}
//
// An engine is done when it passes this suite, not when it has tests of its own.
package storetest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Engine is a storage engine under test: the contract and a way to close it.
type Engine interface {
	relay.Store
	Close() error
}

// Options configures the engine a case needs.
type Options struct {
	// DedupWindow is how long an accepted key keeps repeats out.
	DedupWindow time.Duration
}

// NewFunc makes fresh, empty storage for one case and returns a function that opens it. The
// case calls open once, or again after closing the engine it got, to check what survives a
// restart; every engine it opens is closed by the case.
type NewFunc func(t *testing.T, opt Options) (open func() Engine)

// window is the dedup window of the cases that do not test the window itself.
const window = 168 * time.Hour

// t0 is the suite's clock: whole microseconds (every engine keeps at least that precision), in
// the past so that nothing is due by accident.
var t0 = time.Now().Add(-time.Hour).Truncate(time.Second)

// Run runs every case of the suite against the engines newStore makes, each case in parallel
// with the others and on its own storage.
func Run(t *testing.T, newStore NewFunc) {
	cases := []struct {
		name string
		fn   func(t *testing.T, newStore NewFunc)
	}{
		{"AcceptReady", testAcceptReady},
		{"AcceptEmpty", testAcceptEmpty},
		{"AcceptCopiesData", testAcceptCopiesData},
		{"AcceptCancelled", testAcceptCancelled},
		{"SeqIncreases", testSeqIncreases},
		{"Dedup", testDedup},
		{"DedupWindow", testDedupWindow},
		{"ExpireDedup", testExpireDedup},
		{"ReadyAfterMax", testReadyAfterMax},
		{"Done", testDone},
		{"RescheduleAndPromote", testRescheduleAndPromote},
		{"RescheduleNotFound", testRescheduleNotFound},
		{"RescheduleBatch", testRescheduleBatch},
		{"PromoteMany", testPromoteMany},
		{"Stats", testStats},
		{"Sinks", testSinks},
		{"Reopen", testReopen},
		{"ConcurrentAccept", testConcurrentAccept},
		{"Check", testCheck},
		{"Pause", testPause},
		{"PauseReopen", testPauseReopen},
		{"PauseConcurrent", testPauseConcurrent},
		{"Scheduled", testScheduled},
		{"DoneSync", testDoneSync},
		{"Order", testOrder},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, newStore)
		})
	}
}

// open makes fresh storage and opens it, closing it at the end of the test.
func open(t *testing.T, newStore NewFunc, opt Options) Engine {
	t.Helper()
	if opt.DedupWindow == 0 {
		opt.DedupWindow = window
	}
	e := newStore(t, opt)()
	t.Cleanup(func() { e.Close() })
	return e
}

func item(key, data string, sinks ...string) relay.Item {
	return relay.Item{Key: key, Data: []byte(data), Sinks: sinks}
}

func accept(t *testing.T, s relay.Spooler, now time.Time, items ...relay.Item) []bool {
	t.Helper()
	dup, err := s.Accept(context.Background(), items, now)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if len(dup) != len(items) {
		t.Fatalf("Accept returned %d dup flags for %d items", len(dup), len(items))
	}
	return dup
}

func ready(t *testing.T, q relay.Queue, sink string, after uint64, max int) []relay.Delivery {
	t.Helper()
	ds, err := q.Ready(sink, after, max)
	if err != nil {
		t.Fatalf("Ready(%q, %d, %d): %v", sink, after, max, err)
	}
	for i, d := range ds {
		if d.Sink != sink {
			t.Fatalf("Ready(%q): delivery %d is for sink %q", sink, d.Seq, d.Sink)
		}
		if d.Seq <= after {
			t.Fatalf("Ready(%q, after %d): returned seq %d", sink, after, d.Seq)
		}
		if i > 0 && d.Seq <= ds[i-1].Seq {
			t.Fatalf("Ready(%q): seqs not increasing: %d after %d", sink, d.Seq, ds[i-1].Seq)
		}
	}
	return ds
}

func datas(ds []relay.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Data)
	}
	return out
}

func seqs(ds []relay.Delivery) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

func wantDatas(t *testing.T, what string, ds []relay.Delivery, want ...string) {
	t.Helper()
	if got := datas(ds); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("%s: data %q, want %q", what, got, want)
	}
}

func testAcceptReady(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	dup := accept(t, s, t0, item("a", "A", "orders", "archive"), item("b", "B", "orders"), item("c", "C", "archive", "archive"))
	if !slices.Equal(dup, []bool{false, false, false}) {
		t.Fatalf("dup = %v, want none", dup)
	}
	orders := ready(t, s, "orders", 0, 10)
	wantDatas(t, "orders", orders, "A", "B")
	archive := ready(t, s, "archive", 0, 10)
	wantDatas(t, "archive (a sink named twice gets one delivery)", archive, "A", "C")
	if orders[0].Seq != archive[0].Seq {
		t.Errorf("the deliveries of one item have seqs %d and %d, want one", orders[0].Seq, archive[0].Seq)
	}
	for _, d := range append(orders, archive...) {
		if d.Attempt != 0 || d.History != nil || !d.FirstAt.Equal(t0) {
			t.Errorf("new delivery %d: attempt %d, history %q, first %v; want 0, nil, %v", d.Seq, d.Attempt, d.History, d.FirstAt, t0)
		}
	}
	wantDatas(t, "unknown sink", ready(t, s, "nobody", 0, 10))
}

func testAcceptEmpty(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	dup, err := s.Accept(context.Background(), nil, t0)
	if err != nil || len(dup) != 0 {
		t.Fatalf("Accept(nil) = %v, %v; want no flags, nil", dup, err)
	}
	// An item without sinks records its key only.
	if dup := accept(t, s, t0, item("k", "K")); dup[0] {
		t.Fatal("first item without sinks reported as a repeat")
	}
	if dup := accept(t, s, t0, item("k", "K", "orders")); !dup[0] {
		t.Fatal("an item without sinks did not record its key")
	}
	if names, err := s.Sinks(); err != nil || len(names) != 0 {
		t.Fatalf("Sinks = %v, %v; want none", names, err)
	}
}

func testAcceptCopiesData(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	data := []byte("original")
	sinks := []string{"orders"}
	if _, err := s.Accept(context.Background(), []relay.Item{{Key: "k", Data: data, Sinks: sinks}}, t0); err != nil {
		t.Fatal(err)
	}
	copy(data, "XXXXXXXX")
	sinks[0] = "other"
	ds := ready(t, s, "orders", 0, 10)
	wantDatas(t, "after the caller reused its buffers", ds, "original")
	ds[0].Data[0] = 'Y'
	wantDatas(t, "after the caller changed a returned delivery", ready(t, s, "orders", 0, 10), "original")
}

func testAcceptCancelled(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Accept(ctx, []relay.Item{item("k", "K", "orders")}, t0); err == nil {
		t.Fatal("Accept with a cancelled context succeeded")
	}
	wantDatas(t, "after a cancelled Accept", ready(t, s, "orders", 0, 10))
	if dup := accept(t, s, t0, item("k", "K", "orders")); dup[0] {
		t.Fatal("a cancelled Accept recorded its key")
	}
}

func testSeqIncreases(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	for i := range 5 {
		accept(t, s, t0, item(fmt.Sprint("k", i), fmt.Sprint(i), "orders"))
	}
	ds := ready(t, s, "orders", 0, 10)
	wantDatas(t, "in acceptance order", ds, "0", "1", "2", "3", "4")
	if ds[0].Seq == 0 {
		t.Error("seq 0 handed out; the engine's cursor starts at 0")
	}
}

func testDedup(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A1", "orders"))
	dup := accept(t, s, t0.Add(time.Minute), item("a", "A2", "orders"), item("b", "B1", "orders"), item("b", "B2", "orders"),
		item("", "R1", "orders"), item("", "R2", "orders"))
	if want := []bool{true, false, true, false, false}; !slices.Equal(dup, want) {
		t.Fatalf("dup = %v, want %v (a repeat in storage, a repeat in the same call, empty keys never)", dup, want)
	}
	wantDatas(t, "orders", ready(t, s, "orders", 0, 10), "A1", "B1", "R1", "R2")
	// A key is remembered after its deliveries are done.
	ds := ready(t, s, "orders", 0, 10)
	if err := s.Done("orders", seqs(ds)...); err != nil {
		t.Fatal(err)
	}
	if dup := accept(t, s, t0.Add(2*time.Minute), item("a", "A3", "orders")); !dup[0] {
		t.Fatal("a delivered change's key was forgotten")
	}
}

func testDedupWindow(t *testing.T, newStore NewFunc) {
	const w = 2 * time.Hour
	s := open(t, newStore, Options{DedupWindow: w})
	accept(t, s, t0, item("k", "1", "orders"))
	if dup := accept(t, s, t0.Add(w-time.Second), item("k", "2", "orders")); !dup[0] {
		t.Fatal("a repeat inside the window was accepted")
	}
	if dup := accept(t, s, t0.Add(w+time.Second), item("k", "3", "orders")); dup[0] {
		t.Fatal("a repeat after the window was dropped")
	}
	// The window starts again from the new acceptance.
	if dup := accept(t, s, t0.Add(w+time.Minute), item("k", "4", "orders")); !dup[0] {
		t.Fatal("a repeat of the re-accepted key was accepted")
	}
	wantDatas(t, "orders", ready(t, s, "orders", 0, 10), "1", "3")
}

func testExpireDedup(t *testing.T, newStore NewFunc) {
	const w = 2 * time.Hour
	s := open(t, newStore, Options{DedupWindow: w})
	for i := range 10 {
		accept(t, s, t0, item(fmt.Sprint("k", i), "x"))
	}
	n, err := s.DedupLen()
	if err != nil || n != 10 {
		t.Fatalf("DedupLen = %d, %v; want 10", n, err)
	}
	// Nothing inside the window expires.
	if _, err := s.ExpireDedup(t0.Add(w-time.Minute), 1000); err != nil {
		t.Fatal(err)
	}
	if dup := accept(t, s, t0.Add(w-time.Minute), item("k0", "x")); !dup[0] {
		t.Fatal("ExpireDedup dropped a key inside the window")
	}
	for {
		n, err := s.ExpireDedup(t0.Add(w+48*time.Hour), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if n < 1000 {
			break
		}
	}
	if n, err := s.DedupLen(); err != nil || n != 0 {
		t.Fatalf("DedupLen after expiry = %d, %v; want 0", n, err)
	}
	if dup := accept(t, s, t0.Add(w+48*time.Hour), item("k1", "x")); dup[0] {
		t.Fatal("an expired key still counts as seen")
	}
}
