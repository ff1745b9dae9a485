package spool

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// tinyDedup makes the index flush, merge and finalise runs after a handful of keys.
var tinyDedup = dedupindex.Config{L0Max: 8, FanIn: 3, MaxRun: 60, Chunk: 4}

// TestDedupIndex_Model drives a spool with a tiny dedup index through thousands of
// acceptances of keys drawn from a small pool, with time moving on, expiry, restarts and lost
// Bloom filters, and checks every verdict against a map of when each key was last accepted:
// a key is a repeat exactly while it is younger than the window, whichever level holds it.
func TestDedupIndex_Model(t *testing.T) {
	t.Parallel()
	// 60 keys come back about once a window: repeats and re-acceptances after the window;
	// 400 mostly come back later, so runs fill up and get marked final.
	for _, pool := range []int{60, 400} {
		t.Run(fmt.Sprint("keys=", pool), func(t *testing.T) { dedupModel(t, pool) })
	}
}

func dedupModel(t *testing.T, pool int) {
	const window = 100 * time.Second
	opt := Options{DedupWindow: window, ApplyDelay: time.Nanosecond, dedup: tinyDedup}
	s, path := openTest(t, opt)
	rng := rand.New(rand.NewPCG(1, uint64(pool)))
	model := map[string]time.Time{}
	now := t0
	levels := map[int]bool{} // levels of the runs seen along the way
	for step := range 2000 {
		now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		switch r := rng.IntN(100); {
		case r < 2:
			s = reopen(t, s, path, opt)
		case r < 4:
			s.dedup.DropFilters() // as after a rolled-back merge: runs are searched instead
		case r < 8:
			if _, err := s.ExpireDedup(now, 1+rng.IntN(50)); err != nil {
				t.Fatal(err)
			}
		}
		n := 1 + rng.IntN(4)
		items := make([]Item, n)
		want := make([]bool, n)
		inCall := map[string]bool{}
		for i := range items {
			k := fmt.Sprint("key-", rng.IntN(pool))
			items[i] = item(k, "x")
			at, ok := model[k]
			want[i] = inCall[k] || (ok && now.Sub(at) < window)
			inCall[k] = true
		}
		dup := mustAccept(t, s, now, items...)
		for i, it := range items {
			if dup[i] != want[i] {
				t.Fatalf("step %d: %s accepted at %v: dup = %v, want %v (last accepted %v)", step, it.Key, now.Sub(t0), dup[i], want[i], model[it.Key].Sub(t0))
			}
			if !dup[i] {
				model[it.Key] = now
			}
		}
		if step%100 == 99 {
			checkDedupCounts(t, s)
		}
		err := s.db.View(func(tx *bolt.Tx) error {
			rs, err := s.dedup.Runs(tx)
			for _, r := range rs {
				levels[r.Level] = true
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !levels[0] || !levels[1] || (pool > 100 && !levels[dedupindex.FinalLevel]) {
		t.Fatalf("run levels seen: %v; want flushes, merges and (with many keys) final runs", levels)
	}
	// Expiry keeps every key still in the window (and may keep some past it, in runs only
	// partly past it); once the window has passed for all of them, it leaves nothing.
	expireAll := func(now time.Time) {
		for {
			n, err := s.ExpireDedup(now, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if n < 1000 {
				return
			}
		}
	}
	expireAll(now)
	live := 0
	for _, at := range model {
		if now.Sub(at) < window {
			live++
		}
	}
	if got, err := s.DedupLen(); err != nil || got < live {
		t.Fatalf("DedupLen after expiry = %d, %v; want at least %d", got, err, live)
	}
	for k, at := range model {
		if now.Sub(at) < window {
			if dup := mustAccept(t, s, now, item(k, "y")); !dup[0] {
				t.Fatalf("%s, accepted %v before, was lost by expiry", k, now.Sub(at))
			}
		}
	}
	checkDedupCounts(t, s)
	expireAll(now.Add(window))
	checkDedupCounts(t, s)
	if got, err := s.DedupLen(); err != nil || got != 0 {
		t.Fatalf("DedupLen once the window has passed = %d, %v; want 0", got, err)
	}
}

// checkDedupCounts checks the index's bookkeeping: the L0 count, the record total, and each
// run's metadata against its chunks and its stored filter against its records.
func checkDedupCounts(t *testing.T, s *Spool) {
	t.Helper()
	s.apply.waitApplied()
	if err := s.db.View(s.dedup.Check); err != nil {
		t.Fatal(err)
	}
}

// TestDedupIndex_MergesAndFinalises checks the shape the index keeps: L0 is flushed at
// l0Max keys, fanIn runs of a level are merged into one of the next, runs that would merge
// past maxRun are marked final (and swept into the partitions), and no level but the final
// one holds fanIn runs.
func TestDedupIndex_MergesAndFinalises(t *testing.T) {
	t.Parallel()
	opt := Options{DedupWindow: time.Hour, ApplyDelay: time.Nanosecond, dedup: tinyDedup}
	s, _ := openTest(t, opt)
	for i := range 400 {
		mustAccept(t, s, t0.Add(time.Duration(i)*time.Millisecond), item(fmt.Sprint("k", i), "x"))
	}
	if n, err := s.DedupLen(); err != nil || n != 400 {
		t.Fatalf("DedupLen = %d, %v; want 400", n, err)
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		rs, err := s.dedup.Runs(tx)
		if err != nil {
			return err
		}
		byLevel := map[int]int{}
		total := 0
		for _, r := range rs {
			byLevel[r.Level]++
			total += r.Count
			if r.Level != dedupindex.FinalLevel && byLevel[r.Level] >= tinyDedup.FanIn {
				return fmt.Errorf("level %d holds %d runs", r.Level, byLevel[r.Level])
			}
			if r.Count > tinyDedup.MaxRun {
				return fmt.Errorf("run %d holds %d records", r.ID, r.Count)
			}
		}
		if byLevel[dedupindex.FinalLevel] == 0 || byLevel[1] == 0 {
			return fmt.Errorf("runs by level %v: want merged and final runs", byLevel)
		}
		l0 := int(s.dedup.L0Len(tx))
		parts, err := s.dedup.PartsLen(tx)
		if err != nil {
			return err
		}
		if l0 >= tinyDedup.L0Max || total+l0+parts != 400 {
			return fmt.Errorf("L0 holds %d, runs %d, partitions %d: want < %d and 400 in all", l0, total, parts, tinyDedup.L0Max)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k0", "k199", "k399"} {
		if dup := mustAccept(t, s, t0.Add(time.Minute), item(k, "again")); !dup[0] {
			t.Fatalf("%s not recognised", k)
		}
	}
}

// TestOpen_MigratesFormat2 turns a format-2 index (one B+tree and a time index) into runs, in
// several transactions, and keeps every key, also when a crash stopped an earlier migration
// after its first transaction.
func TestOpen_MigratesFormat2(t *testing.T) {
	t.Parallel()
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprint("crash=", crash), func(t *testing.T) { migrateFormat2(t, crash) })
	}
}

func migrateFormat2(t *testing.T, crash bool) {
	const window = time.Hour
	opt := Options{DedupWindow: window, dedup: tinyDedup}
	s, path := openTest(t, opt)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 150 // more than two migration transactions of maxRun keys
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(metaVersion, encUint(2)); err != nil {
			return err
		}
		dt, err := tx.CreateBucket(bucketDedupT)
		if err != nil {
			return err
		}
		for i := range n {
			h, at := dedupindex.Hash(fmt.Append(nil, "v2-", i)), encTime(t0.Add(time.Duration(i)*time.Second))
			if err := tx.Bucket(dedupindex.L0Bucket).Put(h, at); err != nil {
				return err
			}
			if err := dt.Put(dedupTKey(at, h), nil); err != nil {
				return err
			}
		}
		// A stale index entry: the key was accepted again later.
		if err := dt.Put(dedupTKey(encTime(t0.Add(-time.Hour)), dedupindex.Hash([]byte("v2-7"))), nil); err != nil {
			return err
		}
		return meta.Put(dedupindex.MetaCountKey, encUint(n))
	})
	if err == nil && crash {
		err = db.Update(func(tx *bolt.Tx) error {
			_, _, err := migrateRun(tx, dedupindex.New(tinyDedup, bucketMeta))
			return err
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err = Open(path, opt)
	if err != nil {
		t.Fatalf("open format 2: %v", err)
	}
	defer s.Close()
	var first dedupindex.RunInfo
	err = s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketDedupT) != nil {
			return fmt.Errorf("format 2 time index left behind")
		}
		if v := decUint(tx.Bucket(bucketMeta).Get(metaVersion)); v != formatVersion {
			return fmt.Errorf("version %d after the migration", v)
		}
		rs, err := s.dedup.Runs(tx)
		if len(rs) < 3 {
			return fmt.Errorf("%d runs, want %d keys in runs of at most %d", len(rs), n, tinyDedup.MaxRun)
		}
		total := 0
		for i, r := range rs {
			total += r.Count
			if r.Level != dedupindex.FinalLevel || (i > 0 && r.MinT <= rs[i-1].MaxT) {
				return fmt.Errorf("runs %+v: want final runs, each after the one before", rs)
			}
		}
		if total != n {
			return fmt.Errorf("runs hold %d keys, want %d", total, n)
		}
		first = rs[0]
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if dup := mustAccept(t, s, t0.Add(time.Minute), item(fmt.Sprint("v2-", i), "again")); !dup[0] {
			t.Fatalf("key v2-%d lost in the migration", i)
		}
	}
	if got, _ := s.DedupLen(); got != n {
		t.Fatalf("DedupLen = %d, want %d", got, n)
	}
	checkDedupCounts(t, s)
	// The runs cover stretches of time, so they expire whole.
	end := bitsTime(first.MaxT).Add(window)
	if got, err := s.ExpireDedup(end, 1000); err != nil || got != first.Count {
		t.Fatalf("ExpireDedup = %d, %v; want the first run's %d keys", got, err, first.Count)
	}
}

// TestDedupIndex_ExpireRewrites: ExpireDedup writes a run again without its expired records
// when at least half of them are, and leaves it alone (they are not seen anyway) otherwise.
func TestDedupIndex_ExpireRewrites(t *testing.T) {
	t.Parallel()
	const window = time.Minute
	for _, tt := range []struct{ old, want int }{{5, 5}, {3, 0}} {
		t.Run(fmt.Sprint("old=", tt.old), func(t *testing.T) {
			s, _ := openTest(t, Options{DedupWindow: window, ApplyDelay: time.Nanosecond, dedup: tinyDedup})
			var items []Item
			for i := range tinyDedup.L0Max {
				items = append(items, item(fmt.Sprint("k", i), "x"))
			}
			mustAccept(t, s, t0, items[:tt.old]...)
			mustAccept(t, s, t0.Add(window/2), items[tt.old:]...) // fills L0: one run of 8
			now := t0.Add(window + time.Second)
			if got, err := s.ExpireDedup(now, 100); err != nil || got != tt.want {
				t.Fatalf("ExpireDedup = %d, %v; want %d", got, err, tt.want)
			}
			if got, _ := s.DedupLen(); got != tinyDedup.L0Max-tt.want {
				t.Fatalf("DedupLen = %d, want %d", got, tinyDedup.L0Max-tt.want)
			}
			checkDedupCounts(t, s)
			dup := mustAccept(t, s, now, items...)
			for i := range dup {
				if dup[i] != (i >= tt.old) {
					t.Fatalf("dup = %v: want only the keys accepted within the window", dup)
				}
			}
		})
	}
}

// TestDedupIndex_MergeSlack: a merge triggered by a frame accepted at T keeps a key accepted
// within the window before a request whose own time is a little behind T.
func TestDedupIndex_MergeSlack(t *testing.T) {
	t.Parallel()
	const window = 100 * time.Second
	s, _ := openTest(t, Options{DedupWindow: window, ApplyDelay: time.Nanosecond, dedup: tinyDedup})
	batch := func(at time.Time, prefix string) {
		var items []Item
		for i := range tinyDedup.L0Max {
			items = append(items, item(fmt.Sprint(prefix, i), "x"))
		}
		mustAccept(t, s, at, items...)
	}
	batch(t0, "a") // a0 is the key
	batch(t0, "b")
	batch(t0.Add(window+time.Second), "c") // the third run of level 0: a merge
	checkDedupCounts(t, s)
	if dup := mustAccept(t, s, t0.Add(window-time.Second), item("a0", "again")); !dup[0] {
		t.Fatal("a key accepted 99s before, in a 100s window, was dropped by a merge")
	}
}

// TestDedupIndex_Concurrent: lookups made while other commits flush, merge and expire runs
// still find every key in its window (run with -race). Each goroutine accepts key i at second
// i and accepts key i-19 again; ExpireDedup keeps expiring what every goroutine has left more
// than the 20-second window behind.
func TestDedupIndex_Concurrent(t *testing.T) {
	t.Parallel()
	const window = 20 * time.Second
	s, _ := openTest(t, Options{DedupWindow: window, ApplyDelay: time.Nanosecond, dedup: tinyDedup})
	var progress [8]atomic.Int64
	var removed atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				progress[g].Store(int64(i))
				now := t0.Add(time.Duration(i) * time.Second)
				k := fmt.Sprint("g", g, "-", i)
				if dup, err := s.Accept(context.Background(), []Item{item(k, "1")}, now); err != nil || dup[0] {
					errs <- fmt.Errorf("first %s: dup %v, %v", k, dup, err)
					return
				}
				if i >= 19 { // accepted 19 s ago, at the edge of the window
					k := fmt.Sprint("g", g, "-", i-19)
					if dup, err := s.Accept(context.Background(), []Item{item(k, "2")}, now); err != nil || !dup[0] {
						errs <- fmt.Errorf("again %s: dup %v, %v", k, dup, err)
						return
					}
				}
				// Expire what every goroutine has left behind the window.
				least := int64(i)
				for j := range progress {
					least = min(least, progress[j].Load())
				}
				n, err := s.ExpireDedup(t0.Add(time.Duration(least)*time.Second), 10)
				if err != nil {
					errs <- err
					return
				}
				removed.Add(int64(n))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if removed.Load() == 0 {
		t.Error("nothing expired meanwhile")
	}
	checkDedupCounts(t, s)
}
