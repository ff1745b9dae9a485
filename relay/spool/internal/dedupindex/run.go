package dedupindex

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"
)

// RunInfo is a run's metadata.
type RunInfo struct {
	ID         uint64
	Level      int    // 0 for a flushed L0, one more for each merge; FinalLevel
	Count      int    // records
	MinT, MaxT uint64 // time bits of its oldest and newest record
}

// runs lists the runs tx holds, in id order.
func runs(tx *bolt.Tx) ([]RunInfo, error) {
	var out []RunInfo
	rb := tx.Bucket(RunsBucket)
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

// searchRun returns the time run b records for hash h. The chunk that may hold h is the last
// one starting at or below it; the keys below the chunks' are the filter's ('b'), so if the
// key at or below h is not a chunk's, no chunk is. pr reads the run's pages from the file
// (floorBucket); nil, through bbolt's map.
func searchRun(b *bolt.Bucket, h []byte, pr *pageReader) (uint64, bool) {
	var ck [17]byte
	ck[0] = chunkPrefix
	copy(ck[1:], h)
	k, v := pr.floorBucket(b, ck[:])
	if k == nil || k[0] != chunkPrefix {
		return 0, false
	}
	return searchChunk(v, h)
}

// searchChunk returns the time chunk v records for hash h.
func searchChunk(v, h []byte) (uint64, bool) {
	n := len(v) / dedupRecord
	i := sort.Search(n, func(i int) bool { return bytes.Compare(v[i*dedupRecord:i*dedupRecord+16], h) >= 0 })
	if i < n && bytes.Equal(v[i*dedupRecord:i*dedupRecord+16], h) {
		return binary.BigEndian.Uint64(v[i*dedupRecord+16:]), true
	}
	return 0, false
}

// FinalLevel marks runs that are never merged again: those a merge would make larger than
// maxRun, and those Open makes of a format-2 index.
const FinalLevel = 255

// writeRun stores recs (sorted, distinct hashes) as a new run described by r, and its filter.
func (d *Index) writeRun(tx *bolt.Tx, r RunInfo, recs []byte) error {
	d.runsChanged(tx)
	meta := tx.Bucket(d.meta)
	r.ID = decUint(meta.Get(metaRunID)) + 1
	if err := meta.Put(metaRunID, encUint(r.ID)); err != nil {
		return fmt.Errorf("put dedup run id: %w", err)
	}
	b, err := tx.Bucket(RunsBucket).CreateBucket(encUint(r.ID))
	if err != nil {
		return fmt.Errorf("create dedup run: %w", err)
	}
	b.FillPercent = appendFill
	if err := b.Put(runMetaKey, encRunMeta(r)); err != nil {
		return fmt.Errorf("put dedup run: %w", err)
	}
	f := newBloom(r.Count)
	// Runs that may become final split their chunks at partition bounds too, so that the sweep
	// takes a partition's records out of them by deleting whole chunks.
	aligned := r.Level >= 2
	for off := 0; off < len(recs); {
		end := min(off+d.cfg.Chunk*dedupRecord, len(recs))
		if aligned {
			_, hi := partBounds(partOf(recs[off:]))
			for i := off + dedupRecord; i < end; i += dedupRecord {
				if prefix16(recs[i:]) >= hi {
					end = i
					break
				}
			}
		}
		chunk := recs[off:end]
		off = end
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
	d.setBloom(r, f)
	return nil
}

// dropRun deletes run r.
func (d *Index) dropRun(tx *bolt.Tx, r RunInfo) error {
	d.runsChanged(tx)
	if err := tx.Bucket(RunsBucket).DeleteBucket(encUint(r.ID)); err != nil {
		return fmt.Errorf("delete dedup run %d: %w", r.ID, err)
	}
	d.dropBloom(r.ID)
	return nil
}

// merge merges, while some level holds fanIn runs, the oldest fanIn runs of the lowest such
// level into one run of the next level; runs that would merge into more than maxRun records
// are marked final instead.
func (d *Index) merge(tx *bolt.Tx, cutoff uint64) error {
	for {
		rs, err := runs(tx)
		if err != nil {
			return err
		}
		byLevel := map[int][]RunInfo{}
		lowest := FinalLevel
		for _, r := range rs {
			if r.Level == FinalLevel {
				continue
			}
			byLevel[r.Level] = append(byLevel[r.Level], r)
			if len(byLevel[r.Level]) >= d.cfg.FanIn {
				lowest = min(lowest, r.Level)
			}
		}
		if lowest == FinalLevel {
			return nil
		}
		in := byLevel[lowest][:d.cfg.FanIn]
		total := 0
		for _, r := range in {
			total += r.Count
		}
		if total > d.cfg.MaxRun {
			d.runsChanged(tx)
			rb := tx.Bucket(RunsBucket)
			for _, r := range in {
				r.Level = FinalLevel
				if err := rb.Bucket(encUint(r.ID)).Put(runMetaKey, encRunMeta(r)); err != nil {
					return fmt.Errorf("put dedup run: %w", err)
				}
			}
			continue
		}
		if _, err := d.mergeRuns(tx, in, in[0].Level+1, cutoff); err != nil {
			return err
		}
	}
}

// mergeRuns replaces runs in by one run of the given level holding, for each hash, its newest
// time, and nothing at or before cutoff. It returns how many records it dropped.
//
// The inputs are read where the transaction holds them (the file's map, or the values of a run
// written earlier in the same transaction), not copied: the largest merges take MaxRun records
// (6 MiB), and a copy of the inputs beside the output doubled what such a merge held.
func (d *Index) mergeRuns(tx *bolt.Tx, in []RunInfo, level int, cutoff uint64) (int, error) {
	rb := tx.Bucket(RunsBucket)
	srcs := make([]chunkSeq, len(in)) // each run's chunks, in hash order
	total := 0
	for i, r := range in {
		err := eachChunk(rb.Bucket(encUint(r.ID)), func(recs []byte) error {
			if len(recs) > 0 {
				srcs[i].chunks = append(srcs[i].chunks, recs)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		srcs[i].next()
		total += r.Count
	}
	out := make([]byte, 0, total*dedupRecord)
	minT, maxT := ^uint64(0), uint64(0)
	for {
		// The smallest hash among the inputs' heads, with its newest time. h stays valid
		// while the heads move on: it is part of a chunk the transaction holds.
		var h []byte
		var t uint64
		for i := range srcs {
			s := srcs[i].head
			if s == nil {
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
		for i := range srcs {
			if s := srcs[i].head; s != nil && bytes.Equal(s[:16], h) {
				srcs[i].next()
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
		if err := d.writeRun(tx, RunInfo{Level: level, Count: n, MinT: minT, MaxT: maxT}, out); err != nil {
			return 0, err
		}
	}
	return total - n, addCount(tx.Bucket(d.meta), int64(n-total))
}

// chunkSeq walks the records of a run's chunks in order: head is the current record (nil
// once every chunk is read).
type chunkSeq struct {
	chunks [][]byte // the chunks not reached yet; each a whole number of records
	rest   []byte   // the current chunk from head on
	head   []byte
}

// next moves head to the following record.
func (c *chunkSeq) next() {
	if len(c.rest) > 0 {
		c.rest = c.rest[dedupRecord:]
	}
	for len(c.rest) == 0 && len(c.chunks) > 0 {
		c.rest, c.chunks = c.chunks[0], c.chunks[1:]
	}
	if len(c.rest) == 0 {
		c.head = nil
		return
	}
	c.head = c.rest[:dedupRecord]
}
