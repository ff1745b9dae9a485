package postgres

import (
	"context"
	"encoding/binary"
)

// Kill stops the store as a killed process would: no heartbeat any more, its claims left in
// place to lapse, the pool closed.
func (s *Store) Kill() {
	s.once.Do(func() {
		close(s.stop)
		s.bg.Wait()
		s.closePools()
	})
}

// AcceptSlots is acceptSlots, for tests that fill every slot.
const AcceptSlots = acceptSlots

// LockOf returns the advisory lock Accept takes for key.
func LockOf(key string) int64 { return int64(binary.BigEndian.Uint64(keyHash(key))) }

// Queued returns how many Accept calls wait for a slot.
func (s *Store) Queued() int {
	s.commits.mu.Lock()
	defer s.commits.mu.Unlock()
	return len(s.commits.queue)
}

// SyncCommit returns synchronous_commit as the main pool's and the bookkeeping pool's
// connections see it.
func (s *Store) SyncCommit(ctx context.Context) (main, book string, err error) {
	if err := s.pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&main); err != nil {
		return "", "", err
	}
	err = s.book.QueryRow(ctx, "SHOW synchronous_commit").Scan(&book)
	return main, book, err
}
