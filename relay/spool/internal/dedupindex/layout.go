package dedupindex

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The index's part of its owner's bbolt file: three top-level buckets of its own, five keys of
// the owner's meta bucket, and the encodings of what it stores there. All integers are
// big-endian so that keys sort numerically; times are nanoseconds since the Unix epoch with
// the sign bit flipped (timeBits), so that they sort correctly as bytes.
//
//	dedupkeys          key hash -> accepted at: the mutable level, L0
//	dedupruns/<run>    "m" -> level, records, oldest and newest time;
//	                   'c' + first key hash -> chunk of sorted (key hash, accepted at) records;
//	                   'b' + 4-byte index -> bloomValue bytes of the run's Bloom filter
//	dedupparts/<p>     "m" -> as a run's (level 0); 'c' + last key hash -> chunk of records
//	<meta> dedupn      records in the index (all levels)
//	<meta> dedupl0n    keys in L0
//	<meta> deduprunid  the last run id given
//	<meta> dedupsweep  the partition the sweep merges into next
//	<meta> dedupexpire the partition Expire looks at next
var (
	// L0Bucket is the top-level bucket of the mutable level. Format 2 of the spool kept every
	// key in it.
	L0Bucket = []byte("dedupkeys")
	// RunsBucket is the top-level bucket whose sub-buckets are the runs, named by 8-byte id.
	RunsBucket = []byte("dedupruns")

	// MetaCountKey is the key of the owner's meta bucket that holds the number of records in
	// the index.
	MetaCountKey = []byte("dedupn")
	metaL0N      = []byte("dedupl0n")   // keys in L0
	metaRunID    = []byte("deduprunid") // the last run id given

	runMetaKey = []byte("m") // in a run: level, records, oldest and newest time
)

const (
	// hashLen is the length of a key hash (Hash).
	hashLen = 16
	// dedupRecord is the size of a run record: the key hash and its time (8 bytes).
	dedupRecord = hashLen + 8
	// chunkPrefix starts the keys of a run's chunks: 'c' + the first record's key hash.
	chunkPrefix = 'c'
	// runMetaLen is the size of a run's metadata: level (1 byte), records, oldest and newest
	// time (8 bytes each).
	runMetaLen = 25
)

// appendFill is the FillPercent of buckets written in key order (a run's): pages split full
// rather than half-full.
const appendFill = 0.95

// encUint encodes v as 8 big-endian bytes.
func encUint(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// decUint decodes 8 big-endian bytes; anything shorter decodes as 0.
func decUint(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// timeBits maps t to a uint64 that sorts like t (nanoseconds with the sign bit flipped).
func timeBits(t time.Time) uint64 {
	return uint64(t.UnixNano()) ^ (1 << 63)
}

// Hash is what the file stores of a dedup key: 16 bytes of its SHA-256. Keys run to tens
// of bytes (a WhatsApp message id alone is ~60) and land at random places in the index, so
// every page they touch is rewritten at the next commit: short fixed-size keys mean several
// times fewer pages. A false repeat needs two keys among those in the window to collide in
// 128 bits.
func Hash(key []byte) []byte {
	h := sha256.Sum256(key)
	return h[:16]
}

// addCount adds delta to the stored dedup key count.
func addCount(meta *bolt.Bucket, delta int64) error {
	n := int64(decUint(meta.Get(MetaCountKey))) + delta
	if n < 0 {
		n = 0
	}
	if err := meta.Put(MetaCountKey, encUint(uint64(n))); err != nil {
		return fmt.Errorf("put dedup count: %w", err)
	}
	return nil
}

// encRunMeta encodes a run's metadata.
func encRunMeta(r RunInfo) []byte {
	b := make([]byte, runMetaLen)
	b[0] = byte(r.Level)
	binary.BigEndian.PutUint64(b[1:], uint64(r.Count))
	binary.BigEndian.PutUint64(b[9:], r.MinT)
	binary.BigEndian.PutUint64(b[17:], r.MaxT)
	return b
}

// decRunMeta decodes the metadata of run id.
func decRunMeta(id uint64, b []byte) (RunInfo, error) {
	if len(b) != runMetaLen {
		return RunInfo{}, fmt.Errorf("dedup run %d: metadata of %d bytes", id, len(b))
	}
	return RunInfo{ID: id, Level: int(b[0]), Count: int(binary.BigEndian.Uint64(b[1:])),
		MinT: binary.BigEndian.Uint64(b[9:]), MaxT: binary.BigEndian.Uint64(b[17:])}, nil
}
