package spool

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The dedup index is log-structured, inside the spool file. New keys go to a small mutable
// level, L0 (the dedupkeys bucket, key hash -> accepted at). Dedup keys are hashes, so they
// land at random places: in one large B+tree every new key rewrites a page of its own at the
// next commit, and looking it up touches pages nothing else reads. Kept small, L0 stays in
// the CPU's caches and a commit's keys share its few pages.
//
// When L0 holds l0Max keys (8192), the apply that filled it writes them, in hash order, as an
// immutable sorted run: a sub-bucket of dedupruns holding chunks of fixed-size records (hash,
// accepted at), written once, sequentially. When fanIn (4) runs of one level exist, the same
// transaction merges them into one run of the next level, dropping keys past the window and
// older copies of a key accepted again. Runs that would merge into more than maxRun records
// (262144, 6 MiB) are marked final instead, so that no transaction writes more than a few MiB:
// level-2 runs (131072 keys) become final, so the index holds about one run per 131,072 keys
// in the window (runs migrated from format 2 hold 262144). Every run has a blocked Bloom
// filter (10 bits a key: 1.25 MB of memory per million keys, stored with the run and read at
// Open), so a lookup reads L0 and then only the runs that may hold the key: one cache line per
// run, and ~1 % false positives that cost a binary search in one chunk. Up to tens of millions
// of keys in the window that costs a few microseconds a key; far beyond (a 168h window at 170
// changes/s holds 100M keys: ~760 runs, 125 MB of filters, ~8 false-positive searches a
// lookup) lookups slow down in proportion, and compacting final runs further is the next
// step.
//
// A key is seen when some level holds it with a time inside the window. ExpireDedup deletes
// runs whose newest key is past the window, rewrites one run a call of which at least half is
// past it, and deletes expired keys of L0. Expired records that stay are not seen; merges drop
// them too.

var (
	bucketDedupRuns = []byte("dedupruns")
	metaDedupL0N    = []byte("dedupl0n")   // keys in L0
	metaDedupRunID  = []byte("deduprunid") // the last run id given
	runMetaKey      = []byte("m")          // in a run: level, records, oldest and newest time
)

// bloomPrefix starts the keys of a run's stored filter: 'b' + 4-byte index -> 64 KiB of it.
const bloomPrefix = 'b'

// mergeSlack is how much older than the window a record must be for a merge to drop it:
// acceptances are judged against their own request's time, which may be a little behind the
// frame that triggers the merge.
const mergeSlack = 10 * time.Minute

const (
	dedupRecord = 24 // a run record: the key hash (16 bytes) and its time (8)
	chunkPrefix = 'c'
)

// dedupConfig sizes the index; the zero value means the defaults (tests use small ones).
type dedupConfig struct {
	l0Max  int // L0 keys that make the apply flush L0 into a run
	fanIn  int // runs of one level merged into one
	maxRun int // the most records a merge writes; larger runs stay as they are
	chunk  int // records per chunk value
}

func (c dedupConfig) withDefaults() dedupConfig {
	if c.l0Max <= 0 {
		c.l0Max = 8192
	}
	if c.fanIn < 2 {
		c.fanIn = 4
	}
	if c.maxRun <= 0 {
		c.maxRun = 1 << 18 // 6 MiB of records
	}
	if c.chunk <= 0 {
		c.chunk = 2048 // 48 KiB
	}
	return c
}

// dedupIndex holds the index's configuration and the runs' Bloom filters. The runs a reader
// sees are those of its transaction; a filter is only a shortcut: a run without one (its
// filter is being replaced, or a transaction that dropped it was rolled back) is searched.
type dedupIndex struct {
	cfg    dedupConfig
	mu     sync.RWMutex
	blooms map[uint64]*bloom
}

func newDedupIndex(cfg dedupConfig) *dedupIndex {
	return &dedupIndex{cfg: cfg.withDefaults(), blooms: map[uint64]*bloom{}}
}

// runInfo is a run's metadata.
type runInfo struct {
	id         uint64
	level      int
	count      int
	minT, maxT uint64 // time bits of its oldest and newest record
}

func encRunMeta(r runInfo) []byte {
	b := make([]byte, 25)
	b[0] = byte(r.level)
	binary.BigEndian.PutUint64(b[1:], uint64(r.count))
	binary.BigEndian.PutUint64(b[9:], r.minT)
	binary.BigEndian.PutUint64(b[17:], r.maxT)
	return b
}

