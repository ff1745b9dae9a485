package spool

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
)

// dedupScalePoint is what BenchmarkDedupScale measured at one size of the index; the JSON
// lines it prints (prefixed "dedup-scale ") feed `hubrelay bench -dedup-chart`.
type dedupScalePoint struct {
	Keys          int     `json:"keys"`
	Runs          int     `json:"runs"`
	FilterMB      float64 `json:"filter_mb"`        // the runs' Bloom filters held in memory
	HeapMB        float64 `json:"heap_mb"`          // the process's live heap with the spool open, after a GC
	RSSMB         float64 `json:"rss_mb"`           // the process's resident set after the lookups
	RSSFileMB     float64 `json:"rss_file_mb"`      // of which file pages (the mmap'd spool)
	LookupAbsent  float64 `json:"lookup_absent_ns"` // CPU time of one lookup of a key the index does not hold
	LookupPresent float64 `json:"lookup_present_ns"`
	AcceptPerSec  float64 `json:"accept_per_s"`  // 1-item Accepts, 64 callers, two sinks
	AcceptCPUUS   float64 `json:"accept_cpu_us"` // process CPU per accepted item
	PrefillPerSec float64 `json:"prefill_per_s"` // keys/s of the pre-fill (1000-key Accepts)
	SpoolMB       float64 `json:"spool_mb"`      // size of spool.db
}

// BenchmarkDedupScale measures the dedup index against the number of keys in its window: it
// pre-fills a spool in a temporary directory with N unique keys (Accepts of 1000 keys without
// sinks, the index's real flushes and merges), reopens it, and measures the memory the open
// index holds, the cost of a lookup of an absent and of a present key, and the rate of
// 1-item Accepts from 64 callers on top of it (accept-vs-empty: the empty index's CPU per
// accepted item over this one's, which is robust to a loaded machine where items/s is not). N comes from HUBRELAY_DEDUP_SCALE, a list of
// key counts (default "0 100000": the rest is slow, run it by hand; bench/run-issue19.sh runs
// 0, 1M, 4M and 10M, and 100M takes about an hour and ~5 GB of disk). Each size runs once,
// whatever b.N.
func BenchmarkDedupScale(b *testing.B) {
	sizes := []int{0, 100_000}
	if env := os.Getenv("HUBRELAY_DEDUP_SCALE"); env != "" {
		sizes = sizes[:0]
		for _, f := range strings.Fields(env) {
			n, err := strconv.Atoi(f)
			if err != nil || n < 0 {
				b.Fatalf("HUBRELAY_DEDUP_SCALE: %q is not a key count", f)
			}
			sizes = append(sizes, n)
		}
	}
	var base float64
	for _, n := range sizes {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			p := measureDedupScale(b, n)
			line, _ := json.Marshal(p)
			fmt.Printf("dedup-scale %s\n", line)
			b.ReportMetric(p.LookupAbsent, "absent-ns/lookup")
			b.ReportMetric(p.LookupPresent, "present-ns/lookup")
			b.ReportMetric(p.HeapMB, "heap-MB")
			b.ReportMetric(p.RSSMB, "rss-MB")
			b.ReportMetric(float64(p.Runs), "runs")
			b.ReportMetric(p.AcceptPerSec, "accept-items/s")
			b.ReportMetric(p.AcceptCPUUS, "accept-cpu-µs/item")
			if n == 0 {
				base = p.AcceptCPUUS
			} else if base > 0 {
				b.ReportMetric(base/p.AcceptCPUUS, "accept-vs-empty")
			}
		})
	}
}

