package dedupindex

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The final level: Parts partitions by the first partBits bits of the key hash, each one
// sorted base: a sub-bucket of PartsBucket named by its 2-byte number, holding "m" ->
// metadata (as a run's) and 'c' + the hash of its last record -> chunk of PartChunk records.
// The sweep merges final runs into the partitions (doc.go).
const (
	partBits = 10
	// Parts is the number of partitions of the final level.
	Parts = 1 << partBits
)

// PartsBucket is the top-level bucket whose sub-buckets are the partitions of the final level.
var PartsBucket = []byte("dedupparts")

var (
	metaSweep  = []byte("dedupsweep")  // the next partition the sweep merges into
	metaExpire = []byte("dedupexpire") // the next partition Expire looks at
)

// partOf returns the partition of key hash h.
func partOf(h []byte) int { return int(binary.BigEndian.Uint16(h) >> (16 - partBits)) }

// partKey is the name of partition p's bucket.
func partKey(p int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(p)) }

// partBounds are the first two bytes of the hashes partition p holds: lo <= prefix < hi
// (hi is 1<<16 for the last).
func partBounds(p int) (lo, hi uint32) {
	return uint32(p) << (16 - partBits), uint32(p+1) << (16 - partBits)
}

func prefix16(h []byte) uint32 { return uint32(binary.BigEndian.Uint16(h)) }

// partInfo reads partition p's metadata in tx; ok is false when it holds nothing.
func partInfo(parts *bolt.Bucket, p int) (RunInfo, *bolt.Bucket, bool, error) {
	return partInfoFrom(parts, p, nil)
}

// partInfoFrom is partInfo reading the partition's pages with pr (seekBucket; nil: through
// bbolt's map). The metadata is the partition's last key: through the map, reading it faults
// in the 64 KiB around each page of the path to it, ~200 KiB a partition of a large index.
func partInfoFrom(parts *bolt.Bucket, p int, pr *pageReader) (RunInfo, *bolt.Bucket, bool, error) {
	if parts == nil {
		return RunInfo{}, nil, false, nil
	}
	b := parts.Bucket(partKey(p))
	if b == nil {
		return RunInfo{}, nil, false, nil
	}
	var meta []byte
	if k, v := pr.seekBucket(b, p, runMetaKey); bytes.Equal(k, runMetaKey) {
		meta = v
	}
	r, err := decRunMeta(uint64(p), meta)
	if err != nil {
		return RunInfo{}, nil, false, fmt.Errorf("dedup partition: %w", err)
	}
	return r, b, true, nil
}

// sweep merges final runs into partitions, a partition at a time from the sweep's place, until
// it has written budget records or no final run is left. It returns the records written.
func (d *Index) sweep(tx *bolt.Tx, cutoff uint64, budget int) (int, error) {
	meta := tx.Bucket(d.meta)
	p := int(decUint(meta.Get(metaSweep)) % Parts)
	rs, err := runs(tx)
	if err != nil {
		return 0, err
	}
	final := slices.DeleteFunc(rs, func(r RunInfo) bool { return r.Level != FinalLevel })
	written := 0
	for steps := 0; written < budget && steps < Parts && len(final) > 0; steps++ {
		n, _, err := d.rewritePart(tx, p, final, cutoff)
		if err != nil {
			return 0, err
		}
		d.released(tx, steps+1)
		final = slices.DeleteFunc(final, func(r RunInfo) bool { return r.Count <= 0 })
		written += n + 1 // a step costs something even where there is little to write
		p = (p + 1) % Parts
	}
	if err := meta.Put(metaSweep, encUint(uint64(p))); err != nil {
		return 0, fmt.Errorf("put dedup sweep: %w", err)
	}
	return written, nil
}

