package postgres

// Kill stops the store as a killed process would: no heartbeat any more, its claims left in
// place to lapse, the pool closed.
func (s *Store) Kill() {
	s.once.Do(func() {
		close(s.stop)
		s.bg.Wait()
		s.pool.Close()
	})
}