func measureDedupScale(b *testing.B, n int) dedupScalePoint {
	dir := b.TempDir()
	path := filepath.Join(dir, "data", "spool.db")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	prefix := randomKeyPrefix()
	key := func(i int) string { return prefix + strconv.FormatUint(uint64(i)*0x9E3779B97F4A7C15, 36) }
	p := dedupScalePoint{Keys: n}
	began := time.Now()
	prefill(b, s, n, key)
	if n > 0 {
		p.PrefillPerSec = float64(n) / time.Since(began).Seconds()
	}
	if got, err := s.DedupLen(); err != nil || got != n {
		b.Fatalf("DedupLen after the pre-fill: %d, %v; want %d", got, err, n)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if fi, err := os.Stat(path); err == nil {
		p.SpoolMB = float64(fi.Size()) / (1 << 20)
	}

	s, err = Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	p.HeapMB = heapInUse() / (1 << 20)
	err = s.view(func(tx *bolt.Tx) error {
		rs, err := s.dedup.Runs(tx)
		for _, r := range rs {
			// Each run's blocked Bloom filter: 10 bits a key in 64-byte blocks, in the heap.
			p.FilterMB += float64(max(1, (r.Count*10+511)/512)*64) / (1 << 20)
		}
		p.Runs = len(rs)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}

	const lookups = 200_000
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	absent := make([][]byte, lookups)
	present := make([][]byte, lookups)
	for i := range absent {
		absent[i] = dedupindex.Hash([]byte(key(n + 1 + i)))
		if n > 0 {
			present[i] = dedupindex.Hash([]byte(key(rng.IntN(n))))
		}
	}
	p.LookupAbsent = timeLookups(b, s, absent, false)
	if n > 0 {
		p.LookupPresent = timeLookups(b, s, present, true)
	}
	p.RSSMB, p.RSSFileMB = rssMB()

	const accepts = 30_000
	var next atomic.Int64
	next.Store(int64(n + 1 + lookups))
	data := make([]byte, 1024)
	cpu0, t0 := cpuTime(), time.Now()
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n+1+lookups+accepts) {
					return
				}
				it := Item{Key: key(int(i)), Data: data, Sinks: []string{"orders", "archive"}}
				if _, err := s.Accept(context.Background(), []Item{it}, time.Now()); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	p.AcceptPerSec = accepts / time.Since(t0).Seconds()
	p.AcceptCPUUS = float64(cpuTime()-cpu0) / float64(time.Microsecond) / accepts
	return p
}

// prefill accepts n unique keys without sinks, 1000 per call from 8 callers.
func prefill(b *testing.B, s *Spool, n int, key func(int) string) {
	const per = 1000
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			items := make([]Item, 0, per)
			for {
				from := int(next.Add(per)) - per
				if from >= n {
					return
				}
				items = items[:0]
				for i := from; i < min(from+per, n); i++ {
					items = append(items, Item{Key: key(i)})
				}
				dup, err := s.Accept(context.Background(), items, time.Now())
				if err != nil {
					b.Error(err)
					return
				}
				for i, d := range dup {
					if d {
						b.Errorf("pre-fill key %d seen as a repeat", from+i)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

// timeLookups returns the mean CPU time of one lookup of each hash, all in one read
// transaction (process CPU time: the lookups run on one goroutine while the spool is idle, and
// CPU time does not grow with the machine's load as wall time does), and checks that each is
// seen (or not).
func timeLookups(b *testing.B, s *Spool, hashes [][]byte, want bool) float64 {
	cutoff := time.Now().Add(-s.window)
	var el time.Duration
	err := s.view(func(tx *bolt.Tx) error {
		dv := s.dedup.View(tx)
		t0 := cpuTime()
		for i, h := range hashes {
			if seen, _ := dv.Lookup(h, cutoff); seen != want {
				return fmt.Errorf("lookup %d: seen %v, want %v", i, seen, want)
			}
		}
		el = cpuTime() - t0
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return float64(el.Nanoseconds()) / float64(len(hashes))
}

func randomKeyPrefix() string {
	r := make([]byte, 6)
	crand.Read(r)
	return "wamid.HBgL" + hex.EncodeToString(r)
}

// heapInUse returns the bytes of live heap after a full collection.
func heapInUse() float64 {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc)
}

// rssMB returns this process's resident set and its file-backed part, in MiB (0 where there is
// no /proc).
func rssMB() (all, file float64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch k {
		case "VmRSS":
			all = kb / 1024
		case "RssFile":
			file = kb / 1024
		}
	}
	return all, file
}
