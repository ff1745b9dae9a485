// Package embedded is the default storage engine: relay/spool's journal and bbolt file in
// storage.dir, owned by one process, seen through relay's storage contract (relay.Store).
//
// The spool keeps its own types so that it imports nothing of ours; relay's Item, Delivery and
// SinkStats have the same fields, and Store converts slices of one to the other in place (no
// copy, no allocation) where the layouts are proven identical at compile time.
package embedded

import (
	"context"
	"errors"
	"time"
	"unsafe"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
)

// Store is a *spool.Spool as a relay.Store. The spool's own methods (Close, ReleaseMemory…)
// are reachable through the embedded field.
type Store struct {
	*spool.Spool
}

var _ relay.Store = (*Store)(nil)

// These conversions compile only while relay's types and the spool's have identical fields
// (names, types, order), which is what the in-place slice conversions below rely on.
var (
	_ = spool.Item(relay.Item{})
	_ = relay.Delivery(spool.Delivery{})
	_ = relay.SinkStats(spool.SinkStats{})
	_ = spool.Retry(relay.Retry{})
	_ = relay.SinkState(spool.SinkState{})
)

// New returns sp as a relay.Store.
func New(sp *spool.Spool) *Store { return &Store{Spool: sp} }

// Open opens the spool at path (see spool.Open) as a relay.Store.
func Open(path string, opt spool.Options) (*Store, error) {
	sp, err := spool.Open(path, opt)
	if err != nil {
		return nil, err
	}
	return New(sp), nil
}

// Accept implements relay.Spooler.
func (s *Store) Accept(ctx context.Context, items []relay.Item, now time.Time) ([]bool, error) {
	return s.Spool.Accept(ctx, spoolItems(items), now)
}

// Ready implements relay.Queue.
func (s *Store) Ready(sink string, after uint64, max int) ([]relay.Delivery, error) {
	ds, err := s.Spool.Ready(sink, after, max)
	return relayDeliveries(ds), err
}

// Reschedule implements relay.Queue; the spool's ErrNotFound also matches relay.ErrNotFound.
func (s *Store) Reschedule(sink string, seq uint64, at time.Time, attempt int, history []byte) error {
	err := s.Spool.Reschedule(sink, seq, at, attempt, history)
	if errors.Is(err, spool.ErrNotFound) {
		return notFound{err}
	}
	return err
}

// RescheduleBatch implements relay.Queue.
func (s *Store) RescheduleBatch(sink string, rs []relay.Retry) error {
	if len(rs) == 0 {
		return nil
	}
	return s.Spool.RescheduleBatch(sink, unsafe.Slice((*spool.Retry)(unsafe.Pointer(unsafe.SliceData(rs))), len(rs)))
}

// Stats implements relay.Store.
func (s *Store) Stats() (map[string]relay.SinkStats, error) {
	st, err := s.Spool.Stats()
	if st == nil {
		return nil, err
	}
	out := make(map[string]relay.SinkStats, len(st))
	for k, v := range st {
		out[k] = relay.SinkStats(v)
	}
	return out, err
}

// SetPaused implements relay.SinkControls.
func (s *Store) SetPaused(sink string, paused bool, at time.Time, by string) (relay.SinkState, bool, error) {
	st, changed, err := s.Spool.SetPaused(sink, paused, at, by)
	return relay.SinkState(st), changed, err
}

// SinkStates implements relay.SinkControls.
func (s *Store) SinkStates() (map[string]relay.SinkState, error) {
	st, err := s.Spool.SinkStates()
	if st == nil {
		return nil, err
	}
	out := make(map[string]relay.SinkState, len(st))
	for k, v := range st {
		out[k] = relay.SinkState(v)
	}
	return out, err
}

// notFound is the spool's not-found error, also matching relay.ErrNotFound.
type notFound struct{ err error }

func (e notFound) Error() string        { return e.err.Error() }
func (e notFound) Unwrap() error        { return e.err }
func (e notFound) Is(target error) bool { return target == relay.ErrNotFound }

// spoolItems views items as the spool's type, in place.
func spoolItems(items []relay.Item) []spool.Item {
	if len(items) == 0 {
		return nil
	}
	return unsafe.Slice((*spool.Item)(unsafe.Pointer(unsafe.SliceData(items))), len(items))
}

// relayDeliveries views ds as relay's type, in place.
func relayDeliveries(ds []spool.Delivery) []relay.Delivery {
	if ds == nil {
		return nil
	}
	return unsafe.Slice((*relay.Delivery)(unsafe.Pointer(unsafe.SliceData(ds))), len(ds))
}

// Scheduled implements relay.Queue.
func (s *Store) Scheduled(sink string, after uint64, max int) ([]relay.Delivery, error) {
	ds, err := s.Spool.Scheduled(sink, after, max)
	return relayDeliveries(ds), err
}

// DoneSync implements relay.Queue.
func (s *Store) DoneSync(sink string, seqs ...uint64) error { return s.Spool.DoneSync(sink, seqs...) }
