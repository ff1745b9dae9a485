package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// DeadLetters keeps dead letters in the database, as relay/deadletter's JSON, so every replica
// and `hubrelay deadletter` see the same ones. Its methods mirror deadletter.Dir's.
type DeadLetters struct {
	s *Store
}

// DeadLetters returns the store's dead letters.
func (s *Store) DeadLetters() *DeadLetters { return &DeadLetters{s: s} }

var _ interface {
	Write(*deadletter.Letter) error
} = (*DeadLetters)(nil)

// Write stores l, filling in Version, ID ("<sink>-<seq>", as the directory does) and DeadAt.
// Writing the same change's letter again replaces it; another change's letter with the same
// generated id gets a counter, as in the directory.
func (d *DeadLetters) Write(l *deadletter.Letter) error {
	if l == nil || l.Sink == "" {
		return errors.New("write dead letter: no sink")
	}
	if !json.Valid(l.Change) {
		return fmt.Errorf("write dead letter for sink %q seq %d: change is not valid JSON", l.Sink, l.Seq)
	}
	if l.Version == 0 {
		l.Version = deadletter.Version
	}
	if l.DeadAt.IsZero() {
		l.DeadAt = time.Now().UTC()
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.s.opt.AcceptTimeout)
	defer cancel()
	explicit := l.ID != ""
	base := l.ID
	if !explicit {
		base = deadletter.GenerateID(l.Sink, l.Seq)
	}
	id := base
	for n := 2; ; n++ {
		l.ID = id
		data, err := encodeLetter(l)
		if err != nil {
			return fmt.Errorf("write dead letter %s: %w", id, err)
		}
		// Replace a letter of the same change (or any, for an explicit id); else try the next id.
		tag, err := d.s.pool.Exec(ctx, `INSERT INTO dead_letters (id, sink, dead_at, letter) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET sink = excluded.sink, dead_at = excluded.dead_at, letter = excluded.letter
			WHERE $5 OR (convert_from(dead_letters.letter, 'UTF8')::jsonb ->> 'change_id') IS NOT DISTINCT FROM $6`,
			id, l.Sink, l.DeadAt, data, explicit, l.ChangeID)
		if err != nil {
			return fmt.Errorf("write dead letter %s: %w", id, err)
		}
		if tag.RowsAffected() > 0 || n > 1000 {
			return nil
		}
		id = fmt.Sprintf("%s-%d", base, n)
	}
}

func encodeLetter(l *deadletter.Letter) ([]byte, error) {
	c := *l
	c.FirstAt, c.DeadAt = c.FirstAt.UTC(), c.DeadAt.UTC()
	c.Attempts = make([]deadletter.Attempt, len(l.Attempts))
	for i, a := range l.Attempts {
		a.At = a.At.UTC()
		c.Attempts[i] = a
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&c); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func decodeLetter(id string, data []byte) (*deadletter.Letter, error) {
	l := new(deadletter.Letter)
	if err := json.Unmarshal(data, l); err != nil {
		return nil, fmt.Errorf("dead letter %s: %w: %w", id, deadletter.ErrCorrupt, err)
	}
	l.ID = id
	return l, nil
}

// Get returns the letter id; the error wraps fs.ErrNotExist when there is none.
func (d *DeadLetters) Get(id string) (*deadletter.Letter, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.s.opt.AcceptTimeout)
	defer cancel()
	var data []byte
	err := d.s.pool.QueryRow(ctx, "SELECT letter FROM dead_letters WHERE id = $1", id).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get dead letter %s: %w", id, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("get dead letter %s: %w", id, err)
	}
	return decodeLetter(id, data)
}

// List returns the letters f selects, sorted by DeadAt, then ID, as deadletter.Dir.List does;
// each requested ID that does not exist is reported in the error.
func (d *DeadLetters) List(f deadletter.Filter) ([]*deadletter.Letter, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []string
	if len(f.IDs) > 0 {
		ids = f.IDs
	}
	rows, err := d.s.pool.Query(ctx, `SELECT id, letter FROM dead_letters
		WHERE ($1 = '' OR sink = $1) AND ($2::text[] IS NULL OR id = ANY($2))
		ORDER BY dead_at, id`, f.Sink, ids)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer rows.Close()
	var out []*deadletter.Letter
	var errs []error
	found := map[string]bool{}
	for rows.Next() {
		var id string
		var data []byte
		if err := rows.Scan(&id, &data); err != nil {
			return out, fmt.Errorf("list dead letters: %w", err)
		}
		found[id] = true
		l, err := decodeLetter(id, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f.Match(l) {
			out = append(out, l)
		}
	}
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("list dead letters: %w", err)
	}
	for _, id := range f.IDs {
		if !found[id] {
			errs = append(errs, fmt.Errorf("get dead letter %s: %w", id, fs.ErrNotExist))
			found[id] = true
		}
	}
	return out, errors.Join(errs...)
}

// Remove deletes the letter id; the error wraps fs.ErrNotExist when there is none.
func (d *DeadLetters) Remove(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.s.opt.AcceptTimeout)
	defer cancel()
	tag, err := d.s.pool.Exec(ctx, "DELETE FROM dead_letters WHERE id = $1", id)
	if err != nil {
		return fmt.Errorf("remove dead letter %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("remove dead letter %s: %w", id, fs.ErrNotExist)
	}
	return nil
}

// Count returns how many letters sink has, or every sink when sink is empty.
func (d *DeadLetters) Count(sink string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.s.opt.AcceptTimeout)
	defer cancel()
	var n int64
	if err := d.s.pool.QueryRow(ctx, "SELECT count(*) FROM dead_letters WHERE $1 = '' OR sink = $1", sink).Scan(&n); err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	return int(n), nil
}

// Replay puts the letter's change back on its sink's queue and removes the letter, in one
// transaction: a replay is never lost nor doubled. Any replica then delivers it. router
// routes letters of relay.RuleErrorSink again (see relay.ReplayItem); it may be nil otherwise.
func (d *DeadLetters) Replay(ctx context.Context, l *deadletter.Letter, router *relay.Router) error {
	it, err := relay.ReplayItem(l, router)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.s.opt.AcceptTimeout)
	defer cancel()
	now := time.Now().Truncate(time.Microsecond)
	tx, err := d.s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("replay dead letter %s: %w", l.ID, err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, "DELETE FROM dead_letters WHERE id = $1", l.ID)
	if err != nil {
		return fmt.Errorf("replay dead letter %s: %w", l.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("replay dead letter %s: %w", l.ID, fs.ErrNotExist)
	}
	var dup []bool
	first := []int32{1, int32(len(it.Sinks) + 1)}
	if keys := orderKeys([]relay.Item{it}, len(it.Sinks)); keys == nil {
		err = tx.QueryRow(ctx, "SELECT accept($1, $2, $3, $4, NULL, $5, $6)",
			[][]byte{nil}, [][]byte{it.Data}, first, it.Sinks, now, d.s.opt.DedupWindow).Scan(&dup)
	} else {
		// Keyed: the replayed change goes behind the pending changes of its ordering key, and
		// no replica is handed a later one of that key before it.
		err = tx.QueryRow(ctx, "SELECT accept_keyed($1, $2, $3, $4, $5, NULL, $6, $7)",
			[][]byte{nil}, [][]byte{it.Data}, first, it.Sinks, keys, now, d.s.opt.DedupWindow).Scan(&dup)
	}
	if err != nil {
		return fmt.Errorf("replay dead letter %s: %w", l.ID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("replay dead letter %s: %w", l.ID, err)
	}
	return nil
}
