package spool

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchItem returns a 1 KB item with two sinks and a unique key.
func benchItem(n uint64, data []byte) Item {
	return Item{Key: fmt.Sprintf("wamid.%016x", n), Data: data, Sinks: []string{"orders", "archive"}}
}

// BenchmarkAccept_1 measures one caller at a time: every Accept waits for its own commit.
func BenchmarkAccept_1(b *testing.B) {
	s, _ := openTest(b, Options{})
	data := make([]byte, 1024)
	var n uint64
	b.ResetTimer()
	for b.Loop() {
		n++
		if _, err := s.Accept(context.Background(), []Item{benchItem(n, data)}, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// BenchmarkAccept_Parallel64 measures about 64 concurrent callers sharing commits, for several
// MaxBatchDelay values.
func BenchmarkAccept_Parallel64(b *testing.B) {
	for _, delay := range []time.Duration{0, 500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond} {
		b.Run("delay="+delay.String(), func(b *testing.B) {
			s, _ := openTest(b, Options{MaxBatchDelay: delay})
			var commits atomic.Int64
			var last atomic.Int64
			s.acceptHook = func(txid int) {
				if last.Swap(int64(txid)) != int64(txid) {
					commits.Add(1)
				}
			}
			b.ResetTimer()
			accept64(b, s)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
			if c := commits.Load(); c > 0 {
				b.ReportMetric(float64(b.N)/float64(c), "items/commit")
			}
		})
	}
}

// BenchmarkReadyDone measures the delivery side: read a page of ready deliveries and mark
// them done in one call.
func BenchmarkReadyDone(b *testing.B) {
	s, _ := openTest(b, Options{})
	data := make([]byte, 1024)
	const page = 100
	items := make([]Item, page)
	var n uint64
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		for i := range items {
			n++
			items[i] = Item{Key: fmt.Sprint(n), Data: data, Sinks: []string{"orders"}}
		}
		if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		ds, err := s.Ready("orders", 0, page)
		if err != nil || len(ds) != page {
			b.Fatalf("Ready = %d, %v", len(ds), err)
		}
		seqs := make([]uint64, len(ds))
		for i, d := range ds {
			seqs[i] = d.Seq
		}
		if err := s.Done("orders", seqs...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*page)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkSteadyState models a relay whose sinks keep up: 64 callers Accept one item at a
// time while one consumer per sink reads what is ready and marks it done. With an ApplyDelay
// longer than a delivery takes, items never reach the bbolt file; only their keys do.
// "ns/op" is wall time per accepted item; the process CPU per item is reported too.
func BenchmarkSteadyState(b *testing.B) {
	for _, delay := range []time.Duration{time.Nanosecond, DefaultApplyDelay} {
		b.Run("apply_delay="+delay.String(), func(b *testing.B) {
			s, _ := openTest(b, Options{ApplyDelay: delay})
			stop := make(chan struct{})
			consumed := make(chan struct{})
			var delivered atomic.Int64
			for _, sink := range []string{"orders", "archive"} {
				go func() {
					defer func() { consumed <- struct{}{} }()
					var after uint64
					for {
						ds, err := s.Ready(sink, after, 256)
						if err != nil {
							b.Error(err)
							return
						}
						if len(ds) == 0 {
							select {
							case <-stop:
								return
							case <-time.After(time.Millisecond):
							}
							continue
						}
						seqs := make([]uint64, len(ds))
						for i, d := range ds {
							seqs[i] = d.Seq
						}
						after = seqs[len(seqs)-1]
						if err := s.Done(sink, seqs...); err != nil {
							b.Error(err)
							return
						}
						delivered.Add(int64(len(seqs)))
					}
				}()
			}
			cpu0 := cpuTime()
			b.ResetTimer()
			accept64(b, s)
			b.StopTimer()
			close(stop)
			<-consumed
			<-consumed
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/item")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
		})
	}
}

// accept64 makes b.N Accept calls of one 1 KB item each from 64 goroutines.
func accept64(b *testing.B, s *Spool) {
	data := make([]byte, 1024)
	var n atomic.Uint64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Accept(context.Background(), []Item{benchItem(n.Add(1), data)}, time.Now()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// cpuTime returns the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAccept_SinksDown50 models the relay's ingest with its sinks down at 50 changes per
// POST: 32 callers Accept 50 items of 1 KB each (two sinks) and nobody delivers, so every item
// is applied to the bbolt file (items, refs, ready entries, dedup keys). It waits for the
// applies at the end, so "cpu-µs/item" (the process CPU per item) includes them.
func BenchmarkAccept_SinksDown50(b *testing.B) { benchSinksDown(b, 50) }

// BenchmarkAccept_SinksDown1 is BenchmarkAccept_SinksDown50 at 1 change per POST: 32 callers
// Accept one item each.
func BenchmarkAccept_SinksDown1(b *testing.B) { benchSinksDown(b, 1) }

// benchSinksDown has 32 callers Accept per items of 1 KB each (two sinks) while nobody
// delivers, and reports the process CPU per item, the applies included.
func benchSinksDown(b *testing.B, per int) {
	s, _ := openTest(b, Options{})
	data := make([]byte, 1024)
	var n atomic.Uint64
	cpu0, txs0 := cpuTime(), s.WriteTransactions()
	b.ResetTimer()
	b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		items := make([]Item, per)
		for pb.Next() {
			for i := range items {
				items[i] = benchItem(n.Add(1), data)
			}
			if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
				b.Error(err)
				return
			}
		}
	})
	s.apply.waitApplied()
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N*per), "cpu-µs/item")
	b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "items/s")
	if txs := s.WriteTransactions() - txs0; txs > 0 {
		b.ReportMetric(float64(b.N*per)/float64(txs), "items/commit")
	}
}
