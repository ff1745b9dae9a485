package spool

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	PartKeys      int     `json:"part_keys"`        // keys in the final level's partitions (no filter)
	RSSMB         float64 `json:"rss_mb"`           // the process's resident set after the lookups, pages released as serve does
	RSSFileMB     float64 `json:"rss_file_mb"`      // of which file pages (the mmap'd spool), at their peak
	RSSFileRawMB  float64 `json:"rss_file_raw_mb"`  // file pages after the timed lookups, never released
	LookupAbsent  float64 `json:"lookup_absent_ns"` // CPU time of one lookup of a key the index does not hold
	LookupPresent float64 `json:"lookup_present_ns"`
	// CPU time of one lookup (half present, half absent) in groups of 64 with serve's bound on
	// the file's pages checked after each, as Accept's journal groups make them: the pages
	// released now and then fault in again.
	LookupBound   float64 `json:"lookup_bound_ns"`
	AcceptPerSec  float64 `json:"accept_per_s"`   // 1-item Accepts, 64 callers, two sinks
	AcceptCPUUS   float64 `json:"accept_cpu_us"`  // process CPU per accepted item
	PrefillPerSec float64 `json:"prefill_per_s"`  // keys/s of the pre-fill (the index's Writer, prefillIndex)
	AcceptMinflt  float64 `json:"accept_minflt"`  // minor page faults per accepted item
	AcceptMajflt  float64 `json:"accept_majflt"`  // major page faults per accepted item
	AcceptReadKB  float64 `json:"accept_read_kb"` // bytes read from storage (/proc/self/io read_bytes) per item, KiB
	// Accepted items per journal frame: a faster journal group makes smaller groups, and
	// more fsyncs per item.
	AcceptPerFrame float64 `json:"accept_items_per_frame"`
	SpoolMB        float64 `json:"spool_mb"` // size of spool.db
}

