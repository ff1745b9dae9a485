package dedupindex

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestSweep_UnalignedRun sweeps a final run whose chunks cross partition bounds (as format 4
// wrote them) into the partitions: every key is still seen, the run goes once emptied, the
// counts and the partitions check out.
func TestSweep_UnalignedRun(t *testing.T) {
	t.Parallel()
	db, d := openTest(t, tiny)
	const n = 3000
	var recs [][]byte
	at := binary.BigEndian.AppendUint64(nil, timeBits(t0))
	for i := range n {
		recs = append(recs, append(Hash([]byte(fmt.Sprint("u", i))), at...))
	}
	slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:16], b[:16]) })
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(RunsBucket).CreateBucket(encUint(1))
		if err != nil {
			return err
		}
		f := newBloom(n)
		for off := 0; off < n; off += 50 { // 50 records a chunk: most cross a bound
			var chunk []byte
			for _, r := range recs[off:min(off+50, n)] {
				chunk = append(chunk, r...)
				f.add(r[:16])
			}
			if err := b.Put(append([]byte{chunkPrefix}, chunk[:16]...), chunk); err != nil {
				return err
			}
		}
		if err := f.write(b); err != nil {
			return err
		}
		r := RunInfo{ID: 1, Level: FinalLevel, Count: n, MinT: timeBits(t0), MaxT: timeBits(t0)}
		if err := b.Put(runMetaKey, encRunMeta(r)); err != nil {
			return err
		}
		meta := tx.Bucket(testMeta)
		if err := meta.Put(metaRunID, encUint(1)); err != nil {
			return err
		}
		return meta.Put(MetaCountKey, encUint(n))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.View(d.Load); err != nil {
		t.Fatal(err)
	}
	check(t, db, d)
	for steps := 0; len(runsOf(t, db, d)) > 0; steps++ {
		if steps > Parts {
			t.Fatalf("the run is still there after %d sweeps", steps)
		}
		err := db.Update(func(tx *bolt.Tx) error {
			_, err := d.Sweep(tx, t0.Add(-time.Hour), 100) // a few partitions a transaction
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		check(t, db, d)
	}
	if got := partsLen(t, db); got != n || length(t, db, d) != n {
		t.Fatalf("partitions hold %d, Len %d; want %d", got, length(t, db, d), n)
	}
	err = db.View(func(tx *bolt.Tx) error {
		v := d.View(tx)
		for i, r := range recs {
			if seen, _ := v.Lookup(r[:16], t0.Add(-time.Minute)); !seen {
				return fmt.Errorf("record %d not seen after the sweep", i)
			}
		}
		if seen, known := v.Lookup(Hash([]byte("absent")), t0.Add(-time.Minute)); seen || known {
			return fmt.Errorf("an absent key seen")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExpire_Partitions: Expire deletes partitions wholly past the window and writes again one
// of which at least half is; the keys left are still seen.
func TestExpire_Partitions(t *testing.T) {
	t.Parallel()
	const window = time.Minute
	db, d := openTest(t, tiny)
	var old, young []string
	for i := range 400 {
		old = append(old, fmt.Sprint("old", i))
	}
	for i := range 400 {
		young = append(young, fmt.Sprint("young", i))
	}
	for i := 0; i < 400; i += 8 {
		accept(t, db, d, window, t0, old[i:i+8]...)
	}
	for i := 0; i < 400; i += 8 {
		accept(t, db, d, window, t0.Add(window/2), young[i:i+8]...)
	}
	if partsLen(t, db) == 0 {
		t.Fatal("nothing in the partitions")
	}
	now := t0.Add(window + time.Second)
	total := 0
	for i := range 160 { // a call looks at 8 partitions it cannot drop whole
		var n int
		err := db.Update(func(tx *bolt.Tx) error {
			var err error
			n, err = d.Expire(tx, now.Add(-window), 1000)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		total += n
		if i%40 == 0 {
			check(t, db, d)
		}
	}
	check(t, db, d)
	if total < 300 || length(t, db, d) > 400+100 {
		t.Fatalf("Expire deleted %d of 400 expired records; %d left", total, length(t, db, d))
	}
	seen := accept(t, db, d, window, now, young...)
	for i := range seen {
		if !seen[i] {
			t.Fatalf("young key %d not seen after Expire", i)
		}
	}
	for i, s := range accept(t, db, d, window, now, old...) {
		if s {
			t.Fatalf("old key %d seen past the window", i)
		}
	}
}

// TestExpire_ReadsOnlyPartitionsPastCutoff: Expire reads only the partitions it may drop or
// rewrite (each read was a page fault and, with fault-around, 64 KiB of resident file pages).
// While no partition holds a record at or before the cutoff it reads none, after the sweep
// wrote them as after Load read them; with records on both sides of the cutoff in most
// partitions it reads a few, not all; once the cutoff passes every record it expires them all.
func TestExpire_ReadsOnlyPartitionsPastCutoff(t *testing.T) {
	t.Parallel()
	const window = time.Minute
	db, d := openTest(t, tiny)
	var keys []string
	for i := range 400 {
		keys = append(keys, fmt.Sprint("k", i))
	}
	for i := 0; i < len(keys); i += 8 {
		accept(t, db, d, window, t0, keys[i:i+8]...)
	}
	if partsLen(t, db) < 8 {
		t.Fatalf("%d partitions hold records, want several", partsLen(t, db))
	}
	// expire returns the records Expire removed at cutoff, the cursors its transaction opened
	// (a partition's read opens at least one) and the partitions left; with rollback the
	// transaction is rolled back.
	errRollback := errors.New("rolled back")
	expireTx := func(d *Index, cutoff time.Time, rollback bool) (removed, cursors, parts int) {
		t.Helper()
		err := db.Update(func(tx *bolt.Tx) error {
			st := tx.Stats()
			before := st.GetCursorCount()
			var err error
			if removed, err = d.Expire(tx, cutoff, 1000); err != nil {
				return err
			}
			st = tx.Stats()
			cursors = int(st.GetCursorCount() - before)
			if err := tx.Bucket(PartsBucket).ForEachBucket(func([]byte) error { parts++; return nil }); err != nil {
				return err
			}
			if rollback {
				return errRollback
			}
			return nil
		})
		if err != nil && !(rollback && errors.Is(err, errRollback)) {
			t.Fatal(err)
		}
		return removed, cursors, parts
	}
	expire := func(d *Index, cutoff time.Time) (removed, cursors int) {
		t.Helper()
		removed, cursors, _ = expireTx(d, cutoff, false)
		return removed, cursors
	}
	reloaded := New(tiny, testMeta)
	if err := db.View(reloaded.Load); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		d    *Index
	}{{"after the sweep", d}, {"after Load", reloaded}} {
		if n, cursors := expire(c.d, t0.Add(-time.Second)); n != 0 || cursors > 32 {
			t.Errorf("%s: Expire before every record removed %d and opened %d cursors, want 0 and a few (%d partitions)", c.name, n, cursors, partsLen(t, db))
		}
	}
	// With ten times as many younger records (a relay older than its window: most partitions
	// hold records on both sides of the cutoff), no partition is worth a rewrite, and a call
	// still reads only the few it may rewrite, not every one that holds an old record.
	var young []string
	for i := range 4000 {
		young = append(young, fmt.Sprint("y", i))
	}
	for i := 0; i < len(young); i += 8 {
		accept(t, db, d, window, t0.Add(window/2), young[i:i+8]...)
	}
	// The same call, rolled back, from this index and from it knowing no partition (it then
	// reads them all, as Expire did before).
	dry := func(d *Index) (cursors, parts int) {
		_, cursors, parts = expireTx(d, t0.Add(time.Second), true)
		return cursors, parts
	}
	with, parts := dry(d)
	for p := range d.partMinT {
		d.partMinT[p].Store(0)
	}
	without, _ := dry(d)
	if err := db.View(d.Load); err != nil {
		t.Fatal(err)
	}
	if parts < 64 {
		t.Fatalf("%d partitions hold records, want more", parts)
	} else if without < parts || with > 64 {
		t.Errorf("Expire with old and young records in %d partitions opened %d cursors, %d when it reads every partition: want those of a few", parts, with, without)
	}
	total := 0
	for i, s := range accept(t, db, d, window, t0.Add(window/2), young...) {
		if !s {
			t.Fatalf("young key %d not seen after Expire", i)
		}
	}
	for range 200 {
		n, _ := expire(d, t0.Add(window))
		total += n
	}
	if partsLen(t, db) != 0 {
		t.Errorf("Expire past every record removed %d of %d; %d partitions left", total, len(keys)+len(young), partsLen(t, db))
	} else if total != len(keys)+len(young) {
		t.Errorf("Expire past every record removed %d of %d", total, len(keys)+len(young))
	}
	check(t, db, d)
}

// TestSweep_CallsRelease: a sweep that rewrites many partitions in one transaction calls the
// release function with that transaction after every releaseEvery partitions, so that the
// owner can drop the file pages it read before it commits; the records are all there after.
func TestSweep_CallsRelease(t *testing.T) {
	t.Parallel()
	db, d := openTest(t, Config{})
	var calls int
	var inTx *bolt.Tx
	d.SetRelease(func(tx *bolt.Tx) {
		calls++
		if tx != inTx || !tx.Writable() {
			t.Errorf("release called with %p (writable %v), want the sweep's write transaction %p", tx, tx.Writable(), inTx)
		}
	})
	const n = 20000 // records in about every one of the Parts partitions
	var recs []byte
	for i := range n {
		recs = append(recs, Hash([]byte(fmt.Sprint("k", i)))...)
		recs = binary.BigEndian.AppendUint64(recs, timeBits(t0))
	}
	recs = sortRecs(recs)
	var written int
	err := db.Update(func(tx *bolt.Tx) error {
		inTx = tx
		if err := d.WriteFinalRun(tx, recs); err != nil {
			return err
		}
		var err error
		written, err = d.Sweep(tx, t0.Add(-time.Hour), 1<<30)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if written < n || calls < Parts/releaseEvery-1 {
		t.Fatalf("sweep wrote %d records and called release %d times; want %d and about %d", written, calls, n, Parts/releaseEvery)
	}
	if got := partsLen(t, db); got != n {
		t.Fatalf("partitions hold %d records, want %d", got, n)
	}
}
