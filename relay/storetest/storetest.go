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
	"errors"
	"fmt"
	"slices"
	"sync"
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

func testReadyAfterMax(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	for i := range 6 {
		accept(t, s, t0, item(fmt.Sprint("k", i), fmt.Sprint(i), "orders"))
	}
	all := ready(t, s, "orders", 0, 100)
	wantDatas(t, "all", all, "0", "1", "2", "3", "4", "5")
	wantDatas(t, "max 2", ready(t, s, "orders", 0, 2), "0", "1")
	wantDatas(t, "after the second", ready(t, s, "orders", all[1].Seq, 100), "2", "3", "4", "5")
	wantDatas(t, "after the second, max 3", ready(t, s, "orders", all[1].Seq, 3), "2", "3", "4")
	wantDatas(t, "after the last", ready(t, s, "orders", all[5].Seq, 100))
	wantDatas(t, "max 0", ready(t, s, "orders", 0, 0))
	// Reading does not consume: the same deliveries are ready until Done.
	wantDatas(t, "read again", ready(t, s, "orders", 0, 100), "0", "1", "2", "3", "4", "5")
}

func testDone(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "orders", "archive"), item("b", "B", "orders"), item("c", "C", "orders"))
	ds := ready(t, s, "orders", 0, 10)
	if err := s.Done("orders", ds[0].Seq, ds[2].Seq); err != nil {
		t.Fatal(err)
	}
	wantDatas(t, "orders after Done", ready(t, s, "orders", 0, 10), "B")
	wantDatas(t, "archive keeps its delivery of the same item", ready(t, s, "archive", 0, 10), "A")
	// Idempotent, and unknown seqs are ignored.
	if err := s.Done("orders", ds[0].Seq, ds[2].Seq, 999999); err != nil {
		t.Fatalf("Done again: %v", err)
	}
	if err := s.Done("orders"); err != nil {
		t.Fatalf("Done with no seqs: %v", err)
	}
	if err := s.Done("archive", ds[0].Seq); err != nil {
		t.Fatal(err)
	}
	wantDatas(t, "archive after Done", ready(t, s, "archive", 0, 10))
	wantDatas(t, "orders after archive's Done", ready(t, s, "orders", 0, 10), "B")
}

func testRescheduleAndPromote(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "orders"), item("b", "B", "orders"), item("c", "C", "orders"))
	ds := ready(t, s, "orders", 0, 10)
	a, b := ds[0], ds[1]
	if _, ok, err := s.NextScheduled(); err != nil || ok {
		t.Fatalf("NextScheduled with nothing scheduled: ok %v, %v", ok, err)
	}
	at := t0.Add(10 * time.Minute)
	if err := s.Reschedule("orders", b.Seq, at, 1, []byte(`[1]`)); err != nil {
		t.Fatal(err)
	}
	wantDatas(t, "a rescheduled delivery is not ready", ready(t, s, "orders", 0, 10), "A", "C")
	next, ok, err := s.NextScheduled()
	if err != nil || !ok || !next.Equal(at) {
		t.Fatalf("NextScheduled = %v, %v, %v; want %v", next, ok, err, at)
	}
	// Rescheduling a scheduled delivery replaces its time, attempt and history.
	later := at.Add(5 * time.Minute)
	if err := s.Reschedule("orders", b.Seq, later, 2, []byte(`[1,2]`)); err != nil {
		t.Fatalf("Reschedule a scheduled delivery: %v", err)
	}
	if next, _, _ := s.NextScheduled(); !next.Equal(later) {
		t.Fatalf("NextScheduled after a second Reschedule = %v, want %v", next, later)
	}
	if p, err := s.Promote(later.Add(-time.Microsecond)); err != nil || len(p) != 0 {
		t.Fatalf("Promote before the time = %v, %v; want nothing", p, err)
	}
	p, err := s.Promote(later)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]uint64{"orders": b.Seq}; !mapsEqual(p, want) {
		t.Fatalf("Promote = %v, want %v", p, want)
	}
	if _, ok, _ := s.NextScheduled(); ok {
		t.Fatal("NextScheduled reports a delivery after all were promoted")
	}
	ds = ready(t, s, "orders", 0, 10)
	wantDatas(t, "after Promote, in Seq order", ds, "A", "B", "C")
	got := ds[1]
	if got.Seq != b.Seq || got.Attempt != 2 || string(got.History) != `[1,2]` || !got.FirstAt.Equal(t0) {
		t.Fatalf("promoted delivery: seq %d attempt %d history %q first %v; want %d, 2, [1,2], %v",
			got.Seq, got.Attempt, got.History, got.FirstAt, b.Seq, t0)
	}
	// Done removes a scheduled delivery too.
	if err := s.Reschedule("orders", a.Seq, at, 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("orders", a.Seq); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextScheduled(); ok {
		t.Fatal("a scheduled delivery that is done is still scheduled")
	}
	if p, _ := s.Promote(at.Add(time.Hour)); len(p) != 0 {
		t.Fatalf("Promote brought back a done delivery: %v", p)
	}
	wantDatas(t, "end", ready(t, s, "orders", 0, 10), "B", "C")
}

