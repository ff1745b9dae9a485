package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// openTest opens a spool in a fresh temporary directory and closes it at the end of the test.
func openTest(t testing.TB, opt Options) (*Spool, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", "spool.db")
	s, err := Open(path, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// reopen closes s and opens its file again.
func reopen(t *testing.T, s *Spool, path string, opt Options) *Spool {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2, err := Open(path, opt)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { _ = s2.Close() })
	return s2
}

func mustAccept(t testing.TB, s *Spool, now time.Time, items ...Item) []bool {
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

func mustReady(t testing.TB, s *Spool, sink string, after uint64, max int) []Delivery {
	t.Helper()
	ds, err := s.Ready(sink, after, max)
	if err != nil {
		t.Fatalf("Ready(%s): %v", sink, err)
	}
	return ds
}

func seqsOf(ds []Delivery) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

func datasOf(ds []Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Data)
	}
	return out
}

// itemCount counts stored item data records, to check the refcount, once every journal frame
// written so far is applied to the file.
func itemCount(t *testing.T, s *Spool) int {
	t.Helper()
	s.apply.waitApplied()
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketItems).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSpool_AcceptReadyDone(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	dup := mustAccept(t, s, t0,
		Item{Key: "k1", Data: []byte("one"), Sinks: []string{"a", "b"}},
		Item{Key: "k2", Data: []byte("two"), Sinks: []string{"a"}},
		Item{Key: "", Data: []byte("three"), Sinks: []string{"b", "a"}},
	)
	if slices.Contains(dup, true) {
		t.Fatalf("dup = %v, want none", dup)
	}

	a := mustReady(t, s, "a", 0, 10)
	if got, want := datasOf(a), []string{"one", "two", "three"}; !slices.Equal(got, want) {
		t.Fatalf("Ready(a) data = %q, want %q", got, want)
	}
	if !slices.IsSorted(seqsOf(a)) || a[0].Seq == 0 {
		t.Fatalf("Ready(a) seqs = %v, want increasing from 1", seqsOf(a))
	}
	for _, d := range a {
		if d.Sink != "a" || d.Attempt != 0 || !d.FirstAt.Equal(t0) || d.History != nil {
			t.Fatalf("delivery = %+v, want sink a, attempt 0, first %v, no history", d, t0)
		}
	}
	b := mustReady(t, s, "b", 0, 10)
	if got, want := datasOf(b), []string{"one", "three"}; !slices.Equal(got, want) {
		t.Fatalf("Ready(b) data = %q, want %q", got, want)
	}
	if b[0].Seq != a[0].Seq || b[1].Seq != a[2].Seq {
		t.Fatalf("an item has one seq in every sink: a=%v b=%v", seqsOf(a), seqsOf(b))
	}

	// Cursor and max.
	if got := mustReady(t, s, "a", a[0].Seq, 1); len(got) != 1 || got[0].Seq != a[1].Seq {
		t.Fatalf("Ready(a, after %d, 1) = %v, want [%d]", a[0].Seq, seqsOf(got), a[1].Seq)
	}
	if got := mustReady(t, s, "a", a[2].Seq, 10); len(got) != 0 {
		t.Fatalf("Ready after last = %v, want none", seqsOf(got))
	}
	if got := mustReady(t, s, "nosuch", 0, 10); len(got) != 0 {
		t.Fatalf("Ready(unknown sink) = %v, want none", seqsOf(got))
	}

	// Returned data is a copy, safe to modify.
	a[0].Data[0] = 'X'
	if got := mustReady(t, s, "a", 0, 1); string(got[0].Data) != "one" {
		t.Fatalf("data changed through a returned slice: %q", got[0].Data)
	}

	// Refcount: the shared item stays until its last sink is done.
	if err := s.Done("a", seqsOf(a)...); err != nil {
		t.Fatalf("Done(a): %v", err)
	}
	if n := itemCount(t, s); n != 2 {
		t.Fatalf("items after Done(a) = %d, want 2 (one, three still needed by b)", n)
	}
	if got := datasOf(mustReady(t, s, "b", 0, 10)); !slices.Equal(got, []string{"one", "three"}) {
		t.Fatalf("Ready(b) after Done(a) = %q", got)
	}
	if err := s.Done("a", seqsOf(a)...); err != nil {
		t.Fatalf("repeated Done must be a no-op, got %v", err)
	}
	if err := s.Done("b", b[0].Seq, 9999); err != nil {
		t.Fatalf("Done(b, unknown): %v", err)
	}
	if n := itemCount(t, s); n != 1 {
		t.Fatalf("items = %d, want 1", n)
	}
	if err := s.Done("b", b[1].Seq); err != nil {
		t.Fatal(err)
	}
	if n := itemCount(t, s); n != 0 {
		t.Fatalf("items after all done = %d, want 0", n)
	}
	if err := s.db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bucketRefs).Stats().KeyN; n != 0 {
			return fmt.Errorf("refs left: %d", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sinks, err := s.Sinks()
	if err != nil || len(sinks) != 0 {
		t.Fatalf("Sinks = %v, %v; want none", sinks, err)
	}
}

func TestSpool_AcceptConcurrentOrder(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	const workers, per = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				item := Item{Key: fmt.Sprintf("w%d-%d", w, i), Data: fmt.Appendf(nil, "%d %d", w, i), Sinks: []string{"a"}}
				if _, err := s.Accept(context.Background(), []Item{item}, t0); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ds := mustReady(t, s, "a", 0, workers*per+1)
	if len(ds) != workers*per {
		t.Fatalf("Ready = %d deliveries, want %d", len(ds), workers*per)
	}
	next := make([]int, workers)
	for i, d := range ds {
		if i > 0 && d.Seq <= ds[i-1].Seq {
			t.Fatalf("seqs not strictly increasing at %d: %d after %d", i, d.Seq, ds[i-1].Seq)
		}
		var w, n int
		if _, err := fmt.Sscanf(string(d.Data), "%d %d", &w, &n); err != nil {
			t.Fatal(err)
		}
		// Each worker accepted its items one after another, so their seqs keep that order.
		if n != next[w] {
			t.Fatalf("worker %d: item %d delivered where %d was expected", w, n, next[w])
		}
		next[w]++
	}
}

func TestSpool_Dedup(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	opt := Options{DedupWindow: window}
	item := func(key, data string) Item { return Item{Key: key, Data: []byte(data), Sinks: []string{"a"}} }

	t.Run("same call", func(t *testing.T) {
		s, _ := openTest(t, opt)
		dup := mustAccept(t, s, t0, item("k", "1"), item("other", "2"), item("k", "3"), item("", "4"), item("", "5"))
		if want := []bool{false, false, true, false, false}; !slices.Equal(dup, want) {
			t.Fatalf("dup = %v, want %v", dup, want)
		}
		if got := datasOf(mustReady(t, s, "a", 0, 10)); !slices.Equal(got, []string{"1", "2", "4", "5"}) {
			t.Fatalf("stored %q", got)
		}
	})
	t.Run("later call", func(t *testing.T) {
		s, _ := openTest(t, opt)
		mustAccept(t, s, t0, item("k", "1"))
		dup := mustAccept(t, s, t0.Add(window-time.Nanosecond), item("k", "2"), item("", "3"))
		if want := []bool{true, false}; !slices.Equal(dup, want) {
			t.Fatalf("dup = %v, want %v", dup, want)
		}
		if got := datasOf(mustReady(t, s, "a", 0, 10)); !slices.Equal(got, []string{"1", "3"}) {
			t.Fatalf("stored %q", got)
		}
	})
	t.Run("after reopen", func(t *testing.T) {
		s, path := openTest(t, opt)
		mustAccept(t, s, t0, item("k", "1"))
		s = reopen(t, s, path, opt)
		if dup := mustAccept(t, s, t0.Add(time.Minute), item("k", "2")); !dup[0] {
			t.Fatal("key accepted before a restart was not recognised")
		}
		if n, err := s.DedupLen(); err != nil || n != 1 {
			t.Fatalf("DedupLen = %d, %v; want 1", n, err)
		}
	})
	t.Run("no sinks still records the key", func(t *testing.T) {
		s, _ := openTest(t, opt)
		mustAccept(t, s, t0, Item{Key: "k", Data: []byte("1")})
		if dup := mustAccept(t, s, t0, item("k", "2")); !dup[0] {
			t.Fatal("repeat of an unrouted item was not dropped")
		}
		if n := itemCount(t, s); n != 0 {
			t.Fatalf("an item without sinks stored data: %d items", n)
		}
	})
	t.Run("past window but not expired", func(t *testing.T) {
		s, _ := openTest(t, opt)
		mustAccept(t, s, t0, item("k", "1"))
		later := t0.Add(window)
		if dup := mustAccept(t, s, later, item("k", "2")); dup[0] {
			t.Fatal("a key older than the window counted as seen")
		}
		// Accepted again: a fresh window starts at later.
		if dup := mustAccept(t, s, later.Add(window/2), item("k", "3")); !dup[0] {
			t.Fatal("re-accepted key not recorded afresh")
		}
		if n, _ := s.DedupLen(); n != 1 {
			t.Fatalf("DedupLen = %d, want 1", n)
		}
		// The first acceptance's time index entry is gone; expiring at the first window
		// end must not drop the fresh key.
		if n, err := s.ExpireDedup(later.Add(window/2), 100); err != nil || n != 0 {
			t.Fatalf("ExpireDedup = %d, %v; want 0", n, err)
		}
		if dup := mustAccept(t, s, later.Add(window-time.Nanosecond), item("k", "4")); !dup[0] {
			t.Fatal("fresh key was lost")
		}
		if got := datasOf(mustReady(t, s, "a", 0, 10)); !slices.Equal(got, []string{"1", "2"}) {
			t.Fatalf("stored %q", got)
		}
	})
	t.Run("expire", func(t *testing.T) {
		s, _ := openTest(t, opt)
		mustAccept(t, s, t0, item("old1", "1"), item("old2", "2"), item("old3", "3"))
		mustAccept(t, s, t0.Add(30*time.Minute), item("new", "4"))
		now := t0.Add(window)
		n, err := s.ExpireDedup(now, 2)
		if err != nil || n != 2 {
			t.Fatalf("ExpireDedup(max 2) = %d, %v; want 2", n, err)
		}
		n, err = s.ExpireDedup(now, 100)
		if err != nil || n != 1 {
			t.Fatalf("second ExpireDedup = %d, %v; want 1", n, err)
		}
		if n, _ := s.DedupLen(); n != 1 {
			t.Fatalf("DedupLen = %d, want 1 (new)", n)
		}
		dup := mustAccept(t, s, now, item("old1", "5"), item("new", "6"))
		if want := []bool{false, true}; !slices.Equal(dup, want) {
			t.Fatalf("dup = %v, want %v", dup, want)
		}
		if n, _ := s.ExpireDedup(now, 0); n != 0 {
			t.Fatalf("ExpireDedup(max 0) = %d", n)
		}
	})
}

func TestSpool_GroupCommit(t *testing.T) {
	// A generous delay makes the batching window wide enough that a slow CI machine still
	// gathers the callers; the test asserts how many commits happened, never how long.
	s, _ := openTest(t, Options{MaxBatchDelay: 50 * time.Millisecond})
	var mu sync.Mutex
	txids := map[int]int{}
	s.acceptHook = func(txid int) {
		mu.Lock()
		txids[txid]++
		mu.Unlock()
	}
	const callers = 64
	var wg sync.WaitGroup
	start := make(chan struct{})
	type result struct {
		dup []bool
		err error
	}
	results := make([]result, callers)
	for i := range callers {
		wg.Go(func() {
			<-start
			items := []Item{
				{Key: fmt.Sprintf("own-%d", i), Data: fmt.Appendf(nil, "%d", i), Sinks: []string{"a", "b"}},
				{Key: "shared", Data: []byte("shared"), Sinks: []string{"a"}},
			}
			dup, err := s.Accept(context.Background(), items, t0)
			results[i] = result{dup, err}
		})
	}
	close(start)
	wg.Wait()

	shared := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("caller %d: %v", i, r.err)
		}
		if r.dup[0] {
			t.Fatalf("caller %d: own key reported as a repeat", i)
		}
		if !r.dup[1] {
			shared++
		}
	}
	if shared != 1 {
		t.Fatalf("shared key accepted by %d callers, want exactly 1", shared)
	}
	ds := mustReady(t, s, "a", 0, 1000)
	if len(ds) != callers+1 {
		t.Fatalf("Ready(a) = %d deliveries, want %d", len(ds), callers+1)
	}
	seen := map[uint64]bool{}
	for _, d := range ds {
		if seen[d.Seq] {
			t.Fatalf("seq %d given twice", d.Seq)
		}
		seen[d.Seq] = true
	}
	calls := 0
	for _, n := range txids {
		calls += n
	}
	if calls != callers {
		t.Fatalf("hook saw %d calls, want %d", calls, callers)
	}
	t.Logf("%d Accept calls shared %d commits", callers, len(txids))
	if len(txids) > callers/4 {
		t.Fatalf("%d Accept calls used %d commits; group commit should need far fewer", callers, len(txids))
	}
}

