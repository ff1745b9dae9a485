package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// This file keeps replicas with different sink sets (a rolling config change that adds or
// removes a sink) from dead-lettering what another replica can deliver. Each replica records
// the sinks it runs in replica_sinks, renewed with its heartbeat. A replica claims deliveries
// only of the sinks it runs; for any other sink it claims them (and the engine dead-letters
// them, "sink is not configured") only once no replica has renewed that sink for SinkGrace,
// and it has itself been running that long (it knows every replica that was up meanwhile).

// SetSinks records the sinks this replica runs (the engine's whole set, built-in ones
// included): from then on Ready hands out deliveries of other sinks only as described above.
// Call it before the engine starts a newly configured sink. A failed write is returned, and
// the heartbeat writes the set again.
func (s *Store) SetSinks(names []string) error {
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	s.sinks.Store(&set)
	if !s.isUp.Load() {
		return nil // setUp writes them
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	return s.advertise(ctx)
}

// advertise renews this replica's rows in replica_sinks, and drops rows no replica has
// renewed for twice the grace (they no longer hold anything back).
func (s *Store) advertise(ctx context.Context) error {
	p := s.sinks.Load()
	if p == nil {
		return nil
	}
	names := make([]string, 0, len(*p))
	for n := range *p {
		names = append(names, n)
	}
	slices.Sort(names) // rows locked in one order: replicas renewing at once never deadlock
	if _, err := s.pool.Exec(ctx, `INSERT INTO replica_sinks (sink, replica, last_seen)
		SELECT unnest($1::text[]), $2, now()
		ON CONFLICT (sink, replica) DO UPDATE SET last_seen = excluded.last_seen`, names, s.me.Load()); err != nil {
		return fmt.Errorf("record the sinks this replica runs: %w", err)
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM replica_sinks WHERE last_seen < now() - $1::interval", 2*s.opt.SinkGrace); err != nil {
		return fmt.Errorf("drop old sink rows: %w", err)
	}
	return nil
}

// mayClaimQuery reports whether any replica renewed sink $1 within the grace $2; when one did,
// it also gives up this replica's ($3) ownership of the sink's queue, so that a replica that
// runs the sink can take it over.
const mayClaimQuery = `
WITH seen AS (
	SELECT 1 FROM replica_sinks WHERE sink = $1 AND last_seen > now() - $2::interval
), release AS (
	DELETE FROM sink_owners WHERE sink = $1 AND owner = $3 AND EXISTS (SELECT 1 FROM seen)
	RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM seen)`

// mayClaim reports whether this replica may claim deliveries of sink: always for a sink it
// runs (or before SetSinks); for another sink only once it has been up for the grace and no
// replica has run the sink within it.
func (s *Store) mayClaim(ctx context.Context, sink string) (bool, error) {
	p := s.sinks.Load()
	if p == nil || (*p)[sink] {
		return true, nil
	}
	var seen bool
	if err := s.pool.QueryRow(ctx, mayClaimQuery, sink, s.opt.SinkGrace, s.me.Load()).Scan(&seen); err != nil {
		return false, fmt.Errorf("ready %s: is it run by a replica: %w", sink, err)
	}
	return !seen && time.Since(s.started) >= s.opt.SinkGrace, nil
}
