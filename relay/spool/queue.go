package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Delivery is one pending (item, sink) pair as Ready returns it.
type Delivery struct {
	// Sink is the sink the delivery is for.
	Sink string
	// Seq is the global acceptance sequence of the item; it never changes, even when the
	// delivery is rescheduled and promoted again.
	Seq uint64
	// Data is the item's data, a copy that stays valid after the call.
	Data []byte
	// Attempt is the number of attempts made so far, 0 for a new delivery.
	Attempt int
	// FirstAt is when the item was accepted.
	FirstAt time.Time
	// History is whatever the engine last stored with Reschedule (its attempt log); nil at
	// first.
	History []byte
}

// Ready returns up to max deliveries of sink that are due now, with Seq greater than after,
// in Seq order. Deliveries parked by Reschedule are not returned until Promote moves them
// back. max <= 0 returns nothing.
func (s *Spool) Ready(sink string, after uint64, max int) ([]Delivery, error) {
	if max <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	// Items not applied to the file yet come from memory. They are read first: an item leaves
	// memory only after its apply is committed, so it is in one place or both, never neither.
	mem := s.apply.pendingReady(sink, after, max)
	var out []Delivery
	seen := s.trackReads() // the items' pages, dropped from memory once copied (BoundMemory)
	err := s.view(func(tx *bolt.Tx) error {
		defer s.dropBlocks(tx, seen)
		b := openBuckets(tx)
		rb := b.ready.Bucket([]byte(sink))
		if rb == nil {
			return nil
		}
		c, items := rb.Cursor(), itemCursor{c: b.items.Cursor()}
		for k, v := c.Seek(encUint(after + 1)); k != nil && len(out) < max; k, v = c.Next() {
			d, ok, err := s.fileDelivery(&items, sink, k, v, seen)
			if err != nil {
				return err
			}
			if ok {
				out = append(out, d)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ready %s: %w", sink, err)
	}
	if seen != nil && len(*seen) > 0 {
		s.checkMemory()
	}
	if len(mem) == 0 {
		return out, nil
	}
	return mergeDeliveries(out, mem, max), nil
}

// mergeDeliveries merges two Seq-ordered lists into the first max in Seq order, keeping the
// file's copy of a delivery that is in both.
func mergeDeliveries(file, mem []Delivery, max int) []Delivery {
	out := make([]Delivery, 0, min(len(file)+len(mem), max))
	i, j := 0, 0
	for len(out) < max && (i < len(file) || j < len(mem)) {
		switch {
		case j == len(mem) || (i < len(file) && file[i].Seq < mem[j].Seq):
			out = append(out, file[i])
			i++
		case i == len(file) || mem[j].Seq < file[i].Seq:
			out = append(out, mem[j])
			j++
		default: // the same delivery, applied meanwhile
			out = append(out, file[i])
			i++
			j++
		}
	}
	return out
}

// Done removes deliveries of sink, ready or scheduled, once they were delivered or
// dead-lettered, in one transaction shared with concurrent callers. An item's data is deleted
// when no delivery needs it any more. Sequence numbers without a pending delivery are ignored,
// so Done is idempotent.
func (s *Spool) Done(sink string, seqs ...uint64) error {
	if s.closed.Load() {
		return fmt.Errorf("done %s: %w", sink, ErrClosed)
	}
	if seqs = s.apply.donePending(sink, seqs); len(seqs) == 0 {
		return nil
	}
	err := s.batch(func(tx *bolt.Tx) error {
		b := openBuckets(tx)
		var dReady, dSched int64
		rb := b.ready.Bucket([]byte(sink))
		sb := b.sched.Bucket([]byte(sink))
		ib := b.schedIdx.Bucket([]byte(sink))
		// Cursors: a delete at the key a Seek found costs no second search of the tree from
		// its root, as a Get then a Delete did (BenchmarkDrainFile).
		var rc *bolt.Cursor
		if rb != nil {
			rc = rb.Cursor()
		}
		rel := releaser{refs: b.refs.Cursor(), items: b.items.Cursor(), b: b}
		for i, seq := range seqs {
			s.boundIn(tx, i)
			k := encUint(seq)
			switch {
			case rc != nil && seekFound(rc, k):
				if err := rc.Delete(); err != nil {
					return fmt.Errorf("delete delivery: %w", err)
				}
				dReady--
			case ib != nil && ib.Get(k) != nil:
				if err := unschedule(sb, ib, k); err != nil {
					return err
				}
				dSched--
			default:
				// Not in the file: its frame's apply failed after taking it, so it is
				// pending again and can be done in memory.
				s.apply.doneInMemoryLocked(sink, seq)
				continue
			}
			if err := rel.release(k); err != nil {
				return err
			}
		}
		if dReady == 0 && dSched == 0 {
			return nil
		}
		return addCounts(b.stats, sink, dReady, dSched)
	}, len(seqs))
	if err != nil {
		return fmt.Errorf("done %s: %w", sink, err)
	}
	return nil
}

// Retry is a failed attempt of one pending delivery, as RescheduleBatch records it.
type Retry struct {
	// Seq is the delivery's sequence number.
	Seq uint64
	// At is when the delivery becomes due again.
	At time.Time
	// Attempt is the number of attempts made so far.
	Attempt int
	// History replaces what the delivery carries (the engine's attempt log).
	History []byte
}

// Reschedule records a failed attempt of a pending delivery of sink: it is parked until at,
// with its attempt count and history replaced, and Promote makes it ready again from then on.
// It shares its commit with concurrent callers and returns ErrNotFound when the sink has no
// pending delivery seq.
func (s *Spool) Reschedule(sink string, seq uint64, at time.Time, attempt int, history []byte) error {
	n, err := s.reschedule(sink, []Retry{{Seq: seq, At: at, Attempt: attempt, History: history}})
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("reschedule %s %d: %w", sink, seq, err)
	}
	return nil
}

// RescheduleBatch records failed attempts of pending deliveries of sink as Reschedule does,
// all in one transaction shared with concurrent callers, so that a failing sink costs one
// commit per batch of failures rather than one per failure. A sequence number without a
// pending delivery is skipped (it was done meanwhile), so RescheduleBatch is idempotent. On
// error none of rs is recorded.
func (s *Spool) RescheduleBatch(sink string, rs []Retry) error {
	if len(rs) == 0 {
		return nil
	}
	if _, err := s.reschedule(sink, rs); err != nil {
		return fmt.Errorf("reschedule %s: %d deliveries: %w", sink, len(rs), err)
	}
	return nil
}

// reschedule parks the deliveries of rs and returns how many it found pending.
func (s *Spool) reschedule(sink string, rs []Retry) (int, error) {
	var last uint64
	for _, r := range rs {
		if r.Attempt < 0 {
			return 0, fmt.Errorf("delivery %d: negative attempt %d", r.Seq, r.Attempt)
		}
		if int64(len(r.History)) > bolt.MaxValueSize-64 {
			return 0, fmt.Errorf("delivery %d: history is %d bytes, too long", r.Seq, len(r.History))
		}
		last = max(last, r.Seq)
	}
	// A delivery still in memory is parked in the file: wait for its frame to get there.
	// Frames are applied in order, so the frame of the highest seq is the last to wait for.
	if err := s.apply.waitItemApplied(last); err != nil {
		return 0, err
	}
	var found int
	err := s.batch(func(tx *bolt.Tx) error {
		found = 0
		b := openBuckets(tx)
		name := []byte(sink)
		rb := b.ready.Bucket(name)
		var sb, ib *bolt.Bucket
		var dReady, dSched int64
		for i, r := range rs {
			s.boundIn(tx, i)
			k := encUint(r.Seq)
			var firstAt time.Time
			if v := getBucket(rb, k); v != nil {
				_, first, _, err := decMeta(v)
				if err != nil {
					return fmt.Errorf("delivery %d: %w", r.Seq, err)
				}
				firstAt = first
				if err := rb.Delete(k); err != nil {
					return fmt.Errorf("delete delivery: %w", err)
				}
				dReady--
				dSched++
			} else if due := getBucket(b.schedIdx.Bucket(name), k); due != nil {
				osb := b.sched.Bucket(name)
				_, first, _, err := decMeta(getBucket(osb, schedKey(due, k)))
				if err != nil {
					return fmt.Errorf("delivery %d: %w", r.Seq, err)
				}
				firstAt = first
				if err := unschedule(osb, b.schedIdx.Bucket(name), k); err != nil {
					return err
				}
			} else {
				continue
			}
			found++
			if sb == nil {
				var err error
				if sb, err = b.sched.CreateBucketIfNotExists(name); err != nil {
					return fmt.Errorf("create sched bucket: %w", err)
				}
				if ib, err = b.schedIdx.CreateBucketIfNotExists(name); err != nil {
					return fmt.Errorf("create sched index bucket: %w", err)
				}
			}
			due := encTime(r.At)
			if err := sb.Put(schedKey(due, k), encMeta(nil, r.Attempt, firstAt, r.History)); err != nil {
				return fmt.Errorf("put scheduled delivery: %w", err)
			}
			if err := ib.Put(k, due); err != nil {
				return fmt.Errorf("put sched index: %w", err)
			}
		}
		if dReady == 0 && dSched == 0 {
			return nil
		}
		return addCounts(b.stats, sink, dReady, dSched)
	}, len(rs))
	return found, err
}

// Promote makes scheduled deliveries whose time has come (due at or before now) ready again,
// keeping their Seq, attempt count and history, and returns for each sink the lowest promoted
// Seq so the engine can rewind its cursor. One call moves at most 1000 deliveries in one small
// transaction; when more were due, NextScheduled still reports a time not after now and the
// caller should call Promote again.
func (s *Spool) Promote(now time.Time) (map[string]uint64, error) {
	var lowest map[string]uint64
	limit := timeBits(now)
	// Nothing due (the common case: the engine asks every second): no write transaction.
	if t, ok, err := s.NextScheduled(); err != nil || !ok || timeBits(t) > limit {
		if err != nil {
			return nil, fmt.Errorf("promote: %w", err)
		}
		return map[string]uint64{}, nil
	}
	err := s.updateIf(func(tx *bolt.Tx) (bool, error) {
		lowest = map[string]uint64{}
		b := openBuckets(tx)
		var names [][]byte
		if err := b.sched.ForEachBucket(func(k []byte) error {
			names = append(names, append([]byte{}, k...))
			return nil
		}); err != nil {
			return false, err
		}
		moved := 0
		for _, name := range names {
			if moved >= s.promoteLimit {
				break
			}
			sb := b.sched.Bucket(name)
			type entry struct{ key, meta []byte }
			var due []entry
			c := sb.Cursor()
			for k, v := c.First(); k != nil && moved+len(due) < s.promoteLimit; k, v = c.Next() {
				if len(k) != 16 || binary.BigEndian.Uint64(k) > limit {
					break
				}
				due = append(due, entry{append([]byte{}, k...), append([]byte{}, v...)})
			}
			if len(due) == 0 {
				continue
			}
			rb, err := b.ready.CreateBucketIfNotExists(name)
			if err != nil {
				return false, fmt.Errorf("create ready bucket: %w", err)
			}
			ib := b.schedIdx.Bucket(name)
			low := uint64(math.MaxUint64)
			for i, e := range due {
				s.boundIn(tx, moved+i)
				seqB := e.key[8:]
				if err := sb.Delete(e.key); err != nil {
					return false, fmt.Errorf("delete scheduled delivery: %w", err)
				}
				if ib != nil {
					if err := ib.Delete(seqB); err != nil {
						return false, fmt.Errorf("delete sched index: %w", err)
					}
				}
				if err := rb.Put(seqB, e.meta); err != nil {
					return false, fmt.Errorf("put delivery: %w", err)
				}
				low = min(low, decUint(seqB))
			}
			lowest[string(name)] = low
			n := int64(len(due))
			if err := addCounts(b.stats, string(name), n, -n); err != nil {
				return false, err
			}
			moved += len(due)
		}
		return moved > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	return lowest, nil
}

// NextScheduled returns the earliest time any scheduled delivery becomes due; ok is false if
// none is scheduled.
func (s *Spool) NextScheduled() (t time.Time, ok bool, err error) {
	var best uint64
	err = s.view(func(tx *bolt.Tx) error {
		sched := tx.Bucket(bucketSched)
		return sched.ForEachBucket(func(name []byte) error {
			k, _ := sched.Bucket(name).Cursor().First()
			if len(k) != 16 {
				return nil
			}
			if due := binary.BigEndian.Uint64(k); !ok || due < best {
				best, ok = due, true
			}
			return nil
		})
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next scheduled: %w", err)
	}
	if !ok {
		return time.Time{}, false, nil
	}
	return bitsTime(best), true, nil
}

// unschedule deletes the scheduled delivery seqB from the sched bucket sb and its index ib.
func unschedule(sb, ib *bolt.Bucket, seqB []byte) error {
	due := ib.Get(seqB)
	if due == nil {
		return nil
	}
	if sb != nil {
		if err := sb.Delete(schedKey(due, seqB)); err != nil {
			return fmt.Errorf("delete scheduled delivery: %w", err)
		}
	}
	if err := ib.Delete(seqB); err != nil {
		return fmt.Errorf("delete sched index: %w", err)
	}
	return nil
}

// releaser drops references to items (release), with cursors on the refs and items buckets
// of one write transaction.
type releaser struct {
	refs, items *bolt.Cursor
	b           buckets
}

// release drops one reference to item seqB and deletes the item when none is left.
func (r releaser) release(seqB []byte) error {
	v, found := seekExact(r.refs, seqB)
	n, w := binary.Uvarint(v)
	if w <= 0 || n <= 1 {
		if found {
			if err := r.refs.Delete(); err != nil {
				return fmt.Errorf("delete refs: %w", err)
			}
		}
		if _, ok := seekExact(r.items, seqB); ok {
			if err := r.items.Delete(); err != nil {
				return fmt.Errorf("delete item: %w", err)
			}
		}
		return nil
	}
	if err := r.b.refs.Put(seqB, binary.AppendUvarint(nil, n-1)); err != nil {
		return fmt.Errorf("put refs: %w", err)
	}
	return nil
}

// seekExact moves c to key k and returns its value, reporting whether the bucket holds k
// (the spool's leaf buckets hold no nested buckets).
func seekExact(c *bolt.Cursor, k []byte) ([]byte, bool) {
	got, v := c.Seek(k)
	return v, got != nil && bytes.Equal(got, k)
}

// itemCursor reads items in ascending Seq order, as Ready and Scheduled do: when the item
// asked for is the one after the last one read (the common case: most items go to every
// sink), it is the cursor's Next, with no search of the tree from its root.
type itemCursor struct {
	c    *bolt.Cursor
	last []byte // the key of the last item read; nil before the first or after a miss
}

// get returns the value of item key k, nil when the file has none.
func (ic *itemCursor) get(k []byte) []byte {
	if ic.last != nil && bytes.Compare(k, ic.last) > 0 {
		if nk, v := ic.c.Next(); nk != nil && bytes.Equal(nk, k) {
			ic.last = nk
			return v
		}
	}
	v, ok := seekExact(ic.c, k)
	if !ok {
		ic.last = nil
		return nil
	}
	ic.last = k
	return v
}

// seekFound is seekExact without the value.
func seekFound(c *bolt.Cursor, k []byte) bool {
	_, ok := seekExact(c, k)
	return ok
}

// cloneBytes copies b, keeping nil as nil.
func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// fileDelivery reads the delivery of sink whose item key is k and whose delivery record
// (attempt, first seen, history) is meta, for Ready and Scheduled. ok is false when the
// delivery is skipped: its item is missing (logged; failing the read would stop the sink for
// good) or fails its checksum (never delivered as if genuine: held back, counted, and the next
// Open refuses the file until hubrelay spool recover sets it aside). seen, when not nil,
// records where the item's data lies in the map.
func (s *Spool) fileDelivery(items *itemCursor, sink string, k, meta []byte, seen *mappedBlocks) (d Delivery, ok bool, err error) {
	seq := decUint(k)
	attempt, firstAt, history, err := decMeta(meta)
	if err != nil {
		return Delivery{}, false, fmt.Errorf("delivery %d: %w", seq, err)
	}
	v := items.get(k)
	if v == nil {
		s.log.Error("spool delivery without item data, skipped", "sink", sink, "seq", seq)
		return Delivery{}, false, nil
	}
	seen.add(v)
	_, data, err := decItem(seq, v)
	if err != nil {
		s.damagedItem(sink, seq)
		return Delivery{}, false, nil
	}
	return Delivery{
		Sink:    sink,
		Seq:     seq,
		Data:    append([]byte{}, data...),
		Attempt: attempt,
		FirstAt: firstAt,
		History: cloneBytes(history),
	}, true, nil
}
