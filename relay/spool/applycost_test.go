package spool

import (
	"fmt"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// BenchmarkApplyCommit measures what the committer spends per item applied, commit included,
// for several commit sizes: each op applies 16384 items of 1 KB (two sinks, a new dedup key
// each) in frames of 32 items, size items per commit. "cpu-µs/item" is the process CPU of the
// commits alone.
func BenchmarkApplyCommit(b *testing.B) {
	const total = 16384
	const per = 32
	for _, size := range []int{256, 512, 1024, 2048, 4096} {
		b.Run(fmt.Sprintf("items=%d", size), func(b *testing.B) {
			s, _ := openTest(b, Options{})
			data := make([]byte, 1024)
			var seq, lsn uint64
			var cpu time.Duration
			frames := make([][]jItem, size/per)
			b.ResetTimer()
			for b.Loop() {
				for range total / size {
					b.StopTimer()
					now := time.Now().UnixNano()
					for f := range frames {
						items := make([]jItem, per)
						for i := range items {
							seq++
							k := fmt.Sprintf("wamid.%016x", seq)
							items[i] = jItem{seq: seq, at: now, key: k, data: data, sinks: []string{"orders", "archive"}, hash: dedupindex.Hash([]byte(k)), fresh: true}
						}
						frames[f] = items
					}
					c0 := cpuTime()
					b.StartTimer()
					if err := s.db.Update(func(tx *bolt.Tx) error {
						for _, items := range frames {
							lsn++
							if err := applyItems(tx, s.dedup, items, lsn, s.window, false); err != nil {
								return err
							}
						}
						return nil
					}); err != nil {
						b.Fatal(err)
					}
					cpu += cpuTime() - c0
				}
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N*total), "cpu-µs/item")
		})
	}
}
