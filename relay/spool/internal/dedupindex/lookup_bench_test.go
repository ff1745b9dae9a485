package dedupindex

import (
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkLookupPages: lookups of an index of 1M keys in its partitions and 1M more in final
// runs waiting for the sweep, from the file's pages (a read transaction's View, as the
// spool's) and through bbolt's map: of absent keys (the partition, and the runs whose filters
// answer maybe) and of keys the runs hold (a run's tree searched, then found).
func BenchmarkLookupPages(b *testing.B) {
	const window = time.Hour
	db, d := openTest(b, Config{})
	hash := func(i int) []byte { return Hash(fmt.Appendf(nil, "wamid.%d", i)) }
	const n = 1_000_000
	fillParts(b, db, d, hash, 0, n, window)
	addFinalRuns(b, db, d, hash, n, 2*n)
	pages := d.pages
	for _, keys := range []string{"absent", "in-runs"} {
		for _, via := range []string{"pages", "map"} {
			b.Run(keys+"/"+via, func(b *testing.B) {
				d.pages = pages
				if via == "map" {
					d.pages = nil
				}
				err := db.View(func(tx *bolt.Tx) error {
					v := d.View(tx)
					i, lookups := 2*n, 0
					for b.Loop() {
						i++
						k, want := i, false
						if keys == "in-runs" {
							k, want = n+i%n, true
						}
						if seen, _ := v.Lookup(hash(k), t0.Add(-window/2)); seen != want {
							return fmt.Errorf("key %d seen %v", k, seen)
						}
						lookups++
					}
					if v.pages != nil {
						b.ReportMetric(float64(v.pages.preads)/float64(lookups), "preads/lookup")
						b.ReportMetric(float64(v.pages.cached)/float64(lookups), "cached/lookup")
						b.ReportMetric(float64(v.pages.floors)/float64(lookups), "runs-paged/lookup")
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
