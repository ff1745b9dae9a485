package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hubrelay/hubrelay/relay"
)

// This file is the store's life as a replica: connecting, migrating and registering (now, or
// in the background while the database is unreachable), the heartbeat, and closing.

// ErrNotUp is wrapped by the errors of Accept and Check while a store from Start has not yet
// reached the database (migrated the schema and registered this replica).
var ErrNotUp = errors.New("postgres storage is not up: the database has not been reached since start")

// Set-up retries of Start: the wait doubles from retryMin up to retryMax (with jitter), and
// failures are logged at most once per retryLogEvery, with the count of those left out.
const (
	retryMin      = 200 * time.Millisecond
	retryMax      = 5 * time.Second
	retryLogEvery = 30 * time.Second
	// attemptTimeout bounds one background set-up attempt (connect, migrate, register).
	attemptTimeout = time.Minute
)

// Open connects, creates or migrates the schema (under an advisory lock, so replicas starting
// at once migrate once) and registers this replica. It fails when the database cannot be
// reached; a server uses Start instead.
func Open(ctx context.Context, opt Options) (*Store, error) {
	s, err := newStore(ctx, opt)
	if err != nil {
		return nil, err
	}
	if err := s.setUp(ctx); err != nil {
		s.closePools()
		return nil, err
	}
	return s, nil
}

// Start is Open for a server that must come up while the database is down. It tries to set
// the store up once (within ctx); when that fails for a reason retrying can cure (the server is
// unreachable, refuses connections, is starting or shutting down), it returns a store that is
// not up yet and keeps trying in the background, with backoff, until Close. Until the store is
// up its queue reads as empty (nothing is claimed), and Accept and Check fail with ErrNotUp,
// so the relay answers POSTs 503 and /readyz is not ready; Up is closed when it is up. A
// schema newer than this binary (ErrSchemaTooNew) is returned at once, or, when the database
// is first reached in the background, sent on Fatal.
func Start(ctx context.Context, opt Options) (*Store, error) {
	s, err := newStore(ctx, opt)
	if err != nil {
		return nil, err
	}
	err = s.setUp(ctx)
	if err == nil {
		return s, nil
	}
	// The caller giving up (a signal) ends it; its deadline passing does not: the database
	// may answer later.
	if errors.Is(err, ErrSchemaTooNew) || errors.Is(ctx.Err(), context.Canceled) {
		s.closePools()
		return nil, err
	}
	s.log.Warn("postgres not reachable at start: serving without it (POSTs get 503, not ready) and retrying", "err", err)
	s.bg.Add(1)
	go s.retrySetUp()
	return s, nil
}

// newStore applies the defaults of opt and makes the pool, which connects on first use.
func newStore(ctx context.Context, opt Options) (*Store, error) {
	opt.Schema = cmp.Or(opt.Schema, DefaultSchema)
	opt.MaxConns = orDefault(opt.MaxConns, DefaultMaxConns)
	opt.Lease = orDefault(opt.Lease, DefaultLease)
	opt.PollInterval = orDefault(opt.PollInterval, DefaultPollInterval)
	opt.DedupWindow = orDefault(opt.DedupWindow, DefaultDedupWindow)
	opt.AcceptTimeout = orDefault(opt.AcceptTimeout, DefaultAcceptTimeout)
	opt.SinkGrace = orDefault(opt.SinkGrace, DefaultSinkGrace)
	if opt.Name == "" {
		host, _ := os.Hostname()
		opt.Name = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := ParseURL(opt.URL)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = opt.Schema
	cfg.ConnConfig.RuntimeParams["application_name"] = "hubrelay"
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	// The bookkeeping pool (claims, removals, retries, promotions) commits asynchronously, the
	// main pool synchronously; together they hold MaxConns connections.
	bookCfg := cfg.Copy()
	bookCfg.MaxConns = int32(max(1, opt.MaxConns/4))
	bookCfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	cfg.MaxConns = int32(max(1, opt.MaxConns-int(bookCfg.MaxConns)))
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to postgres: %s", redact(err.Error(), opt.URL))
	}
	book, err := pgxpool.NewWithConfig(ctx, bookCfg)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to postgres: %s", redact(err.Error(), opt.URL))
	}
	s := &Store{pool: pool, book: book, opt: opt, log: log.With("component", "postgres"), lock: lockKey(opt.Schema),
		host: cfg.ConnConfig.Host, database: cfg.ConnConfig.Database,
		parts: map[string]bool{}, started: time.Now(), up: make(chan struct{}), fatal: make(chan error, 1), stop: make(chan struct{})}
	s.commits.s, s.commits.slots = s, acceptSlotsFor(int(cfg.MaxConns))
	return s, nil
}

// closePools closes both connection pools.
func (s *Store) closePools() {
	s.book.Close()
	s.pool.Close()
}

// orDefault returns v, or def when v is not positive (an option left out).
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// setUp migrates the schema and registers this replica; the first success marks the store up
// and starts the heartbeat.
func (s *Store) setUp(ctx context.Context) error {
	if err := migrate(ctx, s.pool, s.opt.Schema); err != nil {
		return fmt.Errorf("postgres schema: %w", err)
	}
	if err := s.register(ctx); err != nil {
		return err
	}
	if err := s.advertise(ctx); err != nil {
		return err
	}
	s.upOnce.Do(func() {
		s.isUp.Store(true)
		close(s.up)
		s.bg.Add(1)
		go s.heartbeat()
	})
	s.log.Info("postgres storage open", "host", s.host, "database", s.database,
		"schema", s.opt.Schema, "replica", s.me.Load(), "max_conns", s.opt.MaxConns, "lease", s.opt.Lease)
	return nil
}

