package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// The delivery queue: ready, done, reschedule and promote.

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
