package storetest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// What an engine reports and keeps: stats, pending sinks, reopening, concurrent accepts,
// the readiness check.

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