// retrySetUp calls setUp until it succeeds, the store is closed, or the schema turns out to
// be newer than this binary.
func (s *Store) retrySetUp() {
	defer s.bg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
		case <-ctx.Done(): // set up: retrySetUp returned
		}
		cancel()
	}()
	sample := relay.NewLogSampler(retryLogEvery)
	wait := retryMin
	for attempt := 2; ; attempt++ {
		// Full jitter in [wait/2, wait): replicas that lost the database together do not
		// come back in lockstep.
		d := wait/2 + rand.N(wait/2)
		select {
		case <-s.stop:
			return
		case <-time.After(d):
		}
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		err := s.setUp(actx)
		acancel()
		if err == nil {
			s.log.Info("postgres reached: storage up", "attempts", attempt)
			return
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrSchemaTooNew) {
			s.log.Error("postgres reached but its schema is newer than this hubrelay", "err", err)
			s.fatal <- err
			return
		}
		wait = min(2*wait, retryMax)
		sample.Log(s.log, slog.LevelWarn, "retry", "postgres still not reachable; retrying", "err", err, "attempt", attempt, "next_in", wait)
	}
}

// Up is closed once the store is up (at once for Open, and for Start when the database
// answered at start).
func (s *Store) Up() <-chan struct{} { return s.up }

// Fatal receives the error that ended Start's background set-up for good (a schema newer
// than this binary); the store stays not up, and the process should exit with it.
func (s *Store) Fatal() <-chan error { return s.fatal }

// ParseURL parses a libpq URL or key=value string; its errors never hold the password.
func ParseURL(url string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %s", redact(err.Error(), url))
	}
	return cfg, nil
}

// redact removes the password of url from msg, whatever form the URL has.
func redact(msg, url string) string {
	if cfg, err := pgconn.ParseConfig(url); err == nil && cfg.Password != "" {
		msg = strings.ReplaceAll(msg, cfg.Password, "xxxxx")
	}
	if i := strings.Index(url, "://"); i >= 0 {
		rest := url[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if c := strings.Index(rest[:at], ":"); c >= 0 && c+1 < at {
				msg = strings.ReplaceAll(msg, rest[c+1:at], "xxxxx")
			}
		}
	}
	if i := strings.Index(url, "password="); i >= 0 {
		pw := url[i+len("password="):]
		if j := strings.IndexAny(pw, " &"); j >= 0 {
			pw = pw[:j]
		}
		if pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}

func (s *Store) register(ctx context.Context) error {
	var id int64
	if err := s.pool.QueryRow(ctx, "INSERT INTO replicas (name) VALUES ($1) RETURNING id", s.opt.Name).Scan(&id); err != nil {
		return fmt.Errorf("register replica: %w", err)
	}
	s.me.Store(id)
	return nil
}

// heartbeat keeps this replica's claims alive, and expires old replicas' rows.
func (s *Store) heartbeat() {
	defer s.bg.Done()
	t := time.NewTicker(s.opt.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opt.Lease/3)
		if err := s.beat(ctx); err != nil {
			s.log.Warn("replica heartbeat", "err", err)
		} else if err := s.advertise(ctx); err != nil {
			s.log.Warn("renew the sinks this replica runs", "err", err)
		}
		cancel()
	}
}

// beat renews this replica's heartbeat. A heartbeat that had lapsed (other replicas may have
// taken the claims over) is not renewed: the replica registers again under a new id.
func (s *Store) beat(ctx context.Context) error {
	tag, err := s.pool.Exec(ctx, "UPDATE replicas SET heartbeat = now() WHERE id = $1 AND heartbeat > now() - $2::interval",
		s.me.Load(), s.opt.Lease)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		old := s.me.Load()
		if err := s.register(ctx); err != nil {
			return err
		}
		s.log.Warn("replica lease had lapsed; registered again", "old_replica", old, "replica", s.me.Load())
	}
	// Rows of replicas dead for long are noise; their claims are void already.
	_, err = s.pool.Exec(ctx, "DELETE FROM replicas WHERE heartbeat < now() - $1::interval", 10*s.opt.Lease)
	return err
}

// Close stops the heartbeat (and Start's set-up retries), releases this replica's claims (its
// row goes, so other replicas take its sinks at once) and closes the pool.
func (s *Store) Close() error {
	s.once.Do(func() {
		close(s.stop)
		s.bg.Wait()
		if s.isUp.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := s.pool.Exec(ctx, "DELETE FROM replicas WHERE id = $1", s.me.Load()); err != nil {
				s.log.Warn("release replica claims", "err", err)
			}
		}
		s.closePools()
	})
	return nil
}

// Check implements relay.Store: a write that commits (this replica's heartbeat).
func (s *Store) Check(ctx context.Context) error {
	if !s.isUp.Load() {
		return fmt.Errorf("check postgres: %w", ErrNotUp)
	}
	if err := s.beat(ctx); err != nil {
		return fmt.Errorf("check postgres: %w", err)
	}
	return nil
}
