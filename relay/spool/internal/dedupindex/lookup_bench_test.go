package dedupindex

import (
	"fmt"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkLookupPages: absent lookups of an index of 1M keys in its partitions, from the
// file's pages (a read transaction's View, as the spool's) and through bbolt's map.
func BenchmarkLookupPages(b *testing.B) {
	const window = time.Hour
	db, d := openTest(b, Config{})
	hash := func(i int) []byte { return Hash(fmt.Appendf(nil, "wamid.%d", i)) }
	const n = 1_000_000
	fillParts(b, db, d, hash, 0, n, window)
	pages := d.pages
	for _, via := range []string{"pages", "map"} {
		b.Run(via, func(b *testing.B) {
			d.pages = pages
			if via == "map" {
				d.pages = nil
			}
			err := db.View(func(tx *bolt.Tx) error {
				v := d.View(tx)
				i := n
				for b.Loop() {
					i++
					if seen, _ := v.Lookup(hash(i), t0); seen {
						return fmt.Errorf("key %d seen", i)
					}
				}
				if v.pages != nil {
					b.ReportMetric(float64(v.pages.preads)/float64(v.pages.paged), "preads/lookup")
					b.ReportMetric(float64(v.pages.cached)/float64(v.pages.paged), "cached/lookup")
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
