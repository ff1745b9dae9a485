package dedupindex

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// mergeSlack is how much older than the window a record must be for a merge to drop it:
// acceptances are judged against their own request's time, which may be a little behind the
// frame that triggers the merge.
const mergeSlack = 10 * time.Minute

// Config sizes the index; the zero value means the defaults (tests use small ones).
type Config struct {
	L0Max  int // L0 keys that make a Writer's Finish flush L0 into a run (default 8192)
	FanIn  int // runs of one level merged into one (default 4)
	MaxRun int // the most records a merge writes; larger runs stay as they are (default 262144)
	Chunk  int // records per chunk value (default 2048)
	// PartChunk is the records per chunk of a partition (default 160: one 4 KiB page, so that
	// a lookup reads one page of the final level).
	PartChunk int
	// SweepRatio is how many records of partitions a flush of L0 may write, per key flushed,
	// merging final runs into them (default 16). More keeps fewer final runs (and filters)
	// waiting at the cost of more writing.
	SweepRatio int
}

// withDefaults fills the zero fields of c with their defaults.
func (c Config) withDefaults() Config {
	if c.L0Max <= 0 {
		c.L0Max = 8192
	}
	if c.FanIn < 2 {
		c.FanIn = 4
	}
	if c.MaxRun <= 0 {
		c.MaxRun = 1 << 18 // 6 MiB of records
	}
	if c.Chunk <= 0 {
		c.Chunk = 2048 // 48 KiB
	}
	if c.PartChunk <= 0 {
		c.PartChunk = 160
	}
	if c.SweepRatio <= 0 {
		c.SweepRatio = 16
	}
	return c
}

// Index holds the index's configuration and the runs' Bloom filters. The runs a reader
// sees are those of its transaction; a filter is only a shortcut: a run without one (its
// filter is being replaced, or a transaction that dropped it was rolled back) is searched.
// Its methods are safe for concurrent use, as bbolt's transactions are.
type Index struct {
	cfg    Config
	meta   []byte // the owner's bucket that holds the index's counters
	mu     sync.RWMutex
	blooms map[uint64]runFilter
	// partMinT and partMaxT hold, per partition, the MinT and MaxT it was last read or written
	// with (MaxUint64: it holds nothing; a MinT of 0: not known), so that Expire reads only the
	// partitions it may drop or rewrite: reading the metadata of all Parts partitions at every
	// call faulted in a page (and, with fault-around, the 64 KiB around it) of each, a burst of
	// up to 64 MiB of resident file pages. A transaction that rolls back can leave an entry
	// above the file's; that only keeps expired records (which lookups ignore) until the sweep
	// rewrites the partition or Load reads it again.
	partMinT, partMaxT [Parts]atomic.Uint64
	// release, when set, is called by the write transactions that read many partitions in
	// one (the sweep, Expire) every releaseEvery partitions (SetRelease).
	release func(*bolt.Tx)
	// pages, when set, is where read-only Views read the final level's pages (SetPageFile).
	pages *pageFile
}

// releaseEvery is how many partitions the sweep and Expire read between calls of the
// release function: a partition read faults in the 64 KiB of the file around it, so 32 are
// up to 2 MiB of resident file pages.
const releaseEvery = 32

// SetRelease makes the index call fn(tx) now and then inside its write transactions that
// read many partitions in one (a sweep reads up to hundreds), so that the owner can drop the
// file pages they faulted in before the transaction ends. fn runs in the index's write
// transaction; it must not write to tx. Call it before the index is shared between
// goroutines (the spool sets it at the end of Open; the migrations and the journal replay
// before it run without one).
func (d *Index) SetRelease(fn func(*bolt.Tx)) { d.release = fn }

// released calls the release function after every releaseEvery-th partition read (n counts
// them).
func (d *Index) released(tx *bolt.Tx, n int) {
	if d.release != nil && n > 0 && n%releaseEvery == 0 {
		d.release(tx)
	}
}

// New returns an index sized by cfg that keeps its counters (MetaCountKey and its own) in the
// top-level bucket named meta, which its owner creates. Call Load before the first lookup.
func New(cfg Config, meta []byte) *Index {
	return &Index{cfg: cfg.withDefaults(), meta: meta, blooms: map[uint64]runFilter{}}
}

// MaxRun is the most records a merge writes (Config.MaxRun).
func (d *Index) MaxRun() int { return d.cfg.MaxRun }