func testRescheduleNotFound(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "orders"))
	seq := ready(t, s, "orders", 0, 10)[0].Seq
	for _, c := range []struct {
		sink string
		seq  uint64
	}{{"orders", seq + 1000}, {"archive", seq}} {
		err := s.Reschedule(c.sink, c.seq, t0, 1, nil)
		if !errors.Is(err, relay.ErrNotFound) {
			t.Errorf("Reschedule(%q, %d) = %v, want relay.ErrNotFound", c.sink, c.seq, err)
		}
	}
	if err := s.Done("orders", seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Reschedule("orders", seq, t0, 1, nil); !errors.Is(err, relay.ErrNotFound) {
		t.Errorf("Reschedule of a done delivery = %v, want relay.ErrNotFound", err)
	}
}

// testRescheduleBatch: one call parks ready and already scheduled deliveries with their own
// times, attempts and histories, skips a Seq that is not pending, and leaves other sinks'
// deliveries of the same items alone.
func testRescheduleBatch(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "orders"), item("b", "B", "orders"), item("c", "C", "orders", "archive"))
	ds := ready(t, s, "orders", 0, 10)
	a, b, c := ds[0], ds[1], ds[2]
	if err := s.Reschedule("orders", a.Seq, t0.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.RescheduleBatch("orders", nil); err != nil {
		t.Fatalf("RescheduleBatch of nothing: %v", err)
	}
	err := s.RescheduleBatch("orders", []relay.Retry{
		{Seq: a.Seq, At: t0.Add(3 * time.Minute), Attempt: 2, History: []byte(`[1,2]`)},
		{Seq: b.Seq, At: t0.Add(2 * time.Minute), Attempt: 1, History: []byte(`[1]`)},
		{Seq: c.Seq + 1000, At: t0, Attempt: 1},
	})
	if err != nil {
		t.Fatalf("RescheduleBatch: %v", err)
	}
	wantDatas(t, "after RescheduleBatch", ready(t, s, "orders", 0, 10), "C")
	wantDatas(t, "another sink", ready(t, s, "archive", 0, 10), "C")
	if next, ok, _ := s.NextScheduled(); !ok || !next.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("NextScheduled = %v, %v; want the batch's earliest, %v", next, ok, t0.Add(2*time.Minute))
	}
	if st, err := s.Stats(); err != nil || st["orders"].Ready != 1 || st["orders"].Scheduled != 2 {
		t.Fatalf("Stats = %+v, %v; want 1 ready, 2 scheduled", st["orders"], err)
	}
	if _, err := s.Promote(t0.Add(3 * time.Minute)); err != nil {
		t.Fatal(err)
	}
	ds = ready(t, s, "orders", 0, 10)
	wantDatas(t, "after Promote", ds, "A", "B", "C")
	if ds[0].Attempt != 2 || string(ds[0].History) != `[1,2]` || ds[1].Attempt != 1 || string(ds[1].History) != `[1]` {
		t.Fatalf("promoted: %+v", ds[:2])
	}
}

