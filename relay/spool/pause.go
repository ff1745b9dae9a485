package spool

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// This file keeps the operator's pause of sinks: the sinkstate bucket, one small record per
// sink ever paused. It is written by SetPaused only, in its own write transaction (a pause is
// rare and must be durable before the caller is told it took), and read by SinkStates. A
// spool written before the bucket existed simply has none: no sink paused. An older binary
// ignores the bucket (its sinks are then not paused), so the format version is unchanged.

// bucketSinkState holds sink -> state record (encSinkState).
var bucketSinkState = []byte("sinkstate")

// sinkStateV1 is the first byte of a version-1 state record: then one byte paused (0 or 1),
// eight bytes of Since (encTime) and By's bytes to the end.
const sinkStateV1 = 1

// maxBy bounds the By text kept with a state, in bytes.
const maxBy = 512

// SinkState is an operator's pause of one sink (relay.SinkState has the same fields).
type SinkState struct {
	Sink   string
	Paused bool
	// Since is when the sink was last paused (Paused) or resumed.
	Since time.Time
	// By says who changed it and from where.
	By string
}

// SetPaused pauses or resumes sink at time at, recording by, in one fsync'd transaction, and
// returns the sink's state afterwards. changed is false (and nothing is written) when the
// sink already was in that state. A sink never paused counts as resumed.
func (s *Spool) SetPaused(sink string, paused bool, at time.Time, by string) (SinkState, bool, error) {
	if sink == "" || len(sink) > MaxSinkLen {
		return SinkState{}, false, fmt.Errorf("set pause of sink %q: name empty or over %d bytes", sink, MaxSinkLen)
	}
	if len(by) > maxBy {
		by = by[:maxBy]
	}
	st := SinkState{Sink: sink}
	changed := false
	err := s.updateIf(func(tx *bolt.Tx) (bool, error) {
		changed = false
		b := tx.Bucket(bucketSinkState)
		if b != nil {
			// An unreadable record is replaced by the state asked for.
			if cur, ok, err := decSinkState(sink, b.Get([]byte(sink))); err == nil && ok {
				if cur.Paused == paused {
					st = cur
					return false, nil
				}
			} else if err == nil && !paused {
				return false, nil // never paused: already resumed
			}
		} else if !paused {
			return false, nil
		}
		if b == nil {
			var err error
			if b, err = tx.CreateBucket(bucketSinkState); err != nil {
				return false, fmt.Errorf("create sink state bucket: %w", err)
			}
		}
		st = SinkState{Sink: sink, Paused: paused, Since: at, By: by}
		if err := b.Put([]byte(sink), encSinkState(st)); err != nil {
			return false, fmt.Errorf("put sink state: %w", err)
		}
		changed = true
		return true, nil
	})
	if err != nil {
		return SinkState{}, false, fmt.Errorf("set pause of sink %q: %w", sink, err)
	}
	return st, changed, nil
}

// SinkStates returns the state of every sink ever paused, by name. A record that cannot be
// decoded (a damaged file) is reported as paused, so that nothing is delivered against an
// operator's wish, and the error says which.
func (s *Spool) SinkStates() (map[string]SinkState, error) {
	out := map[string]SinkState{}
	var bad error
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSinkState)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			st, _, err := decSinkState(string(k), v)
			if err != nil {
				bad = errors.Join(bad, err)
				st = SinkState{Sink: string(k), Paused: true, By: "unreadable state record"}
			}
			out[st.Sink] = st
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read sink states: %w", err)
	}
	return out, bad
}

// encSinkState encodes a state record (version 1).
func encSinkState(st SinkState) []byte {
	v := make([]byte, 0, 10+len(st.By))
	v = append(v, sinkStateV1, 0)
	if st.Paused {
		v[1] = 1
	}
	v = append(v, encTime(st.Since)...)
	return append(v, st.By...)
}

// decSinkState decodes the record v of sink; ok is false when there is none.
func decSinkState(sink string, v []byte) (st SinkState, ok bool, err error) {
	if v == nil {
		return SinkState{}, false, nil
	}
	if len(v) < 10 || v[0] != sinkStateV1 || v[1] > 1 {
		return SinkState{}, false, fmt.Errorf("sink state of %q: unreadable record (%d bytes)", sink, len(v))
	}
	return SinkState{Sink: sink, Paused: v[1] == 1, Since: decTime(v[2:10]), By: string(v[10:])}, true, nil
}
