package spool

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SinkStats describes the pending deliveries of one sink.
type SinkStats struct {
	// Ready is the number of deliveries due now.
	Ready int
	// Scheduled is the number of deliveries parked by Reschedule until a later time.
	Scheduled int
	// Oldest is when the oldest pending delivery's item was accepted; zero if none is pending.
	Oldest time.Time
	// OldestReady is when the ready delivery with the lowest Seq was accepted; zero if none is
	// ready. With a healthy sink it stays recent: one that grows old is a delivery stuck.
	OldestReady time.Time
	// OldestScheduled is when the scheduled delivery with the lowest Seq was accepted; zero if
	// none is scheduled.
	OldestScheduled time.Time
	// NextDue is the earliest time a scheduled delivery of the sink falls due; zero if none is
	// scheduled. Once well past, a promotion was missed.
	NextDue time.Time
	// Damaged is the number of pending deliveries held back since the store opened because
	// their stored data fails its checksum (the embedded spool's; see spool.Recover).
	Damaged int
}

// Stats returns the pending deliveries of every sink that ever had one. It reads maintained
// counters and the head of each queue, so its cost does not grow with the queue length.
func (s *Spool) Stats() (map[string]SinkStats, error) {
	s.apply.waitApplied()
	out := map[string]SinkStats{}
	err := s.view(func(tx *bolt.Tx) error {
		b := openBuckets(tx)
		return b.stats.ForEach(func(k, v []byte) error {
			c := decCounts(v)
			st := SinkStats{Ready: int(c.ready), Scheduled: int(c.sched)}
			if err := oldestPending(b, k, &st); err != nil {
				return fmt.Errorf("sink %s: %w", k, err)
			}
			out[string(k)] = st
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	for sink, n := range s.damagedBySink() {
		st := out[sink]
		st.Damaged = n
		out[sink] = st
	}
	return out, nil
}

// oldestPending fills st's Oldest, OldestReady, OldestScheduled and NextDue from the heads of
// the sink's ready queue, schedule index (by Seq) and schedule (by due time).
func oldestPending(b buckets, sink []byte, st *SinkStats) error {
	first := func(meta []byte) (time.Time, error) {
		if meta == nil {
			return time.Time{}, nil
		}
		_, at, _, err := decMeta(meta)
		return at, err
	}
	var err error
	if rb := b.ready.Bucket(sink); rb != nil {
		if _, v := rb.Cursor().First(); v != nil {
			if st.OldestReady, err = first(v); err != nil {
				return err
			}
		}
	}
	if ib := b.schedIdx.Bucket(sink); ib != nil {
		if seqB, due := ib.Cursor().First(); seqB != nil {
			if st.OldestScheduled, err = first(getBucket(b.sched.Bucket(sink), schedKey(due, seqB))); err != nil {
				return err
			}
		}
	}
	if sb := b.sched.Bucket(sink); sb != nil {
		if k, _ := sb.Cursor().First(); len(k) == 16 {
			st.NextDue = bitsTime(binary.BigEndian.Uint64(k))
		}
	}
	st.Oldest = st.OldestReady
	if !st.OldestScheduled.IsZero() && (st.Oldest.IsZero() || st.OldestScheduled.Before(st.Oldest)) {
		st.Oldest = st.OldestScheduled
	}
	return nil
}

// Sinks returns, in name order, the sinks that have pending (ready or scheduled) deliveries.
func (s *Spool) Sinks() ([]string, error) {
	s.apply.waitApplied()
	var out []string
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketStats).ForEach(func(k, v []byte) error {
			if c := decCounts(v); c.ready+c.sched > 0 {
				out = append(out, string(k))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("sinks: %w", err)
	}
	return out, nil
}

// ExpireDedup deletes dedup records accepted at least the dedup window before now (those no
// longer count as seen) and returns how many it deleted: whole runs of such records, at most
// one run of which at least half are such records (written again without them), then up to
// max (less what runs freed) from the mutable level. A run is never split, so it may return
// more than max. It works in one transaction that writes at most one run (a few MiB) so that
// it never holds up Accept for long; call it periodically, and again at once while it returns
// max or more. max <= 0 deletes nothing.
func (s *Spool) ExpireDedup(now time.Time, max int) (int, error) {
	if max <= 0 {
		return 0, nil
	}
	s.apply.waitApplied()
	cutoff := now.Add(-s.window)
	var n int
	err := s.updateIf(func(tx *bolt.Tx) (bool, error) {
		var err error
		n, err = s.dedup.Expire(tx, cutoff, max)
		return n > 0, err
	})
	if err != nil {
		return 0, fmt.Errorf("expire dedup: %w", err)
	}
	if n > 0 {
		s.log.Debug("dedup keys expired", "count", n)
	}
	return n, nil
}

// DedupLen returns the number of dedup records stored: one per key, plus, for a key accepted
// again after its window, the older record until ExpireDedup or a merge drops it; expired
// records ExpireDedup has not dropped yet included.
func (s *Spool) DedupLen() (int, error) {
	s.apply.waitApplied()
	var n uint64
	err := s.view(func(tx *bolt.Tx) error {
		n = s.dedup.Len(tx)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("dedup len: %w", err)
	}
	return int(n), nil
}