func testPromoteMany(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	const n = 1200 // more than one Promote call may move
	items := make([]relay.Item, n)
	for i := range items {
		items[i] = item(fmt.Sprint("k", i), fmt.Sprint(i), "orders", "archive")
	}
	accept(t, s, t0, items...)
	// Reschedule everything from a few goroutines, as the engine's workers do (engines may
	// share one commit among concurrent calls).
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for _, sink := range []string{"orders", "archive"} {
		ds := ready(t, s, sink, 0, n)
		if len(ds) != n {
			t.Fatalf("%s: %d ready, want %d", sink, len(ds), n)
		}
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(ds); i += 8 {
					if err := s.Reschedule(sink, ds[i].Seq, t0.Add(time.Duration(ds[i].Seq%7)*time.Second), 1, nil); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Reschedule: %v", err)
	}
	if st, err := s.Stats(); err != nil || st["orders"].Scheduled != n || st["archive"].Scheduled != n {
		t.Fatalf("Stats after rescheduling = %+v, %v; want %d scheduled each", st, err, n)
	}
	now := t0.Add(time.Minute)
	low := map[string]uint64{}
	for range 100 {
		p, err := s.Promote(now)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range p {
			if cur, ok := low[k]; !ok || v < cur {
				low[k] = v
			}
		}
		next, ok, err := s.NextScheduled()
		if err != nil {
			t.Fatal(err)
		}
		if !ok || next.After(now) {
			break
		}
	}
	for _, sink := range []string{"orders", "archive"} {
		ds := ready(t, s, sink, 0, 2*n)
		if len(ds) != n {
			t.Errorf("%s: %d ready after promoting, want %d", sink, len(ds), n)
		}
		if len(ds) > 0 && low[sink] != ds[0].Seq {
			t.Errorf("%s: Promote reported lowest seq %d, want %d", sink, low[sink], ds[0].Seq)
		}
	}
}

func testStats(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "orders", "archive"))
	accept(t, s, t0.Add(time.Minute), item("b", "B", "orders"), item("c", "C", "orders"))
	ds := ready(t, s, "orders", 0, 10)
	if err := s.Reschedule("orders", ds[2].Seq, t0.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]relay.SinkStats{
		"orders":  {Ready: 2, Scheduled: 1, Oldest: t0},
		"archive": {Ready: 1, Oldest: t0},
	}
	for sink, w := range want {
		g := st[sink]
		if g.Ready != w.Ready || g.Scheduled != w.Scheduled || !g.Oldest.Equal(w.Oldest) {
			t.Errorf("Stats[%s] = %+v, want %+v", sink, g, w)
		}
	}
	if g := st["orders"]; !g.OldestReady.Equal(t0) || !g.OldestScheduled.Equal(t0.Add(time.Minute)) || !g.NextDue.Equal(t0.Add(time.Hour)) {
		t.Errorf("Stats[orders] = %+v, want oldest ready %v, oldest scheduled %v, next due %v", g, t0, t0.Add(time.Minute), t0.Add(time.Hour))
	}
	if g := st["archive"]; !g.OldestReady.Equal(t0) || !g.OldestScheduled.IsZero() || !g.NextDue.IsZero() {
		t.Errorf("Stats[archive] = %+v, want oldest ready %v and nothing scheduled", g, t0)
	}
	// The oldest pending delivery is the lowest Seq, ready or scheduled.
	if err := s.Done("orders", ds[0].Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("archive", ds[0].Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.Reschedule("orders", ds[1].Seq, t0.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	st, err = s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if g := st["orders"]; g.Ready != 0 || g.Scheduled != 2 || !g.Oldest.Equal(t0.Add(time.Minute)) {
		t.Errorf("Stats[orders] = %+v, want 0 ready, 2 scheduled, oldest %v", g, t0.Add(time.Minute))
	}
	if g := st["archive"]; g.Ready != 0 || g.Scheduled != 0 || !g.Oldest.IsZero() {
		t.Errorf("Stats[archive] = %+v, want nothing pending", g)
	}
}

func testSinks(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	accept(t, s, t0, item("a", "A", "orders", "archive"), item("b", "B", "ops"))
	names, err := s.Sinks()
	if err != nil || !slices.Equal(names, []string{"archive", "ops", "orders"}) {
		t.Fatalf("Sinks = %v, %v; want [archive ops orders]", names, err)
	}
	seq := ready(t, s, "ops", 0, 10)[0].Seq
	if err := s.Reschedule("ops", seq, t0.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if names, _ := s.Sinks(); !slices.Equal(names, []string{"archive", "ops", "orders"}) {
		t.Fatalf("Sinks with ops only scheduled = %v", names)
	}
	if err := s.Done("ops", seq); err != nil {
		t.Fatal(err)
	}
	if names, _ := s.Sinks(); !slices.Equal(names, []string{"archive", "orders"}) {
		t.Fatalf("Sinks after ops is done = %v, want [archive orders]", names)
	}
}

func testReopen(t *testing.T, newStore NewFunc) {
	openIt := newStore(t, Options{DedupWindow: window})
	s := openIt()
	accept(t, s, t0, item("a", "A", "orders"), item("b", "B", "orders"), item("c", "C", "orders"))
	ds := ready(t, s, "orders", 0, 10)
	if err := s.Done("orders", ds[0].Seq); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(time.Hour)
	if err := s.Reschedule("orders", ds[1].Seq, at, 3, []byte("h")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openIt()
	defer s.Close()
	wantDatas(t, "ready after reopening", ready(t, s, "orders", 0, 10), "C")
	if next, ok, err := s.NextScheduled(); err != nil || !ok || !next.Equal(at) {
		t.Fatalf("NextScheduled after reopening = %v, %v, %v; want %v", next, ok, err, at)
	}
	if dup := accept(t, s, t0, item("a", "A", "orders"), item("d", "D", "orders")); !slices.Equal(dup, []bool{true, false}) {
		t.Fatalf("dup after reopening = %v, want [true false]", dup)
	}
	if _, err := s.Promote(at); err != nil {
		t.Fatal(err)
	}
	ds2 := ready(t, s, "orders", 0, 10)
	wantDatas(t, "after promoting", ds2, "B", "C", "D")
	if ds2[0].Attempt != 3 || string(ds2[0].History) != "h" {
		t.Fatalf("rescheduled delivery after reopening: attempt %d history %q", ds2[0].Attempt, ds2[0].History)
	}
	if ds2[2].Seq <= ds[2].Seq {
		t.Fatalf("seq after reopening %d is not above the last one before, %d", ds2[2].Seq, ds[2].Seq)
	}
}

func testConcurrentAccept(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	const workers, perWorker, keys = 8, 40, 100
	var mu sync.Mutex
	accepted := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				// Every key is offered by several workers, some in the same call.
				k1, k2 := fmt.Sprint("k", (w*7+i)%keys), fmt.Sprint("k", (w*13+i*3)%keys)
				items := []relay.Item{item(k1, k1, "orders"), item(k2, k2, "orders")}
				dup, err := s.Accept(context.Background(), items, t0)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				for j, d := range dup {
					if !d {
						accepted[items[j].Key]++
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Accept: %v", err)
	}
	for k, n := range accepted {
		if n != 1 {
			t.Errorf("key %s accepted %d times", k, n)
		}
	}
	var got []string
	var after uint64
	for {
		ds := ready(t, s, "orders", after, 64)
		if len(ds) == 0 {
			break
		}
		got = append(got, datas(ds)...)
		after = ds[len(ds)-1].Seq
	}
	if len(got) != len(accepted) {
		t.Fatalf("%d deliveries for %d accepted keys", len(got), len(accepted))
	}
	slices.Sort(got)
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Fatalf("key %s has two deliveries", got[i])
		}
	}
}

func testCheck(t *testing.T, newStore NewFunc) {
	s := open(t, newStore, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// Check writes nothing a queue shows.
	if names, err := s.Sinks(); err != nil || len(names) != 0 {
		t.Fatalf("Sinks after Check = %v, %v", names, err)
	}
	if dup := accept(t, s, t0, item("k", "K", "orders")); dup[0] {
		t.Fatal("Check recorded a dedup key a change can have")
	}
}

func mapsEqual(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
