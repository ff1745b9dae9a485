package dedupindex

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Check verifies the index's bookkeeping in tx: the L0 count, the record total, each run's
// metadata against its chunks and its stored filter against its records, and each partition's
// metadata against its records (in its range, in order).
func (d *Index) Check(tx *bolt.Tx) error {
	l0 := 0
	c := tx.Bucket(L0Bucket).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		l0++
	}
	meta := tx.Bucket(d.meta)
	if got := int(decUint(meta.Get(metaL0N))); got != l0 {
		return fmt.Errorf("L0 count %d, L0 holds %d", got, l0)
	}
	rs, err := runs(tx)
	if err != nil {
		return err
	}
	total := l0
	for _, r := range rs {
		n, err := checkRun(tx.Bucket(RunsBucket).Bucket(encUint(r.ID)), r)
		if err != nil {
			return err
		}
		total += n
	}
	n, err := checkParts(tx)
	if err != nil {
		return err
	}
	total += n
	if got := int(decUint(meta.Get(MetaCountKey))); got != total {
		return fmt.Errorf("record count %d, index holds %d", got, total)
	}
	return nil
}

// checkRun checks run r, stored in b, and returns its number of records.
func checkRun(b *bolt.Bucket, r RunInfo) (int, error) {
	n, minT, maxT := 0, ^uint64(0), uint64(0)
	f, ok := readBloom(b)
	if !ok {
		return 0, fmt.Errorf("run %d: no stored filter", r.ID)
	}
	err := eachChunk(b, func(recs []byte) error {
		for i := 0; i < len(recs); i += dedupRecord {
			n++
			tm := binary.BigEndian.Uint64(recs[i+16:])
			minT, maxT = min(minT, tm), max(maxT, tm)
			if !f.has(recs[i : i+16]) {
				return fmt.Errorf("run %d: stored filter lacks a record", r.ID)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	// The sweep takes records out of final runs and leaves their times as bounds.
	exact := r.Level != FinalLevel
	if n != r.Count || (exact && (minT != r.MinT || maxT != r.MaxT)) || (n > 0 && (minT < r.MinT || maxT > r.MaxT)) {
		return 0, fmt.Errorf("run %+v holds %d records from %d to %d", r, n, minT, maxT)
	}
	return n, nil
}

// WriteFinalRun stores recs, records (key hash, accepted at) sorted by hash with distinct
// hashes, as a new run of FinalLevel. It is how the spool migrates its format 2, whose index
// was one B+tree: each run then covers a stretch of time and expires as a whole. It does not
// change the record count.
func (d *Index) WriteFinalRun(tx *bolt.Tx, recs []byte) error {
	if len(recs)%dedupRecord != 0 {
		return fmt.Errorf("dedup run of %d bytes", len(recs))
	}
	if len(recs) == 0 {
		return nil
	}
	minT, maxT := ^uint64(0), uint64(0)
	for i := 0; i < len(recs); i += dedupRecord {
		t := binary.BigEndian.Uint64(recs[i+16:])
		minT, maxT = min(minT, t), max(maxT, t)
	}
	r := RunInfo{Level: FinalLevel, Count: len(recs) / dedupRecord, MinT: minT, MaxT: maxT}
	return d.writeRun(tx, r, recs)
}

// checkParts checks the partitions of the final level in tx: each one's name, metadata and
// records (inside its hash range, in order, distinct), and returns their number of records.
func checkParts(tx *bolt.Tx) (int, error) {
	parts := tx.Bucket(PartsBucket)
	if parts == nil {
		return 0, nil
	}
	total := 0
	err := parts.ForEach(func(k, v []byte) error {
		if v != nil || len(k) != 2 || int(binary.BigEndian.Uint16(k)) >= Parts {
			return fmt.Errorf("dedup partitions: unexpected key %x", k)
		}
		p := int(binary.BigEndian.Uint16(k))
		r, b, _, err := partInfo(parts, p)
		if err != nil {
			return err
		}
		lo, hi := partBounds(p)
		n, minT, maxT := 0, ^uint64(0), uint64(0)
		var last []byte
		c := b.Cursor()
		for k, v := c.Seek([]byte{chunkPrefix}); k != nil && k[0] == chunkPrefix; k, v = c.Next() {
			if len(v) < dedupRecord || !bytes.Equal(k[1:], v[len(v)-dedupRecord:len(v)-dedupRecord+hashLen]) {
				return fmt.Errorf("dedup partition %d: a chunk not named by its last record", p)
			}
		}
		err = eachChunk(b, func(recs []byte) error {
			for i := 0; i < len(recs); i += dedupRecord {
				h := recs[i : i+hashLen]
				if pre := prefix16(h); pre < lo || pre >= hi || (last != nil && bytes.Compare(last, h) >= 0) {
					return fmt.Errorf("dedup partition %d: a record out of place", p)
				}
				last = h
				n++
				tm := binary.BigEndian.Uint64(recs[i+hashLen:])
				minT, maxT = min(minT, tm), max(maxT, tm)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n != r.Count || minT != r.MinT || maxT != r.MaxT {
			return fmt.Errorf("dedup partition %+v holds %d records from %d to %d", r, n, minT, maxT)
		}
		total += n
		return nil
	})
	return total, err
}
