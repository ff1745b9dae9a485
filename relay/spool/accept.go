package spool

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Item is one change offered to Accept.
type Item struct {
	// Key is the dedup key; "" means the item is never deduplicated (dead-letter replays).
	Key string
	// Data is the encoded change, stored once however many sinks need it.
	Data []byte
	// Sinks names the sinks that get one delivery each. It may be empty: the key is still
	// recorded so that a repeat is dropped. A name listed twice gets one delivery.
	Sinks []string
}

// Accept commits, in one transaction shared with concurrent callers, every item whose Key was
// not seen within the dedup window (in the spool or earlier in this same call): the key with
// time now, the data, and one delivery per sink numbered with a new global sequence number.
// It returns only after the commit is fsync'd. dup[i] reports that items[i] was dropped as a
// repeat. On error nothing of this call is stored.
//
// ctx is checked before the call joins a commit; once it has joined, Accept waits for the
// commit so that its answer is never ambiguous.
func (s *Spool) Accept(ctx context.Context, items []Item, now time.Time) (dup []bool, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if err := validateItems(items); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if len(items) == 0 {
		return []bool{}, nil
	}
	// Pre-compute the per-item sink lists without repeats, outside the transaction.
	sinks := make([][]string, len(items))
	for i, it := range items {
		sinks[i] = uniqueSinks(it.Sinks)
	}
	nowB := encTime(now)
	var txid int
	err = s.batch(func(tx *bolt.Tx) error {
		// The batch may run this function more than once: start from a clean slate.
		dup = make([]bool, len(items))
		txid = tx.ID()
		return s.acceptTx(tx, items, sinks, now, nowB, dup)
	})
	if err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if s.acceptHook != nil {
		s.acceptHook(txid)
	}
	return dup, nil
}

// acceptTx does Accept's work inside tx, writing dup in place.
func (s *Spool) acceptTx(tx *bolt.Tx, items []Item, sinks [][]string, now time.Time, nowB []byte, dup []bool) error {
	b := openBuckets(tx)
	var newKeys int64
	deltas := map[string]*counts{}
	readyBuckets := map[string]*bolt.Bucket{}
	meta := encMeta(nil, 0, now, nil)
	for i, it := range items {
		if it.Key != "" {
			key := []byte(it.Key)
			seen, replaced, err := s.checkKey(b, key, now)
			if err != nil {
				return err
			}
			if seen {
				dup[i] = true
				continue
			}
			if err := b.dedup.Put(key, nowB); err != nil {
				return fmt.Errorf("put dedup key: %w", err)
			}
			if err := b.dedupT.Put(dedupTKey(nowB, key), nil); err != nil {
				return fmt.Errorf("put dedup time: %w", err)
			}
			if !replaced {
				newKeys++
			}
		}
		if len(sinks[i]) == 0 {
			continue
		}
		seq, err := b.items.NextSequence()
		if err != nil {
			return fmt.Errorf("next sequence: %w", err)
		}
		seqB := encUint(seq)
		if err := b.items.Put(seqB, it.Data); err != nil {
			return fmt.Errorf("put item: %w", err)
		}
		if err := b.refs.Put(seqB, binary.AppendUvarint(nil, uint64(len(sinks[i])))); err != nil {
			return fmt.Errorf("put refs: %w", err)
		}
		for _, sink := range sinks[i] {
			rb := readyBuckets[sink]
			if rb == nil {
				rb, err = b.ready.CreateBucketIfNotExists([]byte(sink))
				if err != nil {
					return fmt.Errorf("create ready bucket: %w", err)
				}
				readyBuckets[sink] = rb
			}
			if err := rb.Put(seqB, meta); err != nil {
				return fmt.Errorf("put delivery: %w", err)
			}
			c := deltas[sink]
			if c == nil {
				c = &counts{}
				deltas[sink] = c
			}
			c.ready++
		}
	}
	if newKeys != 0 {
		if err := addDedupN(b.meta, newKeys); err != nil {
			return err
		}
	}
	for sink, c := range deltas {
		if err := addCounts(b.stats, sink, c.ready, c.sched); err != nil {
			return err
		}
	}
	return nil
}

// checkKey reports whether key was accepted within the window before now. A key older than the
// window that ExpireDedup has not removed yet is not seen; its time index entry is deleted so
// the caller can record the key afresh, and replaced reports that the key already counts in
// the dedup total.
func (s *Spool) checkKey(b buckets, key []byte, now time.Time) (seen, replaced bool, err error) {
	v := b.dedup.Get(key)
	if v == nil {
		return false, false, nil
	}
	at := decTime(v)
	if now.Sub(at) < s.window {
		return true, false, nil
	}
	if err := b.dedupT.Delete(dedupTKey(v, key)); err != nil {
		return false, false, fmt.Errorf("delete dedup time: %w", err)
	}
	return false, true, nil
}

// validateItems rejects items bbolt could not store, before they can fail a shared commit.
func validateItems(items []Item) error {
	for i, it := range items {
		if len(it.Key) > MaxKeyLen {
			return fmt.Errorf("item %d: dedup key is %d bytes, longer than %d", i, len(it.Key), MaxKeyLen)
		}
		if int64(len(it.Data)) > bolt.MaxValueSize {
			return fmt.Errorf("item %d: data is %d bytes, longer than %d", i, len(it.Data), bolt.MaxValueSize)
		}
		for _, sink := range it.Sinks {
			if sink == "" {
				return fmt.Errorf("item %d: empty sink name", i)
			}
			if len(sink) > MaxSinkLen {
				return fmt.Errorf("item %d: sink name is %d bytes, longer than %d", i, len(sink), MaxSinkLen)
			}
		}
	}
	return nil
}

// uniqueSinks returns sinks without repeats, in first-seen order. It does not allocate when
// there are none.
func uniqueSinks(sinks []string) []string {
	for i := 1; i < len(sinks); i++ {
		for j := 0; j < i; j++ {
			if sinks[i] == sinks[j] {
				out := make([]string, 0, len(sinks))
				seen := make(map[string]bool, len(sinks))
				for _, s := range sinks {
					if !seen[s] {
						seen[s] = true
						out = append(out, s)
					}
				}
				return out
			}
		}
	}
	return sinks
}

// dedupTKey is the dedupt key: the 8-byte acceptance time followed by the dedup key.
func dedupTKey(at, key []byte) []byte {
	k := make([]byte, 0, len(at)+len(key))
	return append(append(k, at...), key...)
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

// buckets holds a transaction's top-level buckets.
type buckets struct {
	items, refs, ready, sched, schedIdx, dedup, dedupT, stats, meta *bolt.Bucket
}

// openBuckets looks up the top-level buckets, which Open created.
func openBuckets(tx *bolt.Tx) buckets {
	return buckets{
		items:    tx.Bucket(bucketItems),
		refs:     tx.Bucket(bucketRefs),
		ready:    tx.Bucket(bucketReady),
		sched:    tx.Bucket(bucketSched),
		schedIdx: tx.Bucket(bucketSchedIdx),
		dedup:    tx.Bucket(bucketDedup),
		dedupT:   tx.Bucket(bucketDedupT),
		stats:    tx.Bucket(bucketStats),
		meta:     tx.Bucket(bucketMeta),
	}
}
