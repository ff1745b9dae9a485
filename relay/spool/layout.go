package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// The spool file's layout: its buckets, the keys of its meta bucket, and the encoders of the
// values stored in them. The dedup index's own buckets, meta keys and records are
// internal/dedupindex's (its layout.go); the migrations from older formats are in migrate.go.

// formatVersion is the on-disk layout version stored in the meta bucket. Version 1 kept whole
// dedup keys, version 2 kept them all in one B+tree (dedupkeys) with a time index
// (dedupkeyt), version 3 stored an item's data bare and the last applied journal frame
// without a checksum (itemcodec.go has format 4's), version 4 kept the dedup index's final
// level as runs only (version 5 adds its partitions, dedupparts); Open migrates all four.
const formatVersion = 5

// The spool file's top-level buckets (doc.go lists what each holds).
var (
	bucketItems    = []byte("items")
	bucketRefs     = []byte("refs")
	bucketReady    = []byte("ready")
	bucketSched    = []byte("sched")
	bucketSchedIdx = []byte("schedidx")
	bucketStats    = []byte("stats")
	bucketMeta     = []byte("meta")

	// topBuckets are the buckets Open creates in a new file.
	topBuckets = [][]byte{
		bucketItems, bucketRefs, bucketReady, bucketSched, bucketSchedIdx,
		dedupindex.L0Bucket, dedupindex.RunsBucket, dedupindex.PartsBucket, bucketStats, bucketMeta,
	}
)

// Keys of the meta bucket.
var (
	metaVersion   = []byte("version")
	metaHeartbeat = []byte("heartbeat")
	// metaJournalLSN is the LSN of the last journal frame applied to the file (encLSN).
	metaJournalLSN = []byte("jlsn")
	// metaMigrate4 is, while the migration from format 3 runs, the first item it has not
	// rewritten yet (see migrateItemsV3).
	metaMigrate4 = []byte("migrate4")
)

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

// bitsTime is the inverse of timeBits.
func bitsTime(u uint64) time.Time {
	return time.Unix(0, int64(u^(1<<63)))
}

// encTime encodes t as 8 sortable bytes.
func encTime(t time.Time) []byte { return encUint(timeBits(t)) }

// decTime decodes 8 sortable bytes written by encTime.
func decTime(b []byte) time.Time { return bitsTime(decUint(b)) }

// buckets holds a transaction's top-level buckets.
type buckets struct {
	items, refs, ready, sched, schedIdx, stats, meta *bolt.Bucket
}

// openBuckets looks up the top-level buckets, which Open created.
func openBuckets(tx *bolt.Tx) buckets {
	b := buckets{
		items:    tx.Bucket(bucketItems),
		refs:     tx.Bucket(bucketRefs),
		ready:    tx.Bucket(bucketReady),
		sched:    tx.Bucket(bucketSched),
		schedIdx: tx.Bucket(bucketSchedIdx),
		stats:    tx.Bucket(bucketStats),
		meta:     tx.Bucket(bucketMeta),
	}
	if tx.Writable() {
		// Keys of these grow with time, so new pages fill up: split them full rather
		// than half-full (bbolt's default), which halves the pages a commit writes.
		b.items.FillPercent = appendFill
		b.refs.FillPercent = appendFill
	}
	return b
}

// appendFill is the FillPercent of buckets written mostly in key order.
const appendFill = 0.95

// schedKey is the sched key: 8-byte due time followed by the 8-byte seq.
func schedKey(due, seqB []byte) []byte {
	k := make([]byte, 0, 16)
	return append(append(k, due...), seqB...)
}

// getBucket is b.Get(k) that tolerates a missing bucket.
func getBucket(b *bolt.Bucket, k []byte) []byte {
	if b == nil {
		return nil
	}
	return b.Get(k)
}

// metaVersion1 tags the delivery meta encoding.
const metaVersion1 = 1

var errBadMeta = errors.New("malformed delivery record")

// encMeta appends a delivery record: version, attempt (uvarint), first accepted time (8
// bytes), then the history bytes to the end.
func encMeta(dst []byte, attempt int, firstAt time.Time, history []byte) []byte {
	dst = append(dst, metaVersion1)
	dst = binary.AppendUvarint(dst, uint64(attempt))
	dst = binary.BigEndian.AppendUint64(dst, timeBits(firstAt))
	return append(dst, history...)
}

// decMeta decodes a record written by encMeta; history aliases v.
func decMeta(v []byte) (attempt int, firstAt time.Time, history []byte, err error) {
	if len(v) < 1 || v[0] != metaVersion1 {
		return 0, time.Time{}, nil, errBadMeta
	}
	a, n := binary.Uvarint(v[1:])
	if n <= 0 || a > math.MaxInt32 || len(v) < 1+n+8 {
		return 0, time.Time{}, nil, errBadMeta
	}
	rest := v[1+n:]
	firstAt = bitsTime(binary.BigEndian.Uint64(rest))
	if h := rest[8:]; len(h) > 0 {
		history = h
	}
	return int(a), firstAt, history, nil
}

// counts is a pair of per-sink counters or counter deltas.
type counts struct{ ready, sched int64 }

// addCounts adds deltas to the stored counters of sink.
func addCounts(stats *bolt.Bucket, sink string, dReady, dSched int64) error {
	key := []byte(sink)
	c := decCounts(stats.Get(key))
	c.ready = max(c.ready+dReady, 0)
	c.sched = max(c.sched+dSched, 0)
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, uint64(c.ready))
	binary.BigEndian.PutUint64(v[8:], uint64(c.sched))
	if err := stats.Put(key, v); err != nil {
		return fmt.Errorf("put stats: %w", err)
	}
	return nil
}

// decCounts decodes a stats value; anything malformed decodes as zero.
func decCounts(v []byte) counts {
	if len(v) != 16 {
		return counts{}
	}
	return counts{int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))}
}