// rewritePart writes partition p again as its records merged with those final runs hold in
// its range (which it deletes from them, lowering their Count; a run left empty is deleted and
// its Count set to 0), keeping each hash's newest time and nothing at or before cutoff. It
// returns the records written and dropped.
func (d *Index) rewritePart(tx *bolt.Tx, p int, from []RunInfo, cutoff uint64) (written, dropped int, err error) {
	parts, err := tx.CreateBucketIfNotExists(PartsBucket)
	if err != nil {
		return 0, 0, fmt.Errorf("create dedup partitions: %w", err)
	}
	old, pb, ok, err := partInfo(parts, p)
	if err != nil {
		return 0, 0, err
	}
	var base []byte
	if ok {
		if err := eachChunk(pb, func(recs []byte) error { base = append(base, recs...); return nil }); err != nil {
			return 0, 0, err
		}
	}
	var moved []byte
	rb := tx.Bucket(RunsBucket)
	if len(from) > 0 {
		d.runsChanged(tx) // takeRange deletes chunks from them
	}
	for i := range from {
		r := &from[i]
		b := rb.Bucket(encUint(r.ID))
		if b == nil {
			return 0, 0, fmt.Errorf("dedup run %d is gone", r.ID)
		}
		recs, err := takeRange(b, p)
		if err != nil {
			return 0, 0, fmt.Errorf("dedup run %d: %w", r.ID, err)
		}
		if n := len(recs) / dedupRecord; n > 0 {
			moved = append(moved, recs...)
			r.Count -= n
			if k, _ := b.Cursor().Seek([]byte{chunkPrefix}); r.Count <= 0 || k == nil || k[0] != chunkPrefix {
				r.Count = 0
				err = d.dropRun(tx, *r)
			} else {
				err = b.Put(runMetaKey, encRunMeta(*r))
			}
			if err != nil {
				return 0, 0, fmt.Errorf("put dedup run: %w", err)
			}
		}
	}
	in := len(base)/dedupRecord + len(moved)/dedupRecord
	if in == old.Count && len(moved) == 0 && old.MinT > cutoff {
		return 0, 0, nil // nothing to add or drop
	}
	out, minT, maxT := mergeTwo(base, sortRecs(moved), cutoff)
	if ok {
		if err := parts.DeleteBucket(partKey(p)); err != nil {
			return 0, 0, fmt.Errorf("delete dedup partition %d: %w", p, err)
		}
		d.forgetPart(p)
		d.partsChanged(tx, p)
	}
	n := len(out) / dedupRecord
	if n > 0 {
		if err := d.writePart(parts, RunInfo{ID: uint64(p), Count: n, MinT: minT, MaxT: maxT}, out); err != nil {
			return 0, 0, err
		}
	}
	return n, in - n, addCount(tx.Bucket(d.meta), int64(n-in))
}

// writePart stores recs as partition r.ID's base.
func (d *Index) writePart(parts *bolt.Bucket, r RunInfo, recs []byte) error {
	d.partsChanged(parts.Tx(), int(r.ID))
	b, err := parts.CreateBucket(partKey(int(r.ID)))
	if err != nil {
		return fmt.Errorf("create dedup partition %d: %w", r.ID, err)
	}
	b.FillPercent = appendFill
	if err := b.Put(runMetaKey, encRunMeta(r)); err != nil {
		return fmt.Errorf("put dedup partition: %w", err)
	}
	d.notePart(int(r.ID), r, true)
	step := d.cfg.PartChunk * dedupRecord
	for off := 0; off < len(recs); off += step {
		chunk := recs[off:min(off+step, len(recs))]
		last := chunk[len(chunk)-dedupRecord:]
		if err := b.Put(append([]byte{chunkPrefix}, last[:hashLen]...), chunk); err != nil {
			return fmt.Errorf("put dedup partition chunk: %w", err)
		}
	}
	return nil
}

