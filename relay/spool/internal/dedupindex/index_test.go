package dedupindex

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// tiny makes the index flush, merge and finalise runs after a handful of keys.
var tiny = Config{L0Max: 8, FanIn: 3, MaxRun: 60, Chunk: 4}

var (
	testMeta = []byte("meta")
	t0       = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

// openTest opens a bbolt file in a temporary directory with the buckets the index's owner
// creates, and an index on it.
func openTest(t testing.TB, cfg Config) (*bolt.DB, *Index) {
	t.Helper()
	return openTestFile(t, cfg, nil)
}

// openTestFile is openTest with bbolt's options opts.
func openTestFile(t testing.TB, cfg Config, opts *bolt.Options) (*bolt.DB, *Index) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "index.db"), 0o600, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{L0Bucket, RunsBucket, testMeta} {
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d := New(cfg, testMeta)
	if err := db.View(d.Load); err != nil {
		t.Fatal(err)
	}
	// Read-only lookups read the partitions' pages from the file, as in the spool.
	f, err := os.Open(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	d.SetPageFile(f, db.Info().PageSize)
	return db, d
}

// accept looks each key up as of now and adds those not seen, in one transaction, the way the
// spool's journal and apply do; it returns which keys were seen.
func accept(t *testing.T, db *bolt.DB, d *Index, window time.Duration, now time.Time, keys ...string) []bool {
	t.Helper()
	seen := make([]bool, len(keys))
	known := make([]bool, len(keys))
	err := db.View(func(tx *bolt.Tx) error {
		v := d.View(tx)
		for i, k := range keys {
			seen[i], known[i] = v.Lookup(Hash([]byte(k)), now.Add(-window))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		w := d.Writer(tx)
		for i, k := range keys {
			if !seen[i] {
				if err := w.Add(Hash([]byte(k)), now, now.Add(-window), !known[i]); err != nil {
					return err
				}
			}
		}
		return w.Finish(now, window)
	})
	if err != nil {
		t.Fatal(err)
	}
	return seen
}

func check(t *testing.T, db *bolt.DB, d *Index) {
	t.Helper()
	if err := db.View(d.Check); err != nil {
		t.Fatal(err)
	}
}

func length(t *testing.T, db *bolt.DB, d *Index) int {
	t.Helper()
	var n uint64
	if err := db.View(func(tx *bolt.Tx) error { n = d.Len(tx); return nil }); err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func runsOf(t *testing.T, db *bolt.DB, d *Index) []RunInfo {
	t.Helper()
	var rs []RunInfo
	err := db.View(func(tx *bolt.Tx) error {
		var err error
		rs, err = d.Runs(tx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestIndex_Model adds thousands of keys drawn from a small pool to a tiny index, with time
// moving on, expiry, reloads and lost filters, and checks every lookup against a map of when
// each key was last added: a key is seen exactly while it is younger than the window,
// whichever level holds it.
func TestIndex_Model(t *testing.T) {
	t.Parallel()
	slow := tiny
	slow.SweepRatio = 1 // final runs wait for a sweep going round in ~128 flushes
	for _, tt := range []struct {
		pool int
		cfg  Config
	}{{60, tiny}, {400, tiny}, {400, slow}} {
		pool, cfg := tt.pool, tt.cfg
		t.Run(fmt.Sprint("keys=", pool, ",sweep=", cfg.SweepRatio), func(t *testing.T) {
			t.Parallel()
			const window = 100 * time.Second
			db, d := openTest(t, cfg)
			rng := rand.New(rand.NewPCG(2, uint64(pool)))
			model := map[string]time.Time{}
			levels := map[int]bool{}
			now := t0
			for step := range 2000 {
				now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
				switch r := rng.IntN(100); {
				case r < 2: // as a reopened spool: a new index loads the filters
					d = New(cfg, testMeta)
					if err := db.View(d.Load); err != nil {
						t.Fatal(err)
					}
				case r < 4:
					d.DropFilters()
				case r < 8:
					err := db.Update(func(tx *bolt.Tx) error {
						_, err := d.Expire(tx, now.Add(-window), 1+rng.IntN(50))
						return err
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				keys := make([]string, 1+rng.IntN(4))
				for i := range keys {
					keys[i] = fmt.Sprint("key-", rng.IntN(pool))
				}
				keys = uniq(keys)
				seen := accept(t, db, d, window, now, keys...)
				for i, k := range keys {
					at, ok := model[k]
					if want := ok && now.Sub(at) < window; seen[i] != want {
						t.Fatalf("step %d: %s at %v: seen = %v, want %v (last added %v)", step, k, now.Sub(t0), seen[i], want, at.Sub(t0))
					}
					if !seen[i] {
						model[k] = now
					}
				}
				if step%100 == 99 {
					check(t, db, d)
				}
				for _, r := range runsOf(t, db, d) {
					levels[r.Level] = true
				}
				if partsLen(t, db) > 0 {
					levels[-1] = true
				}
			}
			if !levels[0] || !levels[1] || (pool > 100 && !levels[-1]) || (cfg.SweepRatio == 1 && !levels[FinalLevel]) {
				t.Fatalf("run levels seen: %v; want flushes, merges and (with many keys) final runs swept into partitions (-1)", levels)
			}
			check(t, db, d)
		})
	}
}

// partsLen returns the records the partitions hold, by their metadata.
func partsLen(t *testing.T, db *bolt.DB) int {
	t.Helper()
	n := 0
	err := db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = (&Index{}).PartsLen(tx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func uniq(keys []string) []string {
	seen := map[string]bool{}
	out := keys[:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// TestIndex_MergesAndFinalises checks the shape the index keeps: L0 is flushed at L0Max keys,
// FanIn runs of a level are merged into one of the next, runs that would merge past MaxRun are
// marked final, and no level but the final one holds FanIn runs.
func TestIndex_MergesAndFinalises(t *testing.T) {
	t.Parallel()
	db, d := openTest(t, tiny)
	for i := range 400 {
		accept(t, db, d, time.Hour, t0.Add(time.Duration(i)*time.Millisecond), fmt.Sprint("k", i))
	}
	if n := length(t, db, d); n != 400 {
		t.Fatalf("Len = %d, want 400", n)
	}
	byLevel := map[int]int{}
	total := 0
	for _, r := range runsOf(t, db, d) {
		byLevel[r.Level]++
		total += r.Count
		if r.Level != FinalLevel && byLevel[r.Level] >= tiny.FanIn {
			t.Fatalf("level %d holds %d runs", r.Level, byLevel[r.Level])
		}
		if r.Count > tiny.MaxRun {
			t.Fatalf("run %d holds %d records", r.ID, r.Count)
		}
	}
	parts := partsLen(t, db)
	if parts == 0 || byLevel[1] == 0 {
		t.Fatalf("runs by level %v, %d records in partitions: want merged runs and final ones swept into partitions", byLevel, parts)
	}
	var l0 uint64
	_ = db.View(func(tx *bolt.Tx) error { l0 = d.L0Len(tx); return nil })
	if int(l0) >= tiny.L0Max || total+int(l0)+parts != 400 {
		t.Fatalf("L0 holds %d, runs %d, partitions %d: want < %d and 400 in all", l0, total, parts, tiny.L0Max)
	}
	check(t, db, d)
	if seen := accept(t, db, d, time.Hour, t0.Add(time.Minute), "k0", "k199", "k399"); !seen[0] || !seen[1] || !seen[2] {
		t.Fatalf("seen = %v, want every key", seen)
	}
}

// TestIndex_ExpireRewrites: Expire writes a run again without its expired records when at
// least half of them are, and leaves it alone (they are not seen anyway) otherwise.
func TestIndex_ExpireRewrites(t *testing.T) {
	t.Parallel()
	const window = time.Minute
	for _, tt := range []struct{ old, want int }{{5, 5}, {3, 0}} {
		t.Run(fmt.Sprint("old=", tt.old), func(t *testing.T) {
			t.Parallel()
			db, d := openTest(t, tiny)
			var keys []string
			for i := range tiny.L0Max {
				keys = append(keys, fmt.Sprint("k", i))
			}
			accept(t, db, d, window, t0, keys[:tt.old]...)
			accept(t, db, d, window, t0.Add(window/2), keys[tt.old:]...) // fills L0: one run
			if rs := runsOf(t, db, d); len(rs) != 1 || rs[0].Count != tiny.L0Max {
				t.Fatalf("runs %+v, want one of %d", rs, tiny.L0Max)
			}
			now := t0.Add(window + time.Second)
			var got int
			err := db.Update(func(tx *bolt.Tx) error {
				var err error
				got, err = d.Expire(tx, now.Add(-window), 100)
				return err
			})
			if err != nil || got != tt.want {
				t.Fatalf("Expire = %d, %v; want %d", got, err, tt.want)
			}
			if n := length(t, db, d); n != tiny.L0Max-tt.want {
				t.Fatalf("Len = %d, want %d", n, tiny.L0Max-tt.want)
			}
			check(t, db, d)
			seen := accept(t, db, d, window, now, keys...)
			for i := range seen {
				if seen[i] != (i >= tt.old) {
					t.Fatalf("seen = %v: want only the keys added within the window", seen)
				}
			}
		})
	}
}

// TestIndex_ExpireRunsAndL0: Expire drops whole runs past the cutoff and the expired keys of
// L0, up to max, and counts what it deleted.
func TestIndex_ExpireRunsAndL0(t *testing.T) {
	t.Parallel()
	const window = time.Minute
	db, d := openTest(t, tiny)
	var old []string
	for i := range 2 * tiny.L0Max { // two full runs
		old = append(old, fmt.Sprint("old", i))
	}
	accept(t, db, d, window, t0, old...)
	accept(t, db, d, window, t0, "l0-a", "l0-b", "l0-c") // stay in L0
	accept(t, db, d, window, t0.Add(window), "new")
	now := t0.Add(window + time.Second)
	expire := func(max int) int {
		var n int
		err := db.Update(func(tx *bolt.Tx) error {
			var err error
			n, err = d.Expire(tx, now.Add(-window), max)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := expire(2*tiny.L0Max + 1); n != 2*tiny.L0Max+1 {
		t.Fatalf("Expire = %d, want both runs and one L0 key", n)
	}
	if n := expire(100); n != 2 {
		t.Fatalf("Expire = %d, want the two L0 keys left", n)
	}
	if n := length(t, db, d); n != 1 {
		t.Fatalf("Len = %d, want 1", n)
	}
	check(t, db, d)
	if seen := accept(t, db, d, window, now, "new", "old0"); !seen[0] || seen[1] {
		t.Fatalf("seen = %v, want [true false]", seen)
	}
}

// TestWriter_Add: a key L0 holds with a time after the cutoff is left alone (a replayed frame
// the file already recorded); one before it is replaced, in place; only new entries count.
func TestWriter_Add(t *testing.T) {
	t.Parallel()
	db, d := openTest(t, Config{L0Max: 100})
	h := Hash([]byte("k"))
	add := func(at, cutoff time.Time, fresh bool) {
		t.Helper()
		err := db.Update(func(tx *bolt.Tx) error {
			w := d.Writer(tx)
			if err := w.Add(h, at, cutoff, fresh); err != nil {
				return err
			}
			return w.Finish(at, time.Hour)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	stored := func() time.Time {
		var v []byte
		_ = db.View(func(tx *bolt.Tx) error { v = append(v, tx.Bucket(L0Bucket).Get(h)...); return nil })
		return time.Unix(0, int64(decUint(v)^(1<<63))).UTC()
	}
	add(t0, t0.Add(-time.Hour), true)
	add(t0.Add(time.Minute), t0.Add(-time.Hour), false) // replayed: t0 is after the cutoff
	if got := stored(); !got.Equal(t0) {
		t.Fatalf("stored %v, want %v kept", got, t0)
	}
	later := t0.Add(2 * time.Hour)
	add(later, later.Add(-time.Hour), false) // accepted anew after its window
	if got := stored(); !got.Equal(later) {
		t.Fatalf("stored %v, want %v", got, later)
	}
	if n := length(t, db, d); n != 1 {
		t.Fatalf("Len = %d, want 1 (one key)", n)
	}
	check(t, db, d)
}

// TestIndex_LoadBuildsMissingFilter: a run stored without its filter gets one built from its
// records by Load, and lookups find its keys either way.
func TestIndex_LoadBuildsMissingFilter(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	db, d := openTest(t, tiny)
	var keys []string
	for i := range tiny.L0Max {
		keys = append(keys, fmt.Sprint("k", i))
	}
	accept(t, db, d, window, t0, keys...)
	rs := runsOf(t, db, d)
	if len(rs) != 1 {
		t.Fatalf("runs %+v, want one", rs)
	}
	err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(RunsBucket).Bucket(encUint(rs[0].ID))
		var del [][]byte
		c := b.Cursor()
		for k, _ := c.Seek([]byte{bloomPrefix}); k != nil && k[0] == bloomPrefix; k, _ = c.Next() {
			del = append(del, append([]byte{}, k...))
		}
		if len(del) == 0 {
			return fmt.Errorf("run %d has no stored filter", rs[0].ID)
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d2 := New(tiny, testMeta)
	if err := db.View(d2.Load); err != nil {
		t.Fatal(err)
	}
	if f := d2.blooms[rs[0].ID].f; f == nil || !f.has(Hash([]byte("k3"))) {
		t.Fatal("Load did not build the missing filter from the run's records")
	}
	for _, idx := range []*Index{d, d2} {
		seen := accept(t, db, idx, window, t0.Add(time.Minute), keys...)
		for i := range seen {
			if !seen[i] {
				t.Fatalf("%s not seen", keys[i])
			}
		}
	}
}

// TestIndex_WriteFinalRunAndResetL0: what the spool's format-2 migration uses. A final run is
// never merged, holds the records it was given, and ResetL0 empties L0 and its count.
func TestIndex_WriteFinalRunAndResetL0(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	db, d := openTest(t, tiny)
	var recs []byte
	var hs [][]byte
	for i := range 5 {
		hs = append(hs, Hash(fmt.Append(nil, "m", i)))
	}
	slices.SortFunc(hs, bytes.Compare)
	for i, h := range hs {
		recs = append(recs, h...)
		recs = append(recs, encUint(timeBits(t0.Add(time.Duration(i)*time.Second)))...)
	}
	err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(L0Bucket).Put(Hash([]byte("stale")), encUint(timeBits(t0))); err != nil {
			return err
		}
		if err := d.ResetL0(tx); err != nil {
			return err
		}
		if err := d.WriteFinalRun(tx, recs[:len(recs)-1]); err == nil {
			return fmt.Errorf("a run of %d bytes was taken", len(recs)-1)
		}
		return d.WriteFinalRun(tx, recs)
	})
	if err != nil {
		t.Fatal(err)
	}
	rs := runsOf(t, db, d)
	if len(rs) != 1 || rs[0].Level != FinalLevel || rs[0].Count != 5 ||
		rs[0].MinT != timeBits(t0) || rs[0].MaxT != timeBits(t0.Add(4*time.Second)) {
		t.Fatalf("runs %+v, want one final run of 5 from t0 to t0+4s", rs)
	}
	var l0 uint64
	var stale []byte
	_ = db.View(func(tx *bolt.Tx) error {
		l0, stale = d.L0Len(tx), tx.Bucket(L0Bucket).Get(Hash([]byte("stale")))
		return nil
	})
	if l0 != 0 || stale != nil {
		t.Fatalf("after ResetL0: L0 count %d, stale key %x", l0, stale)
	}
	var seen bool
	_ = db.View(func(tx *bolt.Tx) error {
		seen, _ = d.View(tx).Lookup(Hash([]byte("m3")), t0.Add(-time.Second))
		return nil
	})
	if !seen {
		t.Fatal("a key of the final run is not seen")
	}
}
