package dedupindex

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkMergeRuns merges four level-1 runs of 65536 random records each into one of 262144,
// the largest merge the default config makes (MaxRun), in a transaction rolled back after
// each merge. B/op is what the merge allocates; the runs are read from the file's map.
func BenchmarkMergeRuns(b *testing.B) {
	const per = 1 << 16
	db, d := openTest(b, Config{})
	rng := rand.New(rand.NewPCG(1, 2))
	var in []RunInfo
	err := db.Update(func(tx *bolt.Tx) error {
		for range 4 {
			recs := make([]byte, 0, per*dedupRecord)
			for range per {
				recs = binary.BigEndian.AppendUint64(recs, rng.Uint64())
				recs = binary.BigEndian.AppendUint64(recs, rng.Uint64())
				recs = binary.BigEndian.AppendUint64(recs, 1+rng.Uint64N(1<<40))
			}
			recs = sortRecs(recs)
			if err := d.writeRun(tx, RunInfo{Level: 1, Count: len(recs) / dedupRecord, MinT: 1, MaxT: 1 << 40}, recs); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := db.View(func(tx *bolt.Tx) error { in, err = runs(tx); return err }); err != nil {
		b.Fatal(err)
	}
	in = slices.DeleteFunc(in, func(r RunInfo) bool { return r.Level != 1 })
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		tx, err := db.Begin(true)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := d.mergeRuns(tx, in, 2, 0); err != nil {
			b.Fatal(err)
		}
		_ = tx.Rollback()
	}
}