// takeRange deletes from run bucket b the records of partition p and returns them, in hash
// order. Runs written since partitions exist split their chunks at partition bounds, so this
// deletes whole chunks; an older run's chunk that crosses a bound is put back without them.
func takeRange(b *bolt.Bucket, p int) ([]byte, error) {
	lo, hi := partBounds(p)
	type chunk struct{ k, v []byte }
	var hits []chunk
	c := b.Cursor()
	seek := []byte{chunkPrefix, byte(lo >> 8), byte(lo)}
	k, v := c.Seek(seek)
	var pk, pv []byte
	if k == nil {
		pk, pv = c.Last()
	} else {
		pk, pv = c.Prev()
	}
	if pk != nil && pk[0] == chunkPrefix && len(pv) >= dedupRecord &&
		prefix16(pv[len(pv)-dedupRecord:]) >= lo {
		hits = append(hits, chunk{bytes.Clone(pk), bytes.Clone(pv)})
	}
	for k, v = c.Seek(seek); k != nil && k[0] == chunkPrefix && len(k) > 2 && uint32(binary.BigEndian.Uint16(k[1:])) < hi; k, v = c.Next() {
		hits = append(hits, chunk{bytes.Clone(k), bytes.Clone(v)})
	}
	var out []byte
	for _, h := range hits {
		if len(h.v)%dedupRecord != 0 {
			return nil, fmt.Errorf("chunk of %d bytes", len(h.v))
		}
		if err := b.Delete(h.k); err != nil {
			return nil, err
		}
		n := len(h.v) / dedupRecord
		i := 0
		for i < n && prefix16(h.v[i*dedupRecord:]) < lo {
			i++
		}
		j := i
		for j < n && prefix16(h.v[j*dedupRecord:]) < hi {
			j++
		}
		out = append(out, h.v[i*dedupRecord:j*dedupRecord]...)
		for _, rest := range [][]byte{h.v[:i*dedupRecord], h.v[j*dedupRecord:]} {
			if len(rest) > 0 {
				if err := b.Put(append([]byte{chunkPrefix}, rest[:hashLen]...), rest); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

// sortRecs sorts records by hash, newest time first for equal hashes, and keeps one per hash.
func sortRecs(recs []byte) []byte {
	n := len(recs) / dedupRecord
	if n < 2 {
		return recs
	}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i * dedupRecord
	}
	slices.SortFunc(idx, func(a, b int) int {
		if c := bytes.Compare(recs[a:a+hashLen], recs[b:b+hashLen]); c != 0 {
			return c
		}
		ta, tb := binary.BigEndian.Uint64(recs[a+hashLen:]), binary.BigEndian.Uint64(recs[b+hashLen:])
		switch {
		case ta > tb:
			return -1
		case ta < tb:
			return 1
		}
		return 0
	})
	out := make([]byte, 0, len(recs))
	for _, i := range idx {
		if l := len(out); l > 0 && bytes.Equal(out[l-dedupRecord:l-8], recs[i:i+hashLen]) {
			continue
		}
		out = append(out, recs[i:i+dedupRecord]...)
	}
	return out
}

// mergeTwo merges two sorted record lists with distinct hashes each, keeping for each hash
// its newest time and nothing at or before cutoff.
func mergeTwo(a, b []byte, cutoff uint64) (out []byte, minT, maxT uint64) {
	out = make([]byte, 0, len(a)+len(b))
	minT = ^uint64(0)
	emit := func(r []byte) {
		if t := binary.BigEndian.Uint64(r[hashLen:]); t > cutoff {
			out = append(out, r...)
			minT, maxT = min(minT, t), max(maxT, t)
		}
	}
	for len(a) > 0 || len(b) > 0 {
		var c int
		switch {
		case len(a) == 0:
			c = 1
		case len(b) == 0:
			c = -1
		default:
			c = bytes.Compare(a[:hashLen], b[:hashLen])
		}
		switch {
		case c < 0:
			emit(a[:dedupRecord])
			a = a[dedupRecord:]
		case c > 0:
			emit(b[:dedupRecord])
			b = b[dedupRecord:]
		default:
			if binary.BigEndian.Uint64(a[hashLen:]) >= binary.BigEndian.Uint64(b[hashLen:]) {
				emit(a[:dedupRecord])
			} else {
				emit(b[:dedupRecord])
			}
			a, b = a[dedupRecord:], b[dedupRecord:]
		}
	}
	return out, minT, maxT
}

// expireParts drops partitions past cutoff and writes again at most one partition of which at
// least half is past it, looking at up to lookParts from Expire's place. It returns the
// records deleted.
func (d *Index) expireParts(tx *bolt.Tx, cutoff uint64) (int, error) {
	const lookParts = 8
	meta := tx.Bucket(d.meta)
	parts := tx.Bucket(PartsBucket)
	if parts == nil {
		return 0, nil
	}
	start := int(decUint(meta.Get(metaExpire)) % Parts)
	removed, next, read := 0, (start+lookParts)%Parts, 0
	for i := 0; i < Parts; i++ {
		p := (start + i) % Parts
		if lo := d.partMinT[p].Load(); lo != 0 {
			if lo > cutoff {
				continue // nothing of it is past cutoff, or it holds nothing
			}
			if i >= lookParts && d.partMaxT[p].Load() > cutoff {
				continue // not wholly past it, and too far to be rewritten by this call
			}
		}
		r, b, ok, err := partInfo(parts, p)
		if err != nil {
			return 0, err
		}
		read++
		d.released(tx, read)
		d.notePart(p, r, ok)
		if !ok || r.MinT > cutoff {
			continue
		}
		if r.MaxT <= cutoff {
			if err := parts.DeleteBucket(partKey(p)); err != nil {
				return 0, fmt.Errorf("delete dedup partition %d: %w", p, err)
			}
			d.forgetPart(p)
			d.partsChanged(tx, p)
			if err := addCount(meta, -int64(r.Count)); err != nil {
				return 0, err
			}
			removed += r.Count
			continue
		}
		if i >= lookParts {
			continue // counting the records of every partition would read them all
		}
		old := 0
		err = eachChunk(b, func(recs []byte) error {
			for j := hashLen; j < len(recs); j += dedupRecord {
				if binary.BigEndian.Uint64(recs[j:]) <= cutoff {
					old++
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if 2*old >= r.Count {
			_, n, err := d.rewritePart(tx, p, nil, cutoff)
			if err != nil {
				return 0, err
			}
			removed += n
			next = (p + 1) % Parts
			break
		}
	}
	if err := meta.Put(metaExpire, encUint(uint64(next))); err != nil {
		return 0, fmt.Errorf("put dedup expire: %w", err)
	}
	return removed, nil
}

// searchPart returns the time the final level records for hash h. A partition's chunks are
// keyed by their last hash, so the first chunk key at or after h names the one chunk that may
// hold it: one leaf page of the partition read, where a run's (keyed by the first) needs the
// one before it too.
func searchPart(parts *bolt.Bucket, h []byte, pr *pageReader) (uint64, bool) {
	if parts == nil {
		return 0, false
	}
	p := partOf(h)
	var k [2]byte
	binary.BigEndian.PutUint16(k[:], uint16(p))
	b := parts.Bucket(k[:])
	if b == nil {
		return 0, false
	}
	var ck [1 + hashLen]byte
	ck[0] = chunkPrefix
	copy(ck[1:], h)
	key, v := pr.seekBucket(b, p, ck[:])
	if key == nil || key[0] != chunkPrefix {
		return 0, false
	}
	return searchChunk(v, h)
}

// AlignRun writes again, with its chunks split at partition bounds, the first run from id
// from on of level 2 or more whose chunks cross one (runs written before partitions existed),
// so that the sweep deletes whole chunks of it. It returns the id to go on from, 0 when no run
// is left to look at. It is how the spool migrates its format 4; each call writes one run at
// most (a few MiB).
func (d *Index) AlignRun(tx *bolt.Tx, from uint64) (uint64, error) {
	rs, err := runs(tx)
	if err != nil {
		return 0, err
	}
	rb := tx.Bucket(RunsBucket)
	for _, r := range rs {
		if r.ID < from || r.Level < 2 {
			continue
		}
		crosses := false
		err := eachChunk(rb.Bucket(encUint(r.ID)), func(recs []byte) error {
			if len(recs) > 0 && partOf(recs) != partOf(recs[len(recs)-dedupRecord:]) {
				crosses = true
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		if crosses {
			if _, err := d.mergeRuns(tx, []RunInfo{r}, r.Level, 0); err != nil {
				return 0, err
			}
		}
		return r.ID + 1, nil
	}
	return 0, nil
}

// PartsLen returns the number of records the partitions of the final level hold in tx.
func (d *Index) PartsLen(tx *bolt.Tx) (int, error) {
	n := 0
	for p := range Parts {
		r, _, _, err := partInfo(tx.Bucket(PartsBucket), p)
		if err != nil {
			return 0, err
		}
		n += r.Count
	}
	return n, nil
}

// Sweep merges final runs into the partitions, from where the sweep stands, until it has
// written budget records or no final run is left, dropping records at or before cutoff; it
// returns the records written. Finish sweeps as keys come in; Sweep is for an index that
// takes its keys in bulk (a benchmark's pre-fill of final runs by WriteFinalRun).
func (d *Index) Sweep(tx *bolt.Tx, cutoff time.Time, budget int) (int, error) {
	return d.sweep(tx, timeBits(cutoff), budget)
}