func TestSpool_RescheduleAndPromote(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	mustAccept(t, s, t0,
		Item{Key: "1", Data: []byte("one"), Sinks: []string{"a", "b"}},
		Item{Key: "2", Data: []byte("two"), Sinks: []string{"a", "b"}},
		Item{Key: "3", Data: []byte("three"), Sinks: []string{"a"}},
	)
	ds := mustReady(t, s, "a", 0, 10)
	s1, s2, s3 := ds[0].Seq, ds[1].Seq, ds[2].Seq

	if _, ok, err := s.NextScheduled(); err != nil || ok {
		t.Fatalf("NextScheduled on empty = %v, %v; want none", ok, err)
	}
	now := t0.Add(time.Minute)
	due := now.Add(time.Hour)
	if err := s.Reschedule("a", s2, due, 1, []byte("attempt 1: 503")); err != nil {
		t.Fatalf("Reschedule: %v", err)
	}
	if got := seqsOf(mustReady(t, s, "a", 0, 10)); !slices.Equal(got, []uint64{s1, s3}) {
		t.Fatalf("Ready(a) after Reschedule = %v, want %v", got, []uint64{s1, s3})
	}
	if got := seqsOf(mustReady(t, s, "b", 0, 10)); !slices.Equal(got, []uint64{s1, s2}) {
		t.Fatalf("another sink's delivery moved: Ready(b) = %v", got)
	}
	checkStats(t, s, map[string]SinkStats{
		"a": {Ready: 2, Scheduled: 1, Oldest: t0},
		"b": {Ready: 2, Oldest: t0},
	})
	next, ok, err := s.NextScheduled()
	if err != nil || !ok || !next.Equal(due) {
		t.Fatalf("NextScheduled = %v, %v, %v; want %v", next, ok, err, due)
	}

	// Rescheduling a scheduled delivery again replaces its time, attempt and history.
	due = now.Add(2 * time.Hour)
	if err := s.Reschedule("a", s2, due, 2, []byte("attempt 2: timeout")); err != nil {
		t.Fatalf("second Reschedule: %v", err)
	}
	if next, _, _ := s.NextScheduled(); !next.Equal(due) {
		t.Fatalf("NextScheduled = %v, want %v", next, due)
	}

	// Nothing is due yet.
	if got, err := s.Promote(due.Add(-time.Nanosecond)); err != nil || len(got) != 0 {
		t.Fatalf("early Promote = %v, %v; want nothing", got, err)
	}
	if got := seqsOf(mustReady(t, s, "a", 0, 10)); !slices.Equal(got, []uint64{s1, s3}) {
		t.Fatalf("Ready returned a delivery scheduled in the future: %v", got)
	}

	got, err := s.Promote(due)
	if err != nil {
		t.Fatalf("Promote: %v", err)
	}
	if want := map[string]uint64{"a": s2}; !mapsEqual(got, want) {
		t.Fatalf("Promote = %v, want %v", got, want)
	}
	if _, ok, _ := s.NextScheduled(); ok {
		t.Fatal("NextScheduled still reports a delivery after Promote")
	}
	ds = mustReady(t, s, "a", 0, 10)
	if got := seqsOf(ds); !slices.Equal(got, []uint64{s1, s2, s3}) {
		t.Fatalf("Ready after Promote = %v, want original seqs", got)
	}
	d := ds[1]
	if string(d.Data) != "two" || d.Attempt != 2 || string(d.History) != "attempt 2: timeout" || !d.FirstAt.Equal(t0) {
		t.Fatalf("promoted delivery = %+v", d)
	}
	checkStats(t, s, map[string]SinkStats{
		"a": {Ready: 3, Oldest: t0},
		"b": {Ready: 2, Oldest: t0},
	})

	// Reschedule of something not pending.
	if err := s.Reschedule("a", 9999, due, 1, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reschedule(unknown) = %v, want ErrNotFound", err)
	}
	if err := s.Reschedule("c", s1, due, 1, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reschedule(unknown sink) = %v, want ErrNotFound", err)
	}

	// Done of a scheduled delivery (dead-lettered while parked) frees it too.
	if err := s.Reschedule("a", s3, due.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("a", s3); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextScheduled(); ok {
		t.Fatal("done delivery still scheduled")
	}
	if err := s.Done("a", s1, s2); err != nil {
		t.Fatal(err)
	}
	checkStats(t, s, map[string]SinkStats{
		"a": {},
		"b": {Ready: 2, Oldest: t0},
	})
	if n := itemCount(t, s); n != 2 {
		t.Fatalf("items = %d, want 2 (still needed by b)", n)
	}
	sinks, err := s.Sinks()
	if err != nil || !slices.Equal(sinks, []string{"b"}) {
		t.Fatalf("Sinks = %v, %v; want [b]", sinks, err)
	}
}

func TestSpool_PromoteBounded(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	s.promoteLimit = 3
	items := make([]Item, 5)
	for i := range items {
		items[i] = Item{Data: []byte{byte(i)}, Sinks: []string{"a", "b"}}
	}
	mustAccept(t, s, t0, items...)
	for _, sink := range []string{"a", "b"} {
		for _, d := range mustReady(t, s, sink, 0, 10) {
			// Later seqs due earlier, so the lowest promoted seq is not the first promoted.
			at := t0.Add(time.Duration(10-d.Seq) * time.Second)
			if err := s.Reschedule(sink, d.Seq, at, 1, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	now := t0.Add(time.Hour)
	total := 0
	for round := 0; ; round++ {
		if round > 10 {
			t.Fatal("Promote does not converge")
		}
		got, err := s.Promote(now)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			break
		}
		n := 0
		for _, sink := range []string{"a", "b"} {
			n += len(mustReady(t, s, sink, 0, 10))
		}
		if n-total > 3 {
			t.Fatalf("one Promote moved %d deliveries, limit 3", n-total)
		}
		total = n
		if next, ok, _ := s.NextScheduled(); ok && next.After(now) {
			t.Fatalf("NextScheduled = %v after a partial Promote, want <= now", next)
		}
	}
	if total != 10 {
		t.Fatalf("promoted %d deliveries, want 10", total)
	}
	checkStats(t, s, map[string]SinkStats{"a": {Ready: 5, Oldest: t0}, "b": {Ready: 5, Oldest: t0}})
}

func TestSpool_PromoteLowestSeq(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	mustAccept(t, s, t0, Item{Data: []byte("1"), Sinks: []string{"a"}}, Item{Data: []byte("2"), Sinks: []string{"a"}})
	ds := mustReady(t, s, "a", 0, 10)
	// seq 2 is due before seq 1.
	if err := s.Reschedule("a", ds[1].Seq, t0.Add(time.Second), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Reschedule("a", ds[0].Seq, t0.Add(2*time.Second), 1, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.Promote(t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if got["a"] != ds[0].Seq {
		t.Fatalf("Promote lowest = %d, want %d", got["a"], ds[0].Seq)
	}
}

func checkStats(t *testing.T, s *Spool, want map[string]SinkStats) {
	t.Helper()
	got, err := s.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}
	for sink, w := range want {
		g, ok := got[sink]
		if !ok || g.Ready != w.Ready || g.Scheduled != w.Scheduled || !g.Oldest.Equal(w.Oldest) {
			t.Fatalf("Stats[%s] = %+v, want %+v", sink, g, w)
		}
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

func TestSpool_Stats(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	t1 := t0.Add(time.Minute)
	mustAccept(t, s, t0, Item{Key: "1", Data: []byte("1"), Sinks: []string{"a", "b"}})
	mustAccept(t, s, t1,
		Item{Key: "2", Data: []byte("2"), Sinks: []string{"a", "a"}}, // named twice: one delivery
		Item{Key: "1", Data: []byte("1"), Sinks: []string{"a", "b"}}, // repeat: nothing
		Item{Key: "3", Data: []byte("3"), Sinks: []string{"c"}},
	)
	checkStats(t, s, map[string]SinkStats{
		"a": {Ready: 2, Oldest: t0},
		"b": {Ready: 1, Oldest: t0},
		"c": {Ready: 1, Oldest: t1},
	})
	sinks, err := s.Sinks()
	if err != nil || !slices.Equal(sinks, []string{"a", "b", "c"}) {
		t.Fatalf("Sinks = %v, %v", sinks, err)
	}
	a := mustReady(t, s, "a", 0, 10)
	if len(a) != 2 {
		t.Fatalf("Ready(a) = %d, want 2 (a sink named twice gets one delivery)", len(a))
	}
	// Oldest pending of a is a scheduled delivery.
	if err := s.Reschedule("a", a[0].Seq, t1.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("c", mustReady(t, s, "c", 0, 10)[0].Seq); err != nil {
		t.Fatal(err)
	}
	checkStats(t, s, map[string]SinkStats{
		"a": {Ready: 1, Scheduled: 1, Oldest: t0},
		"b": {Ready: 1, Oldest: t0},
		"c": {},
	})
	if err := s.Done("a", a[1].Seq); err != nil {
		t.Fatal(err)
	}
	checkStats(t, s, map[string]SinkStats{
		"a": {Scheduled: 1, Oldest: t0},
		"b": {Ready: 1, Oldest: t0},
		"c": {},
	})
	sinks, _ = s.Sinks()
	if !slices.Equal(sinks, []string{"a", "b"}) {
		t.Fatalf("Sinks = %v, want [a b]", sinks)
	}
	// The data item 2 is gone (its only delivery is done); item 1 is still needed by a and b.
	if n := itemCount(t, s); n != 1 {
		t.Fatalf("items = %d, want 1", n)
	}
}

func TestSpool_AcceptInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		item Item
	}{
		{"empty sink", Item{Key: "k", Data: []byte("x"), Sinks: []string{"a", ""}}},
		{"long key", Item{Key: string(make([]byte, MaxKeyLen+1)), Data: []byte("x"), Sinks: []string{"a"}}},
		{"long sink", Item{Key: "k", Data: []byte("x"), Sinks: []string{string(make([]byte, MaxSinkLen+1))}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t, Options{})
			good := Item{Key: "good", Data: []byte("g"), Sinks: []string{"a"}}
			if _, err := s.Accept(context.Background(), []Item{good, tt.item}, t0); err == nil {
				t.Fatal("Accept succeeded")
			}
			if n, _ := s.DedupLen(); n != 0 {
				t.Fatalf("a failed Accept stored %d keys", n)
			}
			if n := itemCount(t, s); n != 0 {
				t.Fatalf("a failed Accept stored %d items", n)
			}
		})
	}
	t.Run("canceled context", func(t *testing.T) {
		s, _ := openTest(t, Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.Accept(ctx, []Item{{Key: "k", Sinks: []string{"a"}}}, t0); !errors.Is(err, context.Canceled) {
			t.Fatalf("Accept = %v, want context.Canceled", err)
		}
	})
	t.Run("no items", func(t *testing.T) {
		s, _ := openTest(t, Options{})
		dup, err := s.Accept(context.Background(), nil, t0)
		if err != nil || len(dup) != 0 {
			t.Fatalf("Accept(nil) = %v, %v", dup, err)
		}
	})
}

func TestSpool_Closed(t *testing.T) {
	t.Parallel()
	s, path := openTest(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := s.Accept(context.Background(), []Item{{Key: "k", Data: []byte("x"), Sinks: []string{"a"}}}, t0)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Accept after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Ready("a", 0, 10); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ready after Close = %v, want ErrClosed", err)
	}
	if err := s.Done("a", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Done after Close = %v, want ErrClosed", err)
	}
	if err := s.Check(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Check after Close = %v, want ErrClosed", err)
	}
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n, _ := s2.DedupLen(); n != 0 {
		t.Fatalf("Accept on a closed spool stored %d keys", n)
	}
	if st, _ := s2.Stats(); len(st) != 0 {
		t.Fatalf("Accept on a closed spool stored deliveries: %v", st)
	}
}

func TestOpen_Locked(t *testing.T) {
	t.Parallel()
	s, path := openTest(t, Options{})
	_, err := Open(path, Options{OpenTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path, Options{OpenTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	_ = s2.Close()
}

func TestSpool_Check(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Check(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Check(canceled) = %v", err)
	}
}

// TestSpool_AbandonCopy copies the file of a spool that was never closed, as a crash right
// after Accept returned would leave it, and checks the copy holds every accepted item.
func TestSpool_AbandonCopy(t *testing.T) {
	t.Parallel()
	s, path := openTest(t, Options{})
	const n = 20
	for i := range n {
		mustAccept(t, s, t0, Item{Key: fmt.Sprint(i), Data: fmt.Appendf(nil, "d%d", i), Sinks: []string{"a"}})
	}
	s.apply.waitApplied() // so that the Done below goes to the file, not to the pending frames
	ds := mustReady(t, s, "a", 0, 5)
	if err := s.Done("a", ds[0].Seq); err != nil {
		t.Fatal(err)
	}
	copyPath := copySpool(t, path)

	c, err := Open(copyPath, Options{})
	if err != nil {
		t.Fatalf("open abandoned copy: %v", err)
	}
	defer c.Close()
	got := mustReady(t, c, "a", 0, 100)
	if len(got) != n-1 || string(got[0].Data) != "d1" {
		t.Fatalf("copy holds %q, want d1..d%d", datasOf(got), n-1)
	}
	if dup := mustAccept(t, c, t0, Item{Key: "0", Data: []byte("again"), Sinks: []string{"a"}}); !dup[0] {
		t.Fatal("dedup key lost in the abandoned copy")
	}
	// The sequence continues after the recovered items.
	mustAccept(t, c, t0, Item{Key: "new", Data: []byte("new"), Sinks: []string{"a"}})
	all := mustReady(t, c, "a", 0, 100)
	if last := all[len(all)-1]; string(last.Data) != "new" || last.Seq <= got[len(got)-1].Seq {
		t.Fatalf("new item seq %d not after recovered %d", last.Seq, got[len(got)-1].Seq)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestUniqueSinks(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want []string }{
		{nil, nil},
		{[]string{"a"}, []string{"a"}},
		{[]string{"a", "b"}, []string{"a", "b"}},
		{[]string{"a", "b", "a", "c", "b"}, []string{"a", "b", "c"}},
	}
	for _, tt := range tests {
		if got := uniqueSinks(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("uniqueSinks(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTimeBits_Order(t *testing.T) {
	t.Parallel()
	times := []time.Time{
		time.Unix(0, -5), time.Unix(-100, 0), time.Unix(0, 0), t0, t0.Add(time.Nanosecond), time.Unix(1<<33, 0),
	}
	sorted := slices.Clone(times)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Before(sorted[j]) })
	bits := make([]uint64, len(sorted))
	for i, tm := range sorted {
		bits[i] = timeBits(tm)
		if back := bitsTime(bits[i]); !back.Equal(tm) {
			t.Fatalf("bitsTime(timeBits(%v)) = %v", tm, back)
		}
	}
	if !slices.IsSorted(bits) {
		t.Fatalf("timeBits does not keep time order: %v", bits)
	}
}

// TestSpool_AcceptBatchRetry puts a failing function into the same bbolt transaction as the
// applies of concurrent Accept calls' journal frames, so the transaction rolls back and the
// applies run again; every Accept must still succeed with correct repeat flags and nothing
// stored twice. A function that blocks the committer holds the applies back until the
// failing one is queued behind them.
func TestSpool_AcceptBatchRetry(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{ApplyDelay: time.Nanosecond}) // each frame's apply is queued at once
	const callers = 16
	release := make(chan struct{})
	blocked := make(chan struct{})
	blockErr := make(chan error, 1)
	go func() {
		blockErr <- s.batch(func(tx *bolt.Tx) error {
			close(blocked)
			<-release
			return nil
		}, 1)
	}()
	<-blocked
	var wg sync.WaitGroup
	dups := make([][]bool, callers)
	errs := make([]error, callers+1)
	for i := range callers {
		wg.Go(func() {
			items := []Item{
				{Key: "shared", Data: []byte("shared"), Sinks: []string{"a"}},
				{Key: fmt.Sprint(i), Data: fmt.Appendf(nil, "%d", i), Sinks: []string{"a"}},
			}
			dups[i], errs[i] = s.Accept(context.Background(), items, t0)
		})
	}
	wg.Wait() // Accept returns once its frame is synced; the applies wait in the committer
	s.commits.mu.Lock()
	applies := len(s.commits.queue)
	s.commits.mu.Unlock()
	if applies == 0 {
		t.Fatal("no apply is queued behind the blocking function")
	}
	var ranBefore atomic.Bool
	failed := make(chan struct{})
	go func() {
		defer close(failed)
		errs[callers] = s.batch(func(tx *bolt.Tx) error {
			if tx.Bucket(dedupindex.L0Bucket).Get(dedupindex.Hash([]byte("shared"))) != nil {
				ranBefore.Store(true)
			}
			return errors.New("boom")
		}, 1)
	}()
	for queued := applies; queued == applies; { // wait until the failing function is queued
		time.Sleep(time.Millisecond)
		s.commits.mu.Lock()
		queued = len(s.commits.queue)
		s.commits.mu.Unlock()
	}
	close(release)
	<-failed
	if err := <-blockErr; err != nil {
		t.Fatal(err)
	}
	if !ranBefore.Load() {
		t.Fatal("no apply ran before the failing function in a shared transaction")
	}
	if errs[callers] == nil {
		t.Fatal("failing batch function reported success")
	}
	shared := 0
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if dups[i][1] {
			t.Fatalf("caller %d: own key reported as a repeat", i)
		}
		if !dups[i][0] {
			shared++
		}
	}
	if shared != 1 {
		t.Fatalf("shared key accepted %d times, want 1", shared)
	}
	if ds := mustReady(t, s, "a", 0, 100); len(ds) != callers+1 {
		t.Fatalf("stored %d deliveries, want %d", len(ds), callers+1)
	}
	if n, _ := s.DedupLen(); n != callers+1 {
		t.Fatalf("DedupLen = %d, want %d", n, callers+1)
	}
	checkStats(t, s, map[string]SinkStats{"a": {Ready: callers + 1, Oldest: t0}})
}

// TestSpool_GrowsWithReadOpen: a commit that grows the file does not wait for read
// transactions (bbolt remaps a file that outgrows its mapping only when no reader holds it).
func TestSpool_GrowsWithReadOpen(t *testing.T) {
	if initialMmapSize() == 0 {
		t.Skip("the file is mapped at its size on this platform")
	}
	s, path := openTest(t, Options{ApplyDelay: time.Nanosecond})
	tx, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	before, _ := os.Stat(path)
	data := bytes.Repeat([]byte("x"), 256<<10)
	done := make(chan error, 1)
	go func() {
		for i := range 128 { // 32 MiB: more than the file's first 16 MiB, and its default mapping
			if _, err := s.Accept(context.Background(), []Item{{Key: fmt.Sprint("k", i), Data: data, Sinks: []string{"a"}}}, t0); err != nil {
				done <- err
				return
			}
		}
		_, err := s.Stats() // waits until everything is applied
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("applying stalled while a read transaction was open")
	}
	after, _ := os.Stat(path)
	if after.Size() <= before.Size() {
		t.Fatalf("file grew from %d to %d bytes only", before.Size(), after.Size())
	}
}

// TestSpool_RescheduleBatch: one call parks ready and already scheduled deliveries with their
// own times, attempts and histories, skips what is not pending, and keeps the counters right.
func TestSpool_RescheduleBatch(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	mustAccept(t, s, t0,
		Item{Key: "1", Data: []byte("one"), Sinks: []string{"a"}},
		Item{Key: "2", Data: []byte("two"), Sinks: []string{"a"}},
		Item{Key: "3", Data: []byte("three"), Sinks: []string{"a", "b"}},
	)
	ds := mustReady(t, s, "a", 0, 10)
	s1, s2, s3 := ds[0].Seq, ds[1].Seq, ds[2].Seq
	if err := s.Reschedule("a", s1, t0.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	err := s.RescheduleBatch("a", []Retry{
		{Seq: s1, At: t0.Add(3 * time.Second), Attempt: 2, History: []byte("h1")},
		{Seq: s2, At: t0.Add(2 * time.Second), Attempt: 1, History: []byte("h2")},
		{Seq: 9999, At: t0, Attempt: 1}, // not pending: skipped
	})
	if err != nil {
		t.Fatalf("RescheduleBatch: %v", err)
	}
	if got := seqsOf(mustReady(t, s, "a", 0, 10)); !slices.Equal(got, []uint64{s3}) {
		t.Fatalf("Ready(a) = %v, want [%d]", got, s3)
	}
	checkStats(t, s, map[string]SinkStats{
		"a": {Ready: 1, Scheduled: 2, Oldest: t0},
		"b": {Ready: 1, Oldest: t0},
	})
	if next, ok, _ := s.NextScheduled(); !ok || !next.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("NextScheduled = %v, %v; want the batch's earliest", next, ok)
	}
	if _, err := s.Promote(t0.Add(3 * time.Second)); err != nil {
		t.Fatal(err)
	}
	ds = mustReady(t, s, "a", 0, 10)
	if len(ds) != 3 || ds[0].Attempt != 2 || string(ds[0].History) != "h1" || ds[1].Attempt != 1 || string(ds[1].History) != "h2" {
		t.Fatalf("promoted = %+v", ds)
	}
	if err := s.RescheduleBatch("a", []Retry{{Seq: s2, At: t0, Attempt: -1}}); err == nil {
		t.Fatal("negative attempt accepted")
	}
}

// TestSpool_IdleWritesNothing: once every delivery is done and applied, what a running relay
// keeps calling (Promote with nothing due, ExpireDedup with nothing expired, reads) commits
// no write transaction; only real work does.
func TestSpool_IdleWritesNothing(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t, Options{})
	now := time.Now()
	mustAccept(t, s, now, Item{Key: "1", Data: []byte("one"), Sinks: []string{"a"}}, Item{Key: "2", Data: []byte("two"), Sinks: []string{"a"}})
	ds := mustReady(t, s, "a", 0, 10)
	if err := s.Reschedule("a", ds[1].Seq, now.Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("a", ds[0].Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stats(); err != nil { // applies whatever waits
		t.Fatal(err)
	}
	idle := func(what string) {
		t.Helper()
		before := s.WriteTransactions()
		for range 5 {
			if got, err := s.Promote(now.Add(time.Minute)); err != nil || len(got) != 0 {
				t.Fatalf("Promote = %v, %v", got, err)
			}
			if n, err := s.ExpireDedup(now, 100); err != nil || n != 0 {
				t.Fatalf("ExpireDedup = %d, %v", n, err)
			}
			if _, _, err := s.NextScheduled(); err != nil {
				t.Fatal(err)
			}
			mustReady(t, s, "a", 0, 10)
			if _, err := s.Stats(); err != nil {
				t.Fatal(err)
			}
		}
		if after := s.WriteTransactions(); after != before {
			t.Fatalf("%s: %d write transactions while idle", what, after-before)
		}
	}
	idle("one delivery scheduled in an hour")
	// Work is written: a due delivery is promoted.
	before := s.WriteTransactions()
	if got, err := s.Promote(now.Add(2 * time.Hour)); err != nil || len(got) != 1 {
		t.Fatalf("Promote of a due delivery = %v, %v", got, err)
	}
	if s.WriteTransactions() == before {
		t.Fatal("a promotion was not counted as a write transaction")
	}
	if err := s.Done("a", ds[1].Seq); err != nil {
		t.Fatal(err)
	}
	idle("nothing pending")
}
