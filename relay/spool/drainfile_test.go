package spool

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkDrainFile measures the delivery side of a backlog that is in the bbolt file (after
// an outage, or while deliveries lag their apply, as with batching sinks on a saturated
// machine): two sinks read pages of 256 ready deliveries and mark them done, each with its
// own goroutine, until 4096 items applied beforehand are delivered to both. "cpu-µs/delivery"
// is the process CPU per delivery, the reads and the Done calls' commits included; the
// backlog's Accept and apply are not timed.
func BenchmarkDrainFile(b *testing.B) {
	s, _ := openTest(b, Options{ApplyDelay: time.Nanosecond, CommitInterval: time.Millisecond})
	const backlog, per = 4096, 64
	data := make([]byte, 1024)
	var n uint64
	var cpu time.Duration
	cursor := map[string]uint64{}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		items := make([]Item, per)
		for range backlog / per {
			for j := range items {
				n++
				items[j] = benchItem(n, data)
			}
			if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
		s.apply.waitApplied()
		b.StartTimer()
		c0 := cpuTime()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, sink := range []string{"orders", "archive"} {
			mu.Lock()
			after := cursor[sink]
			mu.Unlock()
			wg.Go(func() {
				for {
					ds, err := s.Ready(sink, after, 256)
					if err != nil {
						b.Error(err)
						return
					}
					if len(ds) == 0 {
						break
					}
					seqs := make([]uint64, len(ds))
					for k, d := range ds {
						seqs[k] = d.Seq
					}
					after = seqs[len(seqs)-1]
					if err := s.Done(sink, seqs...); err != nil {
						b.Error(err)
						return
					}
				}
				mu.Lock()
				cursor[sink] = after
				mu.Unlock()
			})
		}
		wg.Wait()
		cpu += cpuTime() - c0
	}
	st, err := s.Stats()
	if err != nil {
		b.Fatal(err)
	}
	for name, q := range st {
		if q.Ready != 0 || q.Scheduled != 0 {
			b.Fatalf("sink %s left %d ready, %d scheduled", name, q.Ready, q.Scheduled)
		}
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(b.N*backlog*2), "cpu-µs/delivery")
}

// TestItemCursor checks itemCursor against Get for every order of reads Ready and Scheduled
// can make: the next key (Next), a gap, a missing key, the same key again, a key behind.
func TestItemCursor(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "c.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("items"))
		if err != nil {
			return err
		}
		for _, seq := range []uint64{1, 2, 3, 5, 6, 9, 10} {
			if err := b.Put(encUint(seq), []byte(fmt.Sprint("item ", seq))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		reads []uint64
	}{
		{"consecutive", []uint64{1, 2, 3}},
		{"gap", []uint64{1, 3, 5, 6, 10}},
		{"missing keys", []uint64{2, 4, 5, 7, 8, 9, 11}},
		{"same key again", []uint64{5, 5, 6, 6}},
		{"behind", []uint64{9, 3, 10, 1, 2}},
		{"past the end", []uint64{10, 11, 12, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db.View(func(tx *bolt.Tx) error {
				b := tx.Bucket([]byte("items"))
				ic := itemCursor{c: b.Cursor()}
				for _, seq := range tt.reads {
					k := encUint(seq)
					if got, want := ic.get(k), b.Get(k); !bytes.Equal(got, want) || (got == nil) != (want == nil) {
						t.Errorf("after %v: get(%d) = %q, want %q", tt.reads, seq, got, want)
					}
				}
				return nil
			})
		})
	}
}
