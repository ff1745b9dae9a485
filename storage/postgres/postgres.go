// Package postgres is the PostgreSQL storage engine: any number of `hubrelay serve` replicas
// share one database, which holds the dedup keys, the delivery queue, the retry schedule and
// the dead letters. It implements relay.Store and passes relay/storetest.
//
// A POST is acknowledged after the call of the accept_batch function (schema.go) that holds it
// commits: its keys, items and deliveries in one transaction, shared with the requests that
// arrived meanwhile (accept.go's group commit). Keys are locked with advisory locks, so
// two replicas receiving the same change at once accept it once. Dedup keys are partitioned by
// UTC day; expiry drops whole days once they are past the window, never rewriting a table.
//
// Deliveries are claimed by the replica that reads them (Ready): a claim holds while that
// replica's heartbeat (every lease/3) is younger than the lease, so a replica that dies loses
// its claims after the lease and another delivers. Each sink's queue is read by one replica at
// a time (sink_owners, held the same way), which keeps acceptance order per sink.
//
// Open needs the database; Start (replica.go), for a server, comes up without it and keeps
// trying: until the store is up its queue reads as empty and Accept and Check fail.
package postgres

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hubrelay/hubrelay/relay"
)

// Defaults of Options.
const (
	DefaultSchema       = "hubrelay"
	DefaultMaxConns     = 16
	DefaultLease        = 30 * time.Second
	DefaultPollInterval = 500 * time.Millisecond
	DefaultDedupWindow  = 168 * time.Hour
	// DefaultAcceptTimeout bounds one Accept, so an unreachable database gives 503 quickly.
	DefaultAcceptTimeout = 10 * time.Second
	// DefaultSinkGrace is how long no replica must have run a sink before a replica that lacks
	// it dead-letters its deliveries (sinks.go).
	DefaultSinkGrace = 10 * time.Minute
)

// maxPromote bounds the deliveries one Promote call moves.
const maxPromote = 1000

// Options configures Open.
type Options struct {
	// URL is a libpq connection URL or key=value string. It may hold a password: it is never
	// logged, and errors never repeat it.
	URL string
	// Schema holds hubrelay's tables; default DefaultSchema. Several relays (or tests) can
	// share a database with different schemas.
	Schema string
	// MaxConns is the pool size; default DefaultMaxConns.
	MaxConns int
	// Lease is how long a replica's claims outlive its last heartbeat; default DefaultLease.
	Lease time.Duration
	// PollInterval is how often dispatchers re-read their queue for deliveries accepted by
	// other replicas; default DefaultPollInterval.
	PollInterval time.Duration
	// DedupWindow is how long an accepted key keeps repeats out; default DefaultDedupWindow.
	DedupWindow time.Duration
	// AcceptTimeout bounds one Accept; default DefaultAcceptTimeout.
	AcceptTimeout time.Duration
	// SinkGrace is how long a sink must have been run by no replica before one that lacks it
	// dead-letters the sink's deliveries as not configured; default DefaultSinkGrace.
	SinkGrace time.Duration
	// Name names this replica in the replicas table (default: the host name and pid).
	Name string
	// Logger receives the engine's logs.
	Logger *slog.Logger
}

// Store is a PostgreSQL storage engine. It is safe for concurrent use.
type Store struct {
	// pool commits synchronously: accepts, dead letters, heartbeats, DoneSync, everything
	// whose loss in a crash of the database server would lose or reorder something. book
	// commits with synchronous_commit off: the delivery bookkeeping whose loss in such a crash
	// only means a delivery made again (see bookkeeping in README's Postgres section): claims
	// (Ready), Done, Reschedule and Promote.
	pool, book *pgxpool.Pool
	opt        Options
	log        *slog.Logger
	lock       int64 // the schema's advisory lock key (migrations, maintenance)
	// host and database are where the store connects, for the log (never the URL).
	host, database string

	me atomic.Int64 // this replica's id in replicas; a new one after a lapsed heartbeat

	partMu sync.Mutex
	parts  map[string]bool // dedup partitions known to exist, by name

	obs atomic.Pointer[Observer]

	commits committer // Accept's group commit (accept.go)

	// sinks are the sinks this replica runs (SetSinks); nil until told, when every sink counts
	// as run here. started is when the store was made, for the grace of unconfigured sinks.
	sinks   atomic.Pointer[map[string]bool]
	started time.Time

	// up is closed once the schema is migrated and this replica registered; until then the
	// queue reads as empty and Accept and Check fail with ErrNotUp (see Start).
	up     chan struct{}
	isUp   atomic.Bool
	fatal  chan error // Start's background set-up met an error retrying cannot cure
	upOnce sync.Once

	stop chan struct{}
	bg   sync.WaitGroup // the set-up retry loop and the heartbeat
	once sync.Once
}

