package dedupindex

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// pagedView returns a pageReader over db's file for read transaction tx, as a View's.
func pagedView(t testing.TB, db *bolt.DB, tx *bolt.Tx) *pageReader {
	t.Helper()
	f, err := os.Open(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &pageReader{pf: &pageFile{f: f, pageSize: db.Info().PageSize}, limit: tx.Size()}
}

// TestPageReader_SeekAsCursor: over a bucket of three levels, with keys of every length,
// values from empty to overflowing their page and a nested bucket, the page walk finds for
// every target what bbolt's Cursor.Seek finds, and the floor walk what Seek and Prev find (the
// last key at or before it), without once giving up on a page.
func TestPageReader_SeekAsCursor(t *testing.T) {
	t.Parallel()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "pages.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var keys [][]byte
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("t"))
		if err != nil {
			return err
		}
		for i := range 30_000 {
			k := make([]byte, 1+rng.IntN(40))
			for j := range k {
				k[j] = byte(rng.IntN(256))
			}
			v := make([]byte, rng.IntN(300))
			if i%997 == 0 {
				v = make([]byte, 5000+rng.IntN(9000)) // an overflow page
			}
			for j := range v {
				v[j] = byte(i + j)
			}
			if err := b.Put(k, v); err != nil {
				return err
			}
			keys = append(keys, k)
		}
		_, err = b.CreateBucket([]byte("\x80nested"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("t"))
		if b.Stats().Depth < 3 {
			t.Fatalf("tree depth %d, want 3 or more", b.Stats().Depth)
		}
		r := pagedView(t, db, tx)
		targets := [][]byte{nil, {}, {0}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, []byte("\x80nested"), []byte("\x80nest")}
		for _, k := range keys {
			targets = append(targets, k, append(slices.Clip(k), 0), k[:len(k)-1])
		}
		floors := 0
		for i, target := range targets {
			c := b.Cursor()
			wk, wv := c.Seek(target)
			gk, gv := r.seekBucket(b, 0, target)
			if !bytes.Equal(gk, wk) || !bytes.Equal(gv, wv) || (gv == nil) != (wv == nil) {
				return fmt.Errorf("target %d %x: got %x (value %d bytes, nil %v), cursor %x (%d bytes, nil %v)",
					i, target, gk, len(gv), gv == nil, wk, len(wv), wv == nil)
			}
			switch {
			case wk == nil:
				wk, wv = c.Last()
			case !bytes.Equal(wk, target):
				wk, wv = c.Prev()
			}
			gk, gv = r.floorBucket(b, target)
			if !bytes.Equal(gk, wk) || !bytes.Equal(gv, wv) || (gv == nil) != (wv == nil) {
				return fmt.Errorf("floor of target %d %x: got %x (value %d bytes, nil %v), cursor %x (%d bytes, nil %v)",
					i, target, gk, len(gv), gv == nil, wk, len(wv), wv == nil)
			}
			if wk != nil {
				floors++
			}
		}
		t.Logf("%d seeks, %d preads, %d floors found", r.paged, r.preads, floors)
		if r.cursor != 0 || r.paged != 2*len(targets) || r.floors != len(targets) {
			return fmt.Errorf("%d seeks from the pages (%d floors), %d sent to the cursor; want %d, %d and 0",
				r.paged, r.floors, r.cursor, 2*len(targets), len(targets))
		}
		if floors == len(targets) {
			return fmt.Errorf("every target has a key at or before it: the tree's first key is not tested")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPageReader_GivesUpOnDamage: a page whose header names another page, a flag bbolt does
// not write there, or elements pointing out of it, sends the seek back to the cursor.
func TestPageReader_GivesUpOnDamage(t *testing.T) {
	t.Parallel()
	const ps = 4096
	page := func(id uint64, flags, count uint16) []byte {
		p := make([]byte, 3*ps)
		ne := binary.NativeEndian
		ne.PutUint64(p[2*ps:], id)
		ne.PutUint16(p[2*ps+8:], flags)
		ne.PutUint16(p[2*ps+10:], count)
		return p
	}
	good := page(2, leafPageFlag, 1)
	e := good[2*ps+pageHeaderSize:]
	binary.NativeEndian.PutUint32(e[4:], pageElementSize) // key right after the element
	binary.NativeEndian.PutUint32(e[8:], 1)
	binary.NativeEndian.PutUint32(e[12:], 1)
	copy(good[2*ps+pageHeaderSize+pageElementSize:], "kv")
	outside := slices.Clone(good)
	binary.NativeEndian.PutUint32(outside[2*ps+pageHeaderSize+12:], ps) // value past the page
	for _, tt := range []struct {
		name string
		file []byte
		ok   bool
	}{
		{"sound", good, true},
		{"another id", page(7, leafPageFlag, 1), false},
		{"meta flag", page(2, 0x04, 1), false},
		{"more elements than fit", page(2, leafPageFlag, 300), false},
		{"value outside", outside, false},
		{"empty branch", page(2, branchPageFlag, 0), false},
		{"short file", good[:2*ps+100], false},
	} {
		r := &pageReader{pf: &pageFile{f: bytes.NewReader(tt.file), pageSize: ps}, limit: int64(len(tt.file))}
		k, v, found, ok := r.seek(2, []byte("a"))
		if ok != tt.ok || (ok && (!found || string(k) != "k" || string(v) != "v")) {
			t.Errorf("%s: seek %q %q found %v ok %v; want ok %v", tt.name, k, v, found, ok, tt.ok)
		}
	}
}

// FuzzPageReader: no file makes the page walk panic or read past what it was given.
func FuzzPageReader(f *testing.F) {
	f.Add(make([]byte, 4*256), uint64(2), []byte("k"))
	cycle := make([]byte, 3*256) // page 2: a branch whose one child is page 2
	binary.NativeEndian.PutUint64(cycle[512:], 2)
	binary.NativeEndian.PutUint16(cycle[512+8:], branchPageFlag)
	binary.NativeEndian.PutUint16(cycle[512+10:], 1)
	binary.NativeEndian.PutUint32(cycle[512+16:], pageElementSize)
	binary.NativeEndian.PutUint32(cycle[512+20:], 1)
	binary.NativeEndian.PutUint64(cycle[512+24:], 2)
	f.Add(cycle, uint64(2), []byte("k"))
	f.Fuzz(func(t *testing.T, file []byte, root uint64, target []byte) {
		const ps = 256
		// With the branch cache on: a branch page held must not let a damaged tree's cycle
		// go round for ever.
		r := &pageReader{pf: &pageFile{f: bytes.NewReader(file), pageSize: ps}, limit: int64(len(file))}
		for i := range 4 { // the later seeks find the branch pages of the first held
			seek := r.seek
			if i%2 == 1 {
				seek = r.floor
			}
			k, v, found, ok := seek(root, target)
			if !ok && (k != nil || v != nil || found) {
				t.Fatalf("gave up but returned %x %x %v", k, v, found)
			}
			if r.visits > maxPageWalk+1 {
				t.Fatalf("%d pages looked at", r.visits)
			}
		}
	})
}

// TestLookup_PagesAsMap: an index whose partitions are trees of their own (not inline) answers
// every lookup the same from the file's pages (a read transaction's View after SetPageFile) as
// through bbolt's map, and the pages are what answered.
func TestLookup_PagesAsMap(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	db, d := openTest(t, Config{Chunk: 16, PartChunk: 16})
	f, err := os.Open(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 200_000 // ~195 a partition: 13 chunks, more than a page
	hash := func(i int) []byte { return Hash(fmt.Appendf(nil, "wamid.%d", i)) }
	fillParts(t, db, d, hash, 0, n, window)
	cutoff := t0.Add(-window / 2)
	answers := func(paged bool) (seen []bool, fromPages int) {
		err := db.View(func(tx *bolt.Tx) error {
			d.pages = nil
			if paged {
				d.SetPageFile(f, db.Info().PageSize)
			}
			v := d.View(tx)
			for i := range 2 * n { // the second half is absent
				s, _ := v.Lookup(hash(i), cutoff)
				seen = append(seen, s)
			}
			if v.pages != nil {
				t.Logf("%d seeks from the pages, %d preads, %d branch pages from the cache", v.pages.paged, v.pages.preads, v.pages.cached)
				if v.pages.cached < n {
					return fmt.Errorf("%d branch pages from the cache", v.pages.cached)
				}
				fromPages = v.pages.paged
				if v.pages.cursor != 0 {
					return fmt.Errorf("%d seeks sent back to the cursor", v.pages.cursor)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seen, fromPages
	}
	viaMap, _ := answers(false)
	viaPages, fromPages := answers(true)
	if fromPages < n {
		t.Fatalf("%d of %d lookups read the partitions' pages", fromPages, 2*n)
	}
	for i := range viaMap {
		if viaMap[i] != (i < n) || viaPages[i] != viaMap[i] {
			t.Fatalf("lookup %d: seen %v through the map, %v from the pages; want %v", i, viaMap[i], viaPages[i], i < n)
		}
	}
	// A write transaction's View reads through the map: its own changes are not in the file.
	err = db.Update(func(tx *bolt.Tx) error {
		if v := d.View(tx); v.pages != nil {
			return fmt.Errorf("a write transaction's View reads the file")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fillParts adds the keys hash(from..to-1) to the index's partitions: as final runs, swept in.
func fillParts(t testing.TB, db *bolt.DB, d *Index, hash func(int) []byte, from, to int, window time.Duration) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error {
		if err := writeFinalRuns(tx, d, hash, from, to, t0); err != nil {
			return err
		}
		for {
			written, err := d.Sweep(tx, t0.Add(-window), to)
			if err != nil || written == 0 {
				return err
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLookup_BranchCacheAcrossRewrites: lookups keep finding every key from the pages while the
// sweep rewrites partitions again and again (bbolt reusing the freed pages' ids), so no branch
// page held from before a rewrite of its partition answers after it, whichever partitions the
// other rewrites touched; and the cache does serve lookups in between.
func TestLookup_BranchCacheAcrossRewrites(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	// 1 KiB pages and chunks of 4 records: partitions of a few dozen keys are trees of two
	// levels, so that every round rewrites branch pages.
	db, d := openTestFile(t, Config{Chunk: 16, PartChunk: 4}, &bolt.Options{PageSize: 1024})
	// Round 0 fills every partition; each later round adds keys to the even ones only, so that
	// the odd ones keep their branch pages held across the rounds, and the even ones reuse the
	// ids of pages their own rewrite of the round before freed.
	var keys [][]byte // hash(keys added so far), then as many not added
	next := 0
	newKeys := func(n int, evenOnly bool) [][]byte {
		var out [][]byte
		for len(out) < n {
			h := Hash(fmt.Appendf(nil, "id.%d", next))
			next++
			if !evenOnly || partOf(h)%2 == 0 {
				out = append(out, h)
			}
		}
		return out
	}
	cutoff := t0.Add(-window / 2)
	cached := 0
	for round := range 8 {
		add := newKeys(25_000, false)
		if round > 0 {
			add = newKeys(8_000, true)
		}
		fillParts(t, db, d, func(i int) []byte { return add[i] }, 0, len(add), window)
		keys = append(keys, add...)
		absent := newKeys(8_000, false)
		for pass := range 2 { // the second pass of a round finds the branch pages in the cache
			err := db.View(func(tx *bolt.Tx) error {
				v := d.View(tx)
				if v.pages == nil {
					return fmt.Errorf("round %d: the View does not read the pages", round)
				}
				for i, h := range slices.Concat(keys, absent) {
					if seen, _ := v.Lookup(h, cutoff); seen != (i < len(keys)) {
						return fmt.Errorf("round %d pass %d: key %d of %d seen %v", round, pass, i, len(keys), seen)
					}
				}
				if v.pages.cursor != 0 {
					return fmt.Errorf("round %d: %d seeks sent back to the cursor", round, v.pages.cursor)
				}
				cached += v.pages.cached
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if cached == 0 {
		t.Fatal("no lookup took a branch page from the cache")
	}
}

// addFinalRuns writes the keys hash(from..to-1), accepted at t0, as final runs of at most
// MaxRun keys each, left for the sweep.
func addFinalRuns(t testing.TB, db *bolt.DB, d *Index, hash func(int) []byte, from, to int) {
	t.Helper()
	addFinalRunsAt(t, db, d, hash, from, to, t0)
}

// addFinalRunsAt is addFinalRuns with the keys accepted at when.
func addFinalRunsAt(t testing.TB, db *bolt.DB, d *Index, hash func(int) []byte, from, to int, when time.Time) {
	t.Helper()
	err := db.Update(func(tx *bolt.Tx) error { return writeFinalRuns(tx, d, hash, from, to, when) })
	if err != nil {
		t.Fatal(err)
	}
}

// writeFinalRuns writes the keys hash(from..to-1), accepted at when, as final runs of at most
// MaxRun keys each, in tx.
func writeFinalRuns(tx *bolt.Tx, d *Index, hash func(int) []byte, from, to int, when time.Time) error {
	at := binary.BigEndian.AppendUint64(nil, timeBits(when))
	for lo := from; lo < to; lo += d.MaxRun() {
		var recs [][]byte
		for i := lo; i < min(lo+d.MaxRun(), to); i++ {
			recs = append(recs, append(hash(i), at...))
		}
		slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:hashLen], b[:hashLen]) })
		if err := d.WriteFinalRun(tx, slices.Concat(recs...)); err != nil {
			return err
		}
	}
	return nil
}

// TestLookup_RunsFromPagesAcrossSweeps: lookups that the final runs' filters let through read
// the runs' pages from the file, and keep finding every key, in the runs or in the partitions,
// while the sweep takes the runs' chunks away a few partitions a round and new runs are written
// (bbolt reusing the freed pages' ids): no branch page of a run held from before a change of the
// runs answers after it; and the cache does serve run lookups in between.
func TestLookup_RunsFromPagesAcrossSweeps(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	// 1 KiB pages and runs of 3000 keys, ~3 a partition, a chunk each: a run's tree has two
	// levels of branch pages.
	db, d := openTestFile(t, Config{Chunk: 16, PartChunk: 4, MaxRun: 3000}, &bolt.Options{PageSize: 1024})
	hash := func(i int) []byte { return Hash(fmt.Appendf(nil, "run.%d", i)) }
	fillParts(t, db, d, hash, 0, 10_000, window)
	next := 10_000
	addFinalRuns(t, db, d, hash, next, next+12_000)
	next += 12_000
	cutoff := t0.Add(-window / 2)
	cached, floors := 0, 0
	lookups := func(when string) {
		t.Helper()
		for pass := range 2 { // the second pass finds the runs' branch pages held
			err := db.View(func(tx *bolt.Tx) error {
				v := d.View(tx)
				for i := range next + 5000 { // the last 5000 are absent
					if seen, _ := v.Lookup(hash(i), cutoff); seen != (i < next) {
						return fmt.Errorf("%s, pass %d: key %d of %d seen %v", when, pass, i, next, seen)
					}
				}
				if v.pages.cursor != 0 {
					return fmt.Errorf("%s: %d seeks sent back to the cursor", when, v.pages.cursor)
				}
				if v.pages.floors < 10_000 {
					return fmt.Errorf("%s: %d lookups read a run's pages", when, v.pages.floors)
				}
				floors += v.pages.floors
				if pass == 1 {
					cached += v.pages.cached
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	lookups("before the sweep")
	for round := 1; round < 10; round++ {
		err := db.Update(func(tx *bolt.Tx) error {
			_, err := d.Sweep(tx, t0.Add(-window), 40) // a few partitions
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		lookups(fmt.Sprintf("round %d, after the sweep", round))
		if round%3 == 0 { // new runs, in pages the sweep freed
			addFinalRuns(t, db, d, hash, next, next+3000)
			next += 3000
			lookups(fmt.Sprintf("round %d, after new runs", round))
		}
	}
	var final int
	err := db.View(func(tx *bolt.Tx) error {
		rs, err := d.Runs(tx)
		final = len(rs)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d run lookups from the pages, %d branch pages from the cache, %d runs left", floors, cached, final)
	if cached == 0 || final == 0 {
		t.Fatalf("%d branch pages from the cache, %d runs left", cached, final)
	}
}

// TestLookup_RunsFromPagesAsWritten: with keys added through the Writer (L0's flushes, the
// merges, level-2 runs marked final in place, the sweep), a View after each write transaction
// finds every key added and none other, reading the aligned runs' pages from the file.
func TestLookup_RunsFromPagesAsWritten(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	// Runs of level 2 hold 4 flushes of L0 (256 keys); two would merge past MaxRun, so they are
	// marked final: every 8 flushes.
	cfg := Config{L0Max: 64, FanIn: 2, MaxRun: 300, Chunk: 16, PartChunk: 4, SweepRatio: 2}
	db, d := openTestFile(t, cfg, &bolt.Options{PageSize: 1024})
	hash := func(i int) []byte { return Hash(fmt.Appendf(nil, "w.%d", i)) }
	cutoff := t0.Add(-window / 2)
	floors, cached := 0, 0
	const n = 64 * 80
	for from := 0; from < n; from += 64 {
		err := db.Update(func(tx *bolt.Tx) error {
			w := d.Writer(tx)
			for i := from; i < from+64; i++ {
				if err := w.Add(hash(i), t0, t0.Add(-window), true); err != nil {
					return err
				}
			}
			return w.Finish(t0, window)
		})
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			v := d.View(tx)
			for i := range from + 64 + 200 { // the last 200 are absent
				if seen, _ := v.Lookup(hash(i), cutoff); seen != (i < from+64) {
					return fmt.Errorf("after key %d: key %d seen %v", from+64, i, seen)
				}
			}
			if v.pages.cursor != 0 {
				return fmt.Errorf("%d seeks sent back to the cursor", v.pages.cursor)
			}
			floors += v.pages.floors
			cached += v.pages.cached
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d run lookups from the pages, %d branch pages from the cache", floors, cached)
	if floors == 0 || cached == 0 {
		t.Fatalf("%d run lookups from the pages, %d branch pages from the cache", floors, cached)
	}
}

// TestLookup_RunsFromPagesAfterExpire: runs whose pages lookups have read and held are expired
// and dropped, and new runs written in the pages they freed; lookups then find the new runs'
// keys, not the old ones'.
func TestLookup_RunsFromPagesAfterExpire(t *testing.T) {
	t.Parallel()
	const window = time.Hour
	db, d := openTestFile(t, Config{Chunk: 16, PartChunk: 4, MaxRun: 3000}, &bolt.Options{PageSize: 1024})
	hash := func(i int) []byte { return Hash(fmt.Appendf(nil, "exp.%d", i)) }
	cutoff := t0.Add(-window / 2)
	check := func(when string, from, to int) {
		t.Helper()
		for pass := range 2 {
			err := db.View(func(tx *bolt.Tx) error {
				v := d.View(tx)
				for i := range to + 3000 {
					if seen, _ := v.Lookup(hash(i), cutoff); seen != (i >= from && i < to) {
						return fmt.Errorf("%s, pass %d: key %d seen %v", when, pass, i, seen)
					}
				}
				if v.pages.cursor != 0 || v.pages.floors == 0 {
					return fmt.Errorf("%s: %d seeks sent back to the cursor, %d from the runs' pages", when, v.pages.cursor, v.pages.floors)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	addFinalRunsAt(t, db, d, hash, 0, 12_000, t0.Add(-3*window)) // known, not seen
	check("old runs", 0, 0)
	err := db.Update(func(tx *bolt.Tx) error {
		n, err := d.Expire(tx, t0.Add(-window), 1<<30)
		if err == nil && n != 12_000 {
			err = fmt.Errorf("expired %d keys, want 12000", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	addFinalRuns(t, db, d, hash, 12_000, 24_000)
	check("new runs", 12_000, 24_000)
}