// BenchmarkDedupScale measures the dedup index against the number of keys in its window: it
// pre-fills a spool in a temporary directory with N unique keys (through the index's own
// Writer in large transactions, prefillIndex: the index's real flushes, merges and sweep),
// reopens it, and measures the memory the open index holds (heap; file pages of the mapped
// spool, released as serve does), the cost of a lookup of an absent and of a present key, and
// the rate of 1-item Accepts from 64 callers on top of it (accept-vs-empty: the empty index's
// CPU per accepted item over this one's, which is robust to a loaded machine where items/s is
// not). N comes from HUBRELAY_DEDUP_SCALE, a list of key counts (default "0 100000": the rest
// is slow, run it by hand; 100M takes ~6 GB of disk). Each size runs once, whatever b.N. With
// HUBRELAY_DEDUP_KEEP set to a directory, each size's pre-filled spool is kept there, and a
// later run copies it instead of filling one again; HUBRELAY_DEDUP_ACCEPTS sets the Accepts
// measured (default 30,000: a few flushes of L0, whose sweeps make single runs vary by ±25 %).
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
			b.ReportMetric(p.AcceptMinflt, "accept-minflt/item")
			b.ReportMetric(p.AcceptMajflt, "accept-majflt/item")
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
	kept := ""
	if keep := os.Getenv("HUBRELAY_DEDUP_KEEP"); keep != "" {
		kept = filepath.Join(keep, fmt.Sprintf("keys=%d", n))
	}
	if pre, err := os.ReadFile(filepath.Join(kept, "prefix")); kept != "" && err == nil {
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		keptPrefill(b, kept, filepath.Dir(path))
		prefix = string(pre)
		b.Logf("pre-fill: copied from %s", kept)
	} else {
		began := time.Now()
		prefillIndex(b, s, n, key)
		if n > 0 {
			p.PrefillPerSec = float64(n) / time.Since(began).Seconds()
		}
		if got, err := s.DedupLen(); err != nil || got != n {
			b.Fatalf("DedupLen after the pre-fill: %d, %v; want %d", got, err, n)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		if kept != "" {
			keepPrefill(b, filepath.Dir(path), kept, prefix)
		}
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
		if err != nil {
			return err
		}
		p.PartKeys, err = s.dedup.PartsLen(tx)
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
	_, p.RSSFileRawMB = rssMB()
	p.RSSMB, p.RSSFileMB, p.LookupBound = residentLookups(b, s, present, absent)

	accepts := 30_000
	if env := os.Getenv("HUBRELAY_DEDUP_ACCEPTS"); env != "" {
		if a, err := strconv.Atoi(env); err == nil && a > 0 {
			accepts = a
		}
	}
	var next atomic.Int64
	next.Store(int64(n + 1 + lookups))
	data := make([]byte, 1024)
	if prof := os.Getenv("HUBRELAY_DEDUP_CPUPROFILE"); prof != "" && n > 0 {
		f, err := os.Create(fmt.Sprintf("%s.%d", prof, n))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	read0 := ioReadBytes()
	lsn0 := s.jq.lastLSN // the journal loop is idle: every Accept before has returned
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
	p.AcceptPerSec = float64(accepts) / time.Since(t0).Seconds()
	p.AcceptCPUUS = float64(cpuTime()-cpu0) / float64(time.Microsecond) / float64(accepts)
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	p.AcceptMinflt = float64(ru1.Minflt-ru0.Minflt) / float64(accepts)
	p.AcceptMajflt = float64(ru1.Majflt-ru0.Majflt) / float64(accepts)
	p.AcceptReadKB = float64(ioReadBytes()-read0) / 1024 / float64(accepts)
	p.AcceptPerFrame = float64(accepts) / float64(max(1, s.jq.lastLSN-lsn0))
	return p
}

// prefillIndex adds n unique keys through the index's own writers, without fsync (the file
// is synced at the end). Beyond bulkTail keys, all but the last bulkTail go in bulk: sorted
// final runs of MaxRun keys (WriteFinalRun, as the spool's migrations and salvage write them)
// swept into the partitions in transactions of 32 partitions. The last bulkTail keys (or all
// of a smaller n) go through Writer.Add, with a Finish every L0Max keys, in transactions of
// 262,144 keys, as the spool's applies do: the same flushes, merges and sweep as Accepts,
// which leaves the final runs waiting for the sweep as they are in a running relay. An Accept
// pre-fill runs at ~9k keys/s here (3 h for 100M), the Add path at 50-300k keys/s.
func prefillIndex(b *testing.B, s *Spool, n int, key func(int) string) {
	const bulkTail = 12 << 20
	s.db.NoSync = true
	defer func() { s.db.NoSync = false }()
	now := time.Now()
	bulk := 0
	if n > 2*bulkTail {
		bulk = n - bulkTail
	}
	prefillBulk(b, s, bulk, key, now)
	const perTx, perFinish = 1 << 18, 8192
	for from := bulk; from < n; from += perTx {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := from; i < min(from+perTx, n); i += perFinish {
				w := s.dedup.Writer(tx)
				for j := i; j < min(i+perFinish, n, from+perTx); j++ {
					if err := w.Add(dedupindex.Hash([]byte(key(j))), now, now.Add(-s.window), true); err != nil {
						return err
					}
				}
				if err := w.Finish(now, s.window); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Sync(); err != nil {
		b.Fatal(err)
	}
}

// prefillBulk writes keys 0..n-1 as sorted final runs and sweeps them into the partitions.
func prefillBulk(b *testing.B, s *Spool, n int, key func(int) string, now time.Time) {
	if n == 0 {
		return
	}
	per := s.dedup.MaxRun()
	at := binary.BigEndian.AppendUint64(nil, timeBits(now))
	for from := 0; from < n; from += per {
		recs := make([][]byte, 0, per)
		for i := from; i < min(from+per, n); i++ {
			recs = append(recs, append(dedupindex.Hash([]byte(key(i))), at...))
		}
		slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:16], b[:16]) })
		run := make([]byte, 0, len(recs)*24)
		for _, r := range recs {
			run = append(run, r...)
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			if err := s.dedup.WriteFinalRun(tx, run); err != nil {
				return err
			}
			meta := tx.Bucket(bucketMeta)
			return meta.Put(dedupindex.MetaCountKey, encUint(decUint(meta.Get(dedupindex.MetaCountKey))+uint64(len(recs))))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("pre-fill: %d keys in final runs", n)
	for written := 1; written > 0; {
		err := s.db.Update(func(tx *bolt.Tx) error {
			// A budget of 32 partitions' records: n/Parts each.
			var err error
			written, err = s.dedup.Sweep(tx, now.Add(-s.window), 32*(n/dedupindex.Parts))
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("pre-fill: swept into the partitions")
}

// residentLookups looks up every hash again in groups of 64, checking the memory bound after
// each as Accept does after each group's lookups (serve's bound: BoundMemory(16 MiB)), and
// returns the resident set at the end and the file pages at their peak, in MiB, and the CPU
// time per lookup, with the checks and releases, in nanoseconds (the reads of /proc for the
// peak are left out).
func residentLookups(b *testing.B, s *Spool, present, absent [][]byte) (rss, filePeak, perLookup float64) {
	if err := s.BoundMemory(16 << 20); err != nil {
		b.Fatal(err)
	}
	_, base := rssMB()
	filePeak = base
	releases := 0
	defer func() {
		b.Logf("file pages: %.1f MiB after a release, %.1f MiB at the peak, %d releases", base, filePeak, releases)
	}()
	cutoff := time.Now().Add(-s.window)
	var spent time.Duration
	lookups := 0
	for _, hashes := range [][][]byte{present, absent} {
		for i := 0; i < len(hashes); i += 64 {
			c0 := cpuTime()
			err := s.view(func(tx *bolt.Tx) error {
				dv := s.dedup.View(tx)
				for _, h := range hashes[i:min(i+64, len(hashes))] {
					if h != nil {
						dv.Lookup(h, cutoff)
						lookups++
					}
				}
				dv.Release()
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			c1 := cpuTime()
			_, file := rssMB()
			filePeak = max(filePeak, file)
			if file > base+16 {
				releases++
			}
			c2 := cpuTime()
			if err := s.CheckMemory(); err != nil {
				b.Fatal(err)
			}
			spent += c1 - c0 + cpuTime() - c2
		}
	}
	rss, _ = rssMB()
	return rss, filePeak, float64(spent.Nanoseconds()) / float64(max(lookups, 1))
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

// keepPrefill copies the pre-filled spool directory dir to kept, with the key prefix its keys
// were made with, for later runs of the benchmark (HUBRELAY_DEDUP_KEEP: a 100M pre-fill takes
// ~5 minutes, a copy seconds, and every build then measures the same file).
func keepPrefill(b *testing.B, dir, kept, prefix string) {
	if err := os.MkdirAll(kept, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.CopyFS(filepath.Join(kept, "data"), os.DirFS(dir)); err != nil {
		b.Fatalf("keep the pre-fill: %v", err)
	}
	if err := os.WriteFile(filepath.Join(kept, "prefix"), []byte(prefix), 0o644); err != nil {
		b.Fatal(err)
	}
}

// keptPrefill replaces spool directory dir with the copy kept holds (keepPrefill).
func keptPrefill(b *testing.B, kept, dir string) {
	if err := os.RemoveAll(dir); err != nil {
		b.Fatal(err)
	}
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(kept, "data"))); err != nil {
		b.Fatalf("copy the kept pre-fill: %v", err)
	}
}

func randomKeyPrefix() string {
	r := make([]byte, 6)
	crand.Read(r)
	return "wamid.HBgL" + hex.EncodeToString(r)
}

// ioReadBytes returns the bytes this process has read from storage (read_bytes of
// /proc/self/io: page cache misses, of reads and of faults on the map), 0 where there is none.
func ioReadBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "read_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
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
