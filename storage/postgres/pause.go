package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hubrelay/hubrelay/relay"
)

// maxBy bounds the By text kept with a sink's state, in bytes.
const maxBy = 512

// SetPaused implements relay.SinkControls: one transaction that locks the sink's row (or the
// sink's advisory lock when it has none yet), so two replicas pausing at once record one
// pause. Every replica's engine reads the table every PollInterval.
func (s *Store) SetPaused(sink string, paused bool, at time.Time, by string) (relay.SinkState, bool, error) {
	if sink == "" {
		return relay.SinkState{}, false, errors.New("set pause: empty sink name")
	}
	if !s.isUp.Load() {
		return relay.SinkState{}, false, fmt.Errorf("set pause of sink %q: %w", sink, ErrNotUp)
	}
	if len(by) > maxBy {
		by = by[:maxBy]
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	st := relay.SinkState{Sink: sink}
	changed := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey(s.opt.Schema+" sink state "+sink)); err != nil {
			return err
		}
		var cur relay.SinkState
		err := tx.QueryRow(ctx, "SELECT paused, since, by_who FROM sink_states WHERE sink = $1", sink).
			Scan(&cur.Paused, &cur.Since, &cur.By)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if !paused {
				return nil // never paused: already resumed
			}
		case err != nil:
			return err
		case cur.Paused == paused:
			cur.Sink = sink
			st = cur
			return nil
		}
		_, err = tx.Exec(ctx, `INSERT INTO sink_states (sink, paused, since, by_who) VALUES ($1, $2, $3, $4)
			ON CONFLICT (sink) DO UPDATE SET paused = excluded.paused, since = excluded.since, by_who = excluded.by_who`,
			sink, paused, at, by)
		if err != nil {
			return err
		}
		st = relay.SinkState{Sink: sink, Paused: paused, Since: at, By: by}
		changed = true
		return nil
	})
	if err != nil {
		return relay.SinkState{}, false, fmt.Errorf("set pause of sink %q: %w", sink, err)
	}
	return st, changed, nil
}

// SinkStates implements relay.SinkControls. Until the store is up (Start) it fails with
// ErrNotUp, and the engine holds every sink meanwhile.
func (s *Store) SinkStates() (map[string]relay.SinkState, error) {
	if !s.isUp.Load() {
		// The engine holds every sink until it can read them.
		return nil, fmt.Errorf("read sink states: %w", ErrNotUp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, "SELECT sink, paused, since, by_who FROM sink_states")
	if err != nil {
		return nil, fmt.Errorf("read sink states: %w", err)
	}
	out := map[string]relay.SinkState{}
	for rows.Next() {
		var st relay.SinkState
		if err := rows.Scan(&st.Sink, &st.Paused, &st.Since, &st.By); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read sink states: %w", err)
		}
		out[st.Sink] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read sink states: %w", err)
	}
	return out, nil
}