var _ relay.Store = (*Store)(nil)

// Observer receives database-side figures, for metrics. Its functions must be cheap and safe
// for concurrent use; nil ones are skipped.
type Observer struct {
	// Commit is called after each Accept that reached the database, with its latency.
	Commit func(d time.Duration, err error)
	// Claimed is called for each delivery Ready hands out, with the time since it was
	// accepted or became due (claim lag).
	Claimed func(sink string, lag time.Duration)
}

// SetObserver sets the receiver of database-side figures.
func (s *Store) SetObserver(o *Observer) { s.obs.Store(o) }

// Pool returns the synchronous connection pool (the one accepts and dead letters use).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// PoolStat is the connections of both of the store's pools, summed.
type PoolStat struct {
	Acquired, Idle, Total, Max int32
}

// PoolStat returns the connections of both pools (synchronous and bookkeeping), for metrics:
// together they hold Options.MaxConns.
func (s *Store) PoolStat() PoolStat {
	var out PoolStat
	for _, p := range []*pgxpool.Pool{s.pool, s.book} {
		st := p.Stat()
		out.Acquired += st.AcquiredConns()
		out.Idle += st.IdleConns()
		out.Total += st.TotalConns()
		out.Max += st.MaxConns()
	}
	return out
}

// PollInterval implements relay.Poller.
func (s *Store) PollInterval() time.Duration { return s.opt.PollInterval }

// Replica returns this replica's current id (0 until the store is up).
func (s *Store) Replica() int64 { return s.me.Load() }

// keyHash is what the dedup table stores of a key: 16 bytes of its SHA-256.
func keyHash(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:16]
}

// partName is the dedup partition of day t (UTC).
func partName(t time.Time) string { return "dedup_p" + t.UTC().Format("20060102") }

// ensurePartition creates the dedup partition of now's UTC day when it does not exist yet.
func (s *Store) ensurePartition(ctx context.Context, now time.Time) error {
	name := partName(now)
	s.partMu.Lock()
	ok := s.parts[name]
	s.partMu.Unlock()
	if ok {
		return nil
	}
	day := now.UTC().Truncate(24 * time.Hour)
	q := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF dedup FOR VALUES FROM ('%s') TO ('%s')",
		pgx.Identifier{s.opt.Schema, name}.Sanitize(), day.Format("2006-01-02"), day.Add(24*time.Hour).Format("2006-01-02"))
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create dedup partition %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	// Replicas creating the same day at once would collide in the catalog: serialize them.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.lock); err != nil {
		return fmt.Errorf("create dedup partition %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, q); err != nil {
		return fmt.Errorf("create dedup partition %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create dedup partition %s: %w", name, err)
	}
	s.partMu.Lock()
	s.parts[name] = true
	s.partMu.Unlock()
	return nil
}

// Done implements relay.Queue. Its commit is asynchronous (book): a crash of the database
// server may bring the deliveries back, and they are delivered again.
func (s *Store) Done(sink string, seqs ...uint64) error { return s.done(s.book, sink, seqs) }