// Len returns the number of records the index holds in tx: one per key, plus, for a key
// accepted again after its window, the older record until Expire or a merge drops it.
func (d *Index) Len(tx *bolt.Tx) uint64 { return decUint(tx.Bucket(d.meta).Get(MetaCountKey)) }

// L0Len returns the number of keys in the mutable level.
func (d *Index) L0Len(tx *bolt.Tx) uint64 { return decUint(tx.Bucket(d.meta).Get(metaL0N)) }

// Runs returns the runs tx holds, in id order.
func (d *Index) Runs(tx *bolt.Tx) ([]RunInfo, error) { return runs(tx) }

// DropFilters forgets every run's Bloom filter, as after a rolled-back merge: lookups search
// those runs instead, until Load reads the filters again.
func (d *Index) DropFilters() {
	d.mu.Lock()
	clear(d.blooms)
	d.mu.Unlock()
}

// Load reads the filter of every run tx holds (or builds it, for a run stored without one).
func (d *Index) Load(tx *bolt.Tx) error {
	rs, err := runs(tx)
	if err != nil {
		return err
	}
	rb := tx.Bucket(RunsBucket)
	for _, r := range rs {
		b := rb.Bucket(encUint(r.ID))
		f, ok := readBloom(b)
		if !ok {
			f = newBloom(r.Count)
			err := eachChunk(b, func(recs []byte) error {
				for i := 0; i+dedupRecord <= len(recs); i += dedupRecord {
					f.add(recs[i : i+16])
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		d.setBloom(r, f)
	}
	// The partitions' records stay on disk; their metadata is read so that a damaged one is
	// found at Open rather than by the sweep, and to know their times (partMinT, partMaxT):
	// from the file's pages where the index has them (SetPageFile), so that opening a large
	// index does not fault the path to every partition's last key into resident memory.
	pr := d.reader(tx)
	defer pr.release()
	for p := range Parts {
		r, _, ok, err := partInfoFrom(tx.Bucket(PartsBucket), p, pr)
		if err != nil {
			return err
		}
		d.notePart(p, r, ok)
	}
	return nil
}

// reader returns a pageReader for the lookups of read transaction tx, nil when tx is writable
// (its own changes are not in the file) or the index has no page file (SetPageFile).
func (d *Index) reader(tx *bolt.Tx) *pageReader {
	if d.pages == nil || tx.Writable() {
		return nil
	}
	return &pageReader{pf: d.pages, limit: tx.Size(), txid: uint64(tx.ID())}
}

// notePart records partition p's MinT and MaxT as read or written (ok: it holds records).
func (d *Index) notePart(p int, r RunInfo, ok bool) {
	if !ok {
		r.MinT, r.MaxT = math.MaxUint64, math.MaxUint64
	}
	d.partMaxT[p].Store(r.MaxT)
	d.partMinT[p].Store(r.MinT)
}

// forgetPart marks partition p's times as not known, after a delete of it: Expire then reads
// it again.
func (d *Index) forgetPart(p int) { d.partMinT[p].Store(0) }

// runFilter is what the Index holds of a run in memory: its filter, and whether its chunks
// are split at partition bounds (runs of level 2 and up, those that become final: writeRun).
// Lookups read such a run's pages from the file, as the partitions', where the View can: its
// chunks hold one partition's records each, a page or two, where a lower level's are 48 KiB.
// (A run of level 0 or 1 that a merge marks final, which the default sizes never make, is
// taken for aligned after a restart, Load knowing only its level: its lookups then read its
// larger chunks with pread, as correctly, a little slower.)
type runFilter struct {
	f       *bloom
	aligned bool
}

func (d *Index) setBloom(r RunInfo, f *bloom) {
	d.mu.Lock()
	d.blooms[r.ID] = runFilter{f: f, aligned: r.Level >= 2}
	d.mu.Unlock()
}

func (d *Index) dropBloom(id uint64) {
	d.mu.Lock()
	delete(d.blooms, id)
	d.mu.Unlock()
}

// View is one transaction's view of the index, for lookups. It is valid while its
// transaction is open.
type View struct {
	l0    *bolt.Bucket
	parts *bolt.Bucket
	runs  []runView
	pages *pageReader // nil: partitions are read through the map (SetPageFile)
}

type runView struct {
	b       *bolt.Bucket
	f       *bloom // nil: search the run
	aligned bool   // read its pages from the file (runFilter)
}

// View returns tx's view of the index.
func (d *Index) View(tx *bolt.Tx) View {
	v := View{l0: tx.Bucket(L0Bucket), parts: tx.Bucket(PartsBucket), pages: d.reader(tx)}
	rb := tx.Bucket(RunsBucket)
	c := rb.Cursor()
	var ids []uint64
	for k, val := c.First(); k != nil; k, val = c.Next() {
		if val == nil && len(k) == 8 {
			v.runs = append(v.runs, runView{b: rb.Bucket(k)})
			ids = append(ids, decUint(k))
		}
	}
	d.mu.RLock()
	for i, id := range ids {
		rf := d.blooms[id]
		v.runs[i].f, v.runs[i].aligned = rf.f, rf.aligned
	}
	d.mu.RUnlock()
	return v
}

// Release hands the buffers the View's lookups read pages into on to the next View; the View
// must not be used after it. A View not released is only left to the garbage collector.
func (v View) Release() { v.pages.release() }

// Lookup reports whether some level holds hash h with a time after cutoff (seen), and
// whether any level holds it at all (known).
func (v View) Lookup(h []byte, cutoffTime time.Time) (seen, known bool) {
	cutoff := timeBits(cutoffTime)
	if t := v.l0.Get(h); t != nil {
		if binary.BigEndian.Uint64(t) > cutoff {
			return true, true
		}
		known = true
	}
	for _, r := range v.runs {
		if r.f != nil && !r.f.has(h) {
			continue
		}
		var pr *pageReader
		if r.aligned {
			pr = v.pages
		}
		if t, ok := searchRun(r.b, h, pr); ok {
			if t > cutoff {
				return true, true
			}
			known = true
		}
	}
	if t, ok := searchPart(v.parts, h, v.pages); ok {
		if t > cutoff {
			return true, true
		}
		known = true
	}
	return false, known
}

// Writer adds keys to the index in one write transaction; Finish completes what they need.
type Writer struct {
	d     *Index
	tx    *bolt.Tx
	l0    *bolt.Bucket
	added int64 // new entries in L0
}

// Writer returns a Writer that adds keys in tx.
func (d *Index) Writer(tx *bolt.Tx) *Writer {
	return &Writer{d: d, tx: tx, l0: tx.Bucket(L0Bucket)}
}

// Add records hash h accepted at in L0. fresh means the caller knows no level holds h. A key
// L0 holds with a time after cutoff is left alone (a replayed frame the file already
// recorded); one past it is replaced.
func (w *Writer) Add(h []byte, at, cutoff time.Time, fresh bool) error {
	atB := encUint(timeBits(at))
	if !fresh {
		if v := w.l0.Get(h); v != nil {
			if binary.BigEndian.Uint64(v) > timeBits(cutoff) {
				return nil
			}
			if err := w.l0.Put(h, atB); err != nil {
				return fmt.Errorf("put dedup key: %w", err)
			}
			return nil
		}
	}
	if err := w.l0.Put(h, atB); err != nil {
		return fmt.Errorf("put dedup key: %w", err)
	}
	w.added++
	return nil
}

// Finish records the count of the keys Add added and, once L0 holds L0Max keys, flushes it
// into a run and merges runs. newest is the newest acceptance time added and window the
// dedup window: merges drop records older than newest-window-mergeSlack.
func (w *Writer) Finish(newest time.Time, window time.Duration) error {
	if w.added == 0 {
		return nil
	}
	meta := w.tx.Bucket(w.d.meta)
	if err := addCount(meta, w.added); err != nil {
		return err
	}
	if err := meta.Put(metaL0N, encUint(decUint(meta.Get(metaL0N))+uint64(w.added))); err != nil {
		return fmt.Errorf("put dedup L0 count: %w", err)
	}
	if err := w.d.maintain(w.tx, timeBits(newest.Add(-window-mergeSlack))); err != nil {
		return fmt.Errorf("dedup index: %w", err)
	}
	return nil
}

// maintain flushes L0 into a run once it holds l0Max keys, then merges runs while a level
// holds fanIn. Records with a time at or before cutoff are dropped by merges.
func (d *Index) maintain(tx *bolt.Tx, cutoff uint64) error {
	if decUint(tx.Bucket(d.meta).Get(metaL0N)) < uint64(d.cfg.L0Max) {
		return nil
	}
	if err := d.flush(tx); err != nil {
		return err
	}
	if err := d.merge(tx, cutoff); err != nil {
		return err
	}
	_, err := d.sweep(tx, cutoff, d.cfg.SweepRatio*d.cfg.L0Max)
	return err
}

// flush moves every key of L0, in hash order, into a new run of level 0.
func (d *Index) flush(tx *bolt.Tx) error {
	var recs []byte
	minT, maxT := ^uint64(0), uint64(0)
	c := tx.Bucket(L0Bucket).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 16 || len(v) != 8 {
			return fmt.Errorf("dedup key of %d bytes with a value of %d", len(k), len(v))
		}
		recs = append(append(recs, k...), v...)
		t := binary.BigEndian.Uint64(v)
		minT, maxT = min(minT, t), max(maxT, t)
	}
	if n := len(recs) / dedupRecord; n > 0 {
		if err := d.writeRun(tx, RunInfo{Level: 0, Count: n, MinT: minT, MaxT: maxT}, recs); err != nil {
			return err
		}
	}
	return d.ResetL0(tx)
}

// ResetL0 empties the mutable level (creating its bucket if there is none) and its count.
func (d *Index) ResetL0(tx *bolt.Tx) error {
	if tx.Bucket(L0Bucket) != nil {
		if err := tx.DeleteBucket(L0Bucket); err != nil {
			return fmt.Errorf("empty dedup L0: %w", err)
		}
	}
	if _, err := tx.CreateBucket(L0Bucket); err != nil {
		return fmt.Errorf("empty dedup L0: %w", err)
	}
	if err := tx.Bucket(d.meta).Put(metaL0N, encUint(0)); err != nil {
		return fmt.Errorf("put dedup L0 count: %w", err)
	}
	return nil
}

// Expire deletes records accepted at or before cutoff: runs that hold nothing else go whole,
// one run a call of which at least half is past cutoff is written again without those (a run
// is not split, so this may go past max), and then up to max-(records deleted so far) keys of
// L0. It returns how many records it deleted.
func (d *Index) Expire(tx *bolt.Tx, cutoffTime time.Time, max int) (int, error) {
	cutoff := timeBits(cutoffTime)
	rs, err := runs(tx)
	if err != nil {
		return 0, err
	}
	removed, rewritten := 0, false
	rb := tx.Bucket(RunsBucket)
	for _, r := range rs {
		if removed >= max {
			break
		}
		switch {
		case r.MaxT <= cutoff:
			if err := d.dropRun(tx, r); err != nil {
				return 0, err
			}
			if err := addCount(tx.Bucket(d.meta), -int64(r.Count)); err != nil {
				return 0, err
			}
			removed += r.Count
		case r.MinT <= cutoff && !rewritten:
			old := 0
			err := eachChunk(rb.Bucket(encUint(r.ID)), func(recs []byte) error {
				for i := 16; i < len(recs); i += dedupRecord {
					if binary.BigEndian.Uint64(recs[i:]) <= cutoff {
						old++
					}
				}
				return nil
			})
			if err != nil {
				return 0, err
			}
			if 2*old < r.Count {
				continue // rewriting the run for a few records would cost more than they take
			}
			n, err := d.mergeRuns(tx, []RunInfo{r}, r.Level, cutoff)
			if err != nil {
				return 0, err
			}
			removed, rewritten = removed+n, true
		}
	}
	if removed < max {
		n, err := d.expireParts(tx, cutoff)
		if err != nil {
			return 0, err
		}
		removed += n
	}
	l0 := tx.Bucket(L0Bucket)
	var old [][]byte
	c := l0.Cursor()
	for k, v := c.First(); k != nil && removed+len(old) < max; k, v = c.Next() {
		if binary.BigEndian.Uint64(v) <= cutoff {
			old = append(old, bytes.Clone(k))
		}
	}
	for _, k := range old {
		if err := l0.Delete(k); err != nil {
			return 0, fmt.Errorf("delete dedup key: %w", err)
		}
	}
	if len(old) > 0 {
		meta := tx.Bucket(d.meta)
		l0n := decUint(meta.Get(metaL0N))
		if err := meta.Put(metaL0N, encUint(l0n-min(l0n, uint64(len(old))))); err != nil {
			return 0, fmt.Errorf("put dedup L0 count: %w", err)
		}
		if err := addCount(meta, -int64(len(old))); err != nil {
			return 0, err
		}
	}
	return removed + len(old), nil
}