func decRunMeta(id uint64, b []byte) (runInfo, error) {
	if len(b) != 25 {
		return runInfo{}, fmt.Errorf("dedup run %d: metadata of %d bytes", id, len(b))
	}
	return runInfo{id: id, level: int(b[0]), count: int(binary.BigEndian.Uint64(b[1:])),
		minT: binary.BigEndian.Uint64(b[9:]), maxT: binary.BigEndian.Uint64(b[17:])}, nil
}

// runs lists the runs tx holds, in id order.
func runs(tx *bolt.Tx) ([]runInfo, error) {
	var out []runInfo
	rb := tx.Bucket(bucketDedupRuns)
	c := rb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil || len(k) != 8 {
			continue
		}
		r, err := decRunMeta(decUint(k), rb.Bucket(k).Get(runMetaKey))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// load reads the filter of every run tx holds (or builds it, for a run stored without one).
func (d *dedupIndex) load(tx *bolt.Tx) error {
	rs, err := runs(tx)
	if err != nil {
		return err
	}
	rb := tx.Bucket(bucketDedupRuns)
	for _, r := range rs {
		b := rb.Bucket(encUint(r.id))
		f := newBloom(r.count)
		if !f.read(b) {
			f = newBloom(r.count)
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
		d.setBloom(r.id, f)
	}
	return nil
}

func (d *dedupIndex) setBloom(id uint64, f *bloom) {
	d.mu.Lock()
	d.blooms[id] = f
	d.mu.Unlock()
}

func (d *dedupIndex) dropBloom(id uint64) {
	d.mu.Lock()
	delete(d.blooms, id)
	d.mu.Unlock()
}

// eachChunk calls fn with the records of each chunk of run bucket b, in hash order.
func eachChunk(b *bolt.Bucket, fn func(recs []byte) error) error {
	c := b.Cursor()
	for k, v := c.Seek([]byte{chunkPrefix}); k != nil && k[0] == chunkPrefix; k, v = c.Next() {
		if len(v)%dedupRecord != 0 {
			return fmt.Errorf("dedup run chunk of %d bytes", len(v))
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return nil
}

// dedupView is one transaction's view of the index, for lookups.
type dedupView struct {
	l0   *bolt.Bucket
	runs []runView
}

type runView struct {
	b *bolt.Bucket
	f *bloom // nil: search the run
}

// view returns tx's view of the index.
func (d *dedupIndex) view(tx *bolt.Tx) dedupView {
	v := dedupView{l0: tx.Bucket(bucketDedup)}
	rb := tx.Bucket(bucketDedupRuns)
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
		v.runs[i].f = d.blooms[id]
	}
	d.mu.RUnlock()
	return v
}

// lookup reports whether some level holds hash h with a time after cutoff (seen), and
// whether any level holds it at all (known).
func (v dedupView) lookup(h []byte, cutoff uint64) (seen, known bool) {
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
		if t, ok := searchRun(r.b, h); ok {
			if t > cutoff {
				return true, true
			}
			known = true
		}
	}
	return false, known
}

// searchRun returns the time run b records for hash h.
func searchRun(b *bolt.Bucket, h []byte) (uint64, bool) {
	var ck [17]byte
	ck[0] = chunkPrefix
	copy(ck[1:], h)
	c := b.Cursor()
	k, v := c.Seek(ck[:])
	if k == nil || !bytes.Equal(k, ck[:]) {
		// The chunk that may hold h is the last one starting below it.
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		for k != nil && k[0] != chunkPrefix {
			k, v = c.Prev()
		}
		if k == nil {
			return 0, false
		}
	}
	n := len(v) / dedupRecord
	i := sort.Search(n, func(i int) bool { return bytes.Compare(v[i*dedupRecord:i*dedupRecord+16], h) >= 0 })
	if i < n && bytes.Equal(v[i*dedupRecord:i*dedupRecord+16], h) {
		return binary.BigEndian.Uint64(v[i*dedupRecord+16:]), true
	}
	return 0, false
}

// add records hash h accepted at (time bits atB) in L0 and reports whether it is a new entry
// there. fresh means the caller knows no level holds h. A key L0 holds with a time after
// cutoff is left alone (a replayed frame the file already recorded); one past it is replaced.
func (d *dedupIndex) add(b buckets, h, atB []byte, fresh bool, cutoff uint64) (added bool, err error) {
	if !fresh {
		if v := b.dedup.Get(h); v != nil {
			if binary.BigEndian.Uint64(v) > cutoff {
				return false, nil
			}
			if err := b.dedup.Put(h, atB); err != nil {
				return false, fmt.Errorf("put dedup key: %w", err)
			}
			return false, nil
		}
	}
	if err := b.dedup.Put(h, atB); err != nil {
		return false, fmt.Errorf("put dedup key: %w", err)
	}
	return true, nil
}

// maintain flushes L0 into a run once it holds l0Max keys, then merges runs while a level
// holds fanIn. Records with a time at or before cutoff are dropped by merges.
func (d *dedupIndex) maintain(tx *bolt.Tx, cutoff uint64) error {
	if decUint(tx.Bucket(bucketMeta).Get(metaDedupL0N)) < uint64(d.cfg.l0Max) {
		return nil
	}
	if err := d.flush(tx); err != nil {
		return err
	}
	return d.merge(tx, cutoff)
}

// finalLevel marks runs that are never merged again: those a merge would make larger than
// maxRun, and those Open makes of a format-2 index.
const finalLevel = 255

// flush moves every key of L0, in hash order, into a new run of level 0.
func (d *dedupIndex) flush(tx *bolt.Tx) error {
	var recs []byte
	minT, maxT := ^uint64(0), uint64(0)
	c := tx.Bucket(bucketDedup).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 16 || len(v) != 8 {
			return fmt.Errorf("dedup key of %d bytes with a value of %d", len(k), len(v))
		}
		recs = append(append(recs, k...), v...)
		t := binary.BigEndian.Uint64(v)
		minT, maxT = min(minT, t), max(maxT, t)
	}
	if n := len(recs) / dedupRecord; n > 0 {
		if err := d.writeRun(tx, runInfo{level: 0, count: n, minT: minT, maxT: maxT}, recs); err != nil {
			return err
		}
	}
	if err := tx.DeleteBucket(bucketDedup); err != nil {
		return fmt.Errorf("empty dedup L0: %w", err)
	}
	if _, err := tx.CreateBucket(bucketDedup); err != nil {
		return fmt.Errorf("empty dedup L0: %w", err)
	}
	if err := tx.Bucket(bucketMeta).Put(metaDedupL0N, encUint(0)); err != nil {
		return fmt.Errorf("put dedup L0 count: %w", err)
	}
	return nil
}

// writeRun stores recs (sorted, distinct hashes) as a new run described by r, and its filter.
func (d *dedupIndex) writeRun(tx *bolt.Tx, r runInfo, recs []byte) error {
	meta := tx.Bucket(bucketMeta)
	r.id = decUint(meta.Get(metaDedupRunID)) + 1
	if err := meta.Put(metaDedupRunID, encUint(r.id)); err != nil {
		return fmt.Errorf("put dedup run id: %w", err)
	}
	b, err := tx.Bucket(bucketDedupRuns).CreateBucket(encUint(r.id))
	if err != nil {
		return fmt.Errorf("create dedup run: %w", err)
	}
	b.FillPercent = appendFill
	if err := b.Put(runMetaKey, encRunMeta(r)); err != nil {
		return fmt.Errorf("put dedup run: %w", err)
	}
	f := newBloom(r.count)
	step := d.cfg.chunk * dedupRecord
	for off := 0; off < len(recs); off += step {
		chunk := recs[off:min(off+step, len(recs))]
		key := make([]byte, 17)
		key[0] = chunkPrefix
		copy(key[1:], chunk[:16])
		if err := b.Put(key, chunk); err != nil {
			return fmt.Errorf("put dedup run chunk: %w", err)
		}
		for i := 0; i < len(chunk); i += dedupRecord {
			f.add(chunk[i : i+16])
		}
	}
	if err := f.write(b); err != nil {
		return fmt.Errorf("put dedup run filter: %w", err)
	}
	d.setBloom(r.id, f)
	return nil
}

// dropRun deletes run r.
func (d *dedupIndex) dropRun(tx *bolt.Tx, r runInfo) error {
	if err := tx.Bucket(bucketDedupRuns).DeleteBucket(encUint(r.id)); err != nil {
		return fmt.Errorf("delete dedup run %d: %w", r.id, err)
	}
	d.dropBloom(r.id)
	return nil
}

// merge merges, while some level holds fanIn runs, the oldest fanIn runs of the lowest such
// level into one run of the next level; runs that would merge into more than maxRun records
// are marked final instead.
func (d *dedupIndex) merge(tx *bolt.Tx, cutoff uint64) error {
	for {
		rs, err := runs(tx)
		if err != nil {
			return err
		}
		byLevel := map[int][]runInfo{}
		lowest := finalLevel
		for _, r := range rs {
			if r.level == finalLevel {
				continue
			}
			byLevel[r.level] = append(byLevel[r.level], r)
			if len(byLevel[r.level]) >= d.cfg.fanIn {
				lowest = min(lowest, r.level)
			}
		}
		if lowest == finalLevel {
			return nil
		}
		in := byLevel[lowest][:d.cfg.fanIn]
		total := 0
		for _, r := range in {
			total += r.count
		}
		if total > d.cfg.maxRun {
			rb := tx.Bucket(bucketDedupRuns)
			for _, r := range in {
				r.level = finalLevel
				if err := rb.Bucket(encUint(r.id)).Put(runMetaKey, encRunMeta(r)); err != nil {
					return fmt.Errorf("put dedup run: %w", err)
				}
			}
			continue
		}
		if _, err := d.mergeRuns(tx, in, in[0].level+1, cutoff); err != nil {
			return err
		}
	}
}

// mergeRuns replaces runs in by one run of the given level holding, for each hash, its newest
// time, and nothing at or before cutoff. It returns how many records it dropped.
func (d *dedupIndex) mergeRuns(tx *bolt.Tx, in []runInfo, level int, cutoff uint64) (int, error) {
	rb := tx.Bucket(bucketDedupRuns)
	srcs := make([][]byte, len(in)) // each run's records, concatenated in hash order
	total := 0
	for i, r := range in {
		err := eachChunk(rb.Bucket(encUint(r.id)), func(recs []byte) error {
			srcs[i] = append(srcs[i], recs...)
			return nil
		})
		if err != nil {
			return 0, err
		}
		total += r.count
	}
	out := make([]byte, 0, total*dedupRecord)
	minT, maxT := ^uint64(0), uint64(0)
	for {
		// The smallest hash among the inputs' heads, with its newest time.
		var h []byte
		var t uint64
		for _, s := range srcs {
			if len(s) == 0 {
				continue
			}
			switch c := bytes.Compare(s[:16], h); {
			case h == nil || c < 0:
				h, t = s[:16], binary.BigEndian.Uint64(s[16:dedupRecord])
			case c == 0:
				t = max(t, binary.BigEndian.Uint64(s[16:dedupRecord]))
			}
		}
		if h == nil {
			break
		}
		h = bytes.Clone(h)
		for i, s := range srcs {
			if len(s) > 0 && bytes.Equal(s[:16], h) {
				srcs[i] = s[dedupRecord:]
			}
		}
		if t <= cutoff {
			continue
		}
		out = append(out, h...)
		out = binary.BigEndian.AppendUint64(out, t)
		minT, maxT = min(minT, t), max(maxT, t)
	}
	for _, r := range in {
		if err := d.dropRun(tx, r); err != nil {
			return 0, err
		}
	}
	n := len(out) / dedupRecord
	if n > 0 {
		if err := d.writeRun(tx, runInfo{level: level, count: n, minT: minT, maxT: maxT}, out); err != nil {
			return 0, err
		}
	}
	return total - n, addDedupN(tx.Bucket(bucketMeta), int64(n-total))
}

// expire deletes records at or before cutoff: runs that hold nothing else go whole, one run
// a call of which at least half is past cutoff is written again without those (a run is not
// split, so this may go past max), and then up to max-(records deleted so far) keys of L0.
// It returns how many records it deleted.
func (d *dedupIndex) expire(tx *bolt.Tx, cutoff uint64, max int) (int, error) {
	rs, err := runs(tx)
	if err != nil {
		return 0, err
	}
	removed, rewritten := 0, false
	rb := tx.Bucket(bucketDedupRuns)
	for _, r := range rs {
		if removed >= max {
			break
		}
		switch {
		case r.maxT <= cutoff:
			if err := d.dropRun(tx, r); err != nil {
				return 0, err
			}
			if err := addDedupN(tx.Bucket(bucketMeta), -int64(r.count)); err != nil {
				return 0, err
			}
			removed += r.count
		case r.minT <= cutoff && !rewritten:
			old := 0
			err := eachChunk(rb.Bucket(encUint(r.id)), func(recs []byte) error {
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
			if 2*old < r.count {
				continue // rewriting the run for a few records would cost more than they take
			}
			n, err := d.mergeRuns(tx, []runInfo{r}, r.level, cutoff)
			if err != nil {
				return 0, err
			}
			removed, rewritten = removed+n, true
		}
	}
	l0 := tx.Bucket(bucketDedup)
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
		meta := tx.Bucket(bucketMeta)
		l0n := decUint(meta.Get(metaDedupL0N))
		if err := meta.Put(metaDedupL0N, encUint(l0n-min(l0n, uint64(len(old))))); err != nil {
			return 0, fmt.Errorf("put dedup L0 count: %w", err)
		}
		if err := addDedupN(meta, -int64(len(old))); err != nil {
			return 0, err
		}
	}
	return removed + len(old), nil
}

// bloom is a blocked Bloom filter over key hashes: each key sets 7 bits of one 512-bit block
// (one cache line), chosen from the hash's own bits, which SHA-256 makes uniform. At 10 bits a
// key it answers "maybe" for about 1 % of the keys it does not hold.
type bloom struct {
	words  []uint64
	blocks uint64
}

func newBloom(keys int) *bloom {
	blocks := max(1, (keys*10+511)/512)
	return &bloom{words: make([]uint64, blocks*8), blocks: uint64(blocks)}
}

func (f *bloom) add(h []byte) {
	base := (binary.BigEndian.Uint64(h[:8]) % f.blocks) * 8
	bits := binary.BigEndian.Uint64(h[8:16])
	for i := range 7 {
		bit := (bits >> (9 * i)) & 511
		f.words[base+bit/64] |= 1 << (bit % 64)
	}
}

func (f *bloom) has(h []byte) bool {
	base := (binary.BigEndian.Uint64(h[:8]) % f.blocks) * 8
	bits := binary.BigEndian.Uint64(h[8:16])
	for i := range 7 {
		bit := (bits >> (9 * i)) & 511
		if f.words[base+bit/64]&(1<<(bit%64)) == 0 {
			return false
		}
	}
	return true
}

// bloomValue is the size of one stored piece of a filter.
const bloomValue = 64 << 10

// write stores f in run bucket b, in pieces of bloomValue bytes.
func (f *bloom) write(b *bolt.Bucket) error {
	buf := make([]byte, 0, len(f.words)*8)
	for _, w := range f.words {
		buf = binary.LittleEndian.AppendUint64(buf, w)
	}
	for i, off := 0, 0; off < len(buf); i, off = i+1, off+bloomValue {
		key := binary.BigEndian.AppendUint32([]byte{bloomPrefix}, uint32(i))
		if err := b.Put(key, buf[off:min(off+bloomValue, len(buf))]); err != nil {
			return err
		}
	}
	return nil
}

// read loads f, sized for the run, from run bucket b; false if b holds no filter of that size.
func (f *bloom) read(b *bolt.Bucket) bool {
	c := b.Cursor()
	w := 0
	for k, v := c.Seek([]byte{bloomPrefix}); k != nil && k[0] == bloomPrefix; k, v = c.Next() {
		if len(v)%8 != 0 || w+len(v)/8 > len(f.words) {
			return false
		}
		for i := 0; i < len(v); i += 8 {
			f.words[w] = binary.LittleEndian.Uint64(v[i:])
			w++
		}
	}
	return w == len(f.words)
}

// dedupHash is what the file stores of a dedup key: 16 bytes of its SHA-256. Keys run to tens
// of bytes (a WhatsApp message id alone is ~60) and land at random places in the index, so
// every page they touch is rewritten at the next commit: short fixed-size keys mean several
// times fewer pages. A false repeat needs two keys among those in the window to collide in
// 128 bits.
func dedupHash(key []byte) []byte {
	h := sha256.Sum256(key)
	return h[:16]
}

// addDedupN adds delta to the stored dedup key count.
func addDedupN(meta *bolt.Bucket, delta int64) error {
	n := int64(decUint(meta.Get(metaDedupN))) + delta
	if n < 0 {
		n = 0
	}
	if err := meta.Put(metaDedupN, encUint(uint64(n))); err != nil {
		return fmt.Errorf("put dedup count: %w", err)
	}
	return nil
}
