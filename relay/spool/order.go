package spool

import (
	"fmt"
	"math"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Scheduled returns up to max scheduled deliveries of sink (parked by Reschedule, not yet
// promoted) with Seq greater than after, in Seq order, whatever their due time. A delivery is
// scheduled only once its item is in the file, so memory holds none of them.
func (s *Spool) Scheduled(sink string, after uint64, max int) ([]Delivery, error) {
	if max <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	var out []Delivery
	err := s.view(func(tx *bolt.Tx) error {
		b := openBuckets(tx)
		name := []byte(sink)
		ib, sb := b.schedIdx.Bucket(name), b.sched.Bucket(name)
		if ib == nil || sb == nil {
			return nil
		}
		c, items := ib.Cursor(), itemCursor{c: b.items.Cursor()}
		for k, due := c.Seek(encUint(after + 1)); k != nil && len(out) < max; k, due = c.Next() {
			seq := decUint(k)
			v := sb.Get(schedKey(due, k))
			if v == nil {
				s.log.Error("spool schedule index without its delivery, skipped", "sink", sink, "seq", seq)
				continue
			}
			d, ok, err := s.fileDelivery(&items, sink, k, v, nil)
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
		return nil, fmt.Errorf("scheduled %s: %w", sink, err)
	}
	return out, nil
}

// DoneSync is Done that returns only once the removal survives a crash: a delivery done only
// in memory (its item's journal frame not applied yet) would be delivered again after one.
// It waits for the frame of the highest seq, and frames are applied in order. The delivery
// engine uses it for deliveries with an ordering key: a change must not come back after a
// later change of its key was delivered.
func (s *Spool) DoneSync(sink string, seqs ...uint64) error {
	if err := s.Done(sink, seqs...); err != nil || len(seqs) == 0 {
		return err
	}
	if err := s.apply.waitItemApplied(slices.Max(seqs)); err != nil {
		return fmt.Errorf("done %s: %w", sink, err)
	}
	return nil
}