// done deletes the deliveries seqs of sink through pool.
func (s *Store) done(pool *pgxpool.Pool, sink string, seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	ids := make([]int64, len(seqs))
	for i, q := range seqs {
		ids[i] = int64(q)
	}
	if _, err := pool.Exec(ctx, "DELETE FROM deliveries WHERE sink = $1 AND seq = ANY($2)", sink, ids); err != nil {
		return fmt.Errorf("done %s: %w", sink, err)
	}
	return nil
}

// Reschedule implements relay.Queue. The claim is released: whichever replica owns the sink
// when the delivery is due takes it.
func (s *Store) Reschedule(sink string, seq uint64, at time.Time, attempt int, history []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	tag, err := s.book.Exec(ctx, `UPDATE deliveries SET state = 1, due_at = $3, attempt = $4, history = $5, owner = NULL
		WHERE sink = $1 AND seq = $2`, sink, int64(seq), at, attempt, history)
	if err != nil {
		return fmt.Errorf("reschedule %s %d: %w", sink, seq, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("reschedule %s %d: %w", sink, seq, relay.ErrNotFound)
	}
	return nil
}

// RescheduleBatch implements relay.Queue: one UPDATE over the batch, so a failing sink costs
// one round trip and one commit per batch of failures.
func (s *Store) RescheduleBatch(sink string, rs []relay.Retry) error {
	if len(rs) == 0 {
		return nil
	}
	seqs := make([]int64, len(rs))
	dues := make([]time.Time, len(rs))
	attempts := make([]int32, len(rs))
	histories := make([][]byte, len(rs))
	for i, r := range rs {
		if r.Attempt < 0 {
			return fmt.Errorf("reschedule %s %d: negative attempt %d", sink, r.Seq, r.Attempt)
		}
		seqs[i], dues[i], attempts[i], histories[i] = int64(r.Seq), r.At, int32(r.Attempt), r.History
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	_, err := s.book.Exec(ctx, `UPDATE deliveries d
		SET state = 1, due_at = u.due_at, attempt = u.attempt, history = u.history, owner = NULL
		FROM unnest($2::bigint[], $3::timestamptz[], $4::integer[], $5::bytea[]) AS u(seq, due_at, attempt, history)
		WHERE d.sink = $1 AND d.seq = u.seq`, sink, seqs, dues, attempts, histories)
	if err != nil {
		return fmt.Errorf("reschedule %s: %d deliveries: %w", sink, len(rs), err)
	}
	return nil
}

// Promote implements relay.Queue (none until the store is up).
func (s *Store) Promote(now time.Time) (map[string]uint64, error) {
	if !s.isUp.Load() {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	rows, err := s.book.Query(ctx, `
WITH p AS (
	SELECT sink, seq FROM deliveries WHERE state = 1 AND due_at <= $1
	ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d SET state = 0, owner = NULL FROM p WHERE d.sink = p.sink AND d.seq = p.seq
RETURNING d.sink, d.seq`, now, maxPromote)
	if err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	out := map[string]uint64{}
	for rows.Next() {
		var sink string
		var seq int64
		if err := rows.Scan(&sink, &seq); err != nil {
			rows.Close()
			return nil, fmt.Errorf("promote: %w", err)
		}
		if cur, ok := out[sink]; !ok || uint64(seq) < cur {
			out[sink] = uint64(seq)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	return out, nil
}

// NextScheduled implements relay.Queue.
func (s *Store) NextScheduled() (time.Time, bool, error) {
	if !s.isUp.Load() {
		return time.Time{}, false, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	var t *time.Time
	if err := s.pool.QueryRow(ctx, "SELECT min(due_at) FROM deliveries WHERE state = 1").Scan(&t); err != nil {
		return time.Time{}, false, fmt.Errorf("next scheduled: %w", err)
	}
	if t == nil {
		return time.Time{}, false, nil
	}
	return *t, true, nil
}

// Sinks implements relay.Queue with a skip scan of the primary key: one index probe per sink.
// Until the store is up (Start) it reports none; the caller asks again once Up is closed.
func (s *Store) Sinks() ([]string, error) {
	if !s.isUp.Load() {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
WITH RECURSIVE s AS (
	(SELECT sink FROM deliveries ORDER BY sink LIMIT 1)
	UNION ALL
	SELECT (SELECT d.sink FROM deliveries d WHERE d.sink > s.sink ORDER BY d.sink LIMIT 1) FROM s WHERE s.sink IS NOT NULL
)
SELECT sink FROM s WHERE sink IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("sinks: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("sinks: %w", err)
	}
	return names, nil
}

// Stats implements relay.Store. It counts the queue (one scan); metrics call it per scrape.
func (s *Store) Stats() (map[string]relay.SinkStats, error) {
	if !s.isUp.Load() {
		return nil, fmt.Errorf("stats: %w", ErrNotUp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT sink, count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1), min(first_at),
		min(first_at) FILTER (WHERE state = 0), min(first_at) FILTER (WHERE state = 1), min(due_at) FILTER (WHERE state = 1)
		FROM deliveries GROUP BY sink`)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	defer rows.Close()
	out := map[string]relay.SinkStats{}
	for rows.Next() {
		var sink string
		var r, sc int64
		var oldest time.Time
		var oldestReady, oldestSched, nextDue *time.Time
		if err := rows.Scan(&sink, &r, &sc, &oldest, &oldestReady, &oldestSched, &nextDue); err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
		st := relay.SinkStats{Ready: int(r), Scheduled: int(sc), Oldest: oldest}
		for _, f := range []struct{ dst, src *time.Time }{{&st.OldestReady, oldestReady}, {&st.OldestScheduled, oldestSched}, {&st.NextDue, nextDue}} {
			if f.src != nil {
				*f.dst = *f.src
			}
		}
		out[sink] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	return out, nil
}

// exactBelow is the size under which DedupLen counts rows instead of reading the planner's
// estimate.
const exactBelow = 100_000

// DedupLen implements relay.Store: exact for small tables, the planner's estimate for large ones.
func (s *Store) DedupLen() (int, error) {
	if !s.isUp.Load() {
		return 0, fmt.Errorf("dedup len: %w", ErrNotUp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	var est float64
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM pg_inherits i
		JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'dedup'::regclass`).Scan(&est); err != nil {
		return 0, fmt.Errorf("dedup len: %w", err)
	}
	if est >= exactBelow {
		return int(est), nil
	}
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM dedup").Scan(&n); err != nil {
		return 0, fmt.Errorf("dedup len: %w", err)
	}
	return int(n), nil
}

// ExpireDedup implements relay.Store: it drops the day partitions wholly past the window and
// returns how many keys they held. Keys in a partition partly past the window stay until the
// whole day is; Accept ignores them (it compares their time).
func (s *Store) ExpireDedup(now time.Time, max int) (int, error) {
	if max <= 0 || !s.isUp.Load() {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cutoff := now.Add(-s.opt.DedupWindow).UTC()
	rows, err := s.pool.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'dedup'::regclass ORDER BY c.relname`)
	if err != nil {
		return 0, fmt.Errorf("expire dedup: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("expire dedup: %w", err)
	}
	total := 0
	for _, name := range names {
		day, err := time.Parse("20060102", strings.TrimPrefix(name, "dedup_p"))
		if err != nil || day.Add(24*time.Hour).After(cutoff) {
			continue
		}
		n, err := s.dropPartition(ctx, name)
		if err != nil {
			return total, fmt.Errorf("expire dedup: %w", err)
		}
		total += n
		if total >= max {
			break
		}
	}
	return total, nil
}

func (s *Store) dropPartition(ctx context.Context, name string) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.lock); err != nil {
		return 0, err
	}
	if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
		return 0, err
	}
	ident := pgx.Identifier{s.opt.Schema, name}.Sanitize()
	var n int64
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&n); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "42P01" { // dropped by another replica meanwhile
			return 0, nil
		}
		return 0, err
	}
	if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+ident); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	s.partMu.Lock()
	delete(s.parts, name)
	s.partMu.Unlock()
	s.log.Info("dedup partition dropped", "partition", name, "keys", n)
	return int(n), nil
}
