package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
	"github.com/hubrelay/hubrelay/storage/postgres"
)

// letterStore is what the relay and `hubrelay deadletter` need of dead letters: the
// dead-letter directory (embedded engine) or the database (Postgres engine).
type letterStore interface {
	Write(l *deadletter.Letter) error
	List(f deadletter.Filter) ([]*deadletter.Letter, error)
	Get(id string) (*deadletter.Letter, error)
	Remove(id string) error
	Count(sink string) (int, error)
}

// storage is the storage engine the config chose, with its dead letters.
type storage struct {
	store   relay.Store
	letters letterStore
	// dir is the dead-letter directory with its replay/ folder (embedded engine only).
	dir *deadletter.Dir
	// pg is the Postgres engine, nil for the embedded one.
	pg *postgres.Store
	// boundMemory and checkMemory keep mapped spool pages from piling up in resident memory
	// (spool.BoundMemory, spool.CheckMemory; embedded engine only).
	boundMemory func(above int64) error
	checkMemory func() error
	close       func() error
	// where says where the data lives, for the start-up log line (never the URL).
	where string
}

// applySinks makes the engine run cfgs and the built-in sinks. A Postgres store is told the
// set first, so that it hands this replica deliveries of those sinks only, and those of
// another sink only once no replica has run it for storage.postgres.sink_grace.
func (s *server) applySinks(cfgs []relay.SinkConfig) error {
	all := withRuleErrors(cfgs)
	if pg := s.storage.pg; pg != nil {
		names := make([]string, len(all))
		for i, c := range all {
			names[i] = c.Sink.Name()
		}
		if err := pg.SetSinks(names); err != nil {
			s.log.Warn("record this replica's sinks in the database (the heartbeat tries again)", "err", err)
		}
	}
	if err := s.engine.SetSinks(all); err != nil {
		return err
	}
	s.sinkCfgs = cfgs
	return nil
}

// pending returns what serve waits for besides requests and signals: up is closed when a
// Postgres store that started without its database reaches it (serve then applies the sinks
// again, to find deliveries of sinks it does not run), fatal receives the error that stops it
// for good. Both are nil when there is nothing to wait for.
func (st *storage) pending() (up <-chan struct{}, fatal <-chan error) {
	if st.pg == nil {
		return nil, nil
	}
	select {
	case <-st.pg.Up():
		return nil, st.pg.Fatal()
	default:
		return st.pg.Up(), st.pg.Fatal()
	}
}

// openStorage opens the engine of cfg.Storage: Postgres when storage.postgres is set, else
// the embedded spool in storage.dir.
func openStorage(ctx context.Context, cfg *config.Config, log *slog.Logger) (*storage, error) {
	if p := cfg.Storage.Postgres; p != nil {
		pg, err := openPostgres(ctx, cfg, log, postgres.Start)
		if err != nil {
			return nil, err
		}
		return &storage{store: pg, letters: pg.DeadLetters(), pg: pg, close: pg.Close,
			boundMemory: func(int64) error { return nil }, checkMemory: func() error { return nil }, where: "postgres schema " + p.Schema}, nil
	}
	spoolPath := filepath.Join(cfg.Storage.Dir, spoolFile)
	sp, err := embedded.Open(spoolPath, spool.Options{
		MaxBatchDelay: cfg.Storage.MaxBatchDelay,
		DedupWindow:   cfg.Storage.DedupWindow,
		Logger:        log,
	})
	if errors.Is(err, spool.ErrDamaged) {
		return nil, fmt.Errorf("%w; %s (hubrelay spool recover -config FILE)", err, spool.RecoverHint)
	}
	if err != nil {
		return nil, err // it says "open spool PATH: ..."
	}
	dl, err := deadletter.Open(cfg.DeadLetter.Dir)
	if err != nil {
		sp.Close()
		return nil, err // it says "open dead-letter dir: ..."
	}
	return &storage{store: sp, letters: dl, dir: dl, boundMemory: sp.BoundMemory, checkMemory: sp.CheckMemory, close: sp.Close, where: spoolPath}, nil
}

// openPostgres opens the Postgres engine of cfg with open: postgres.Open, which fails when the
// database is unreachable (the deadletter commands), or postgres.Start, which comes up without
// it and keeps trying (serve).
func openPostgres(ctx context.Context, cfg *config.Config, log *slog.Logger,
	open func(context.Context, postgres.Options) (*postgres.Store, error)) (*postgres.Store, error) {
	p := cfg.Storage.Postgres
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pg, err := open(ctx, postgres.Options{
		URL:          p.URL,
		Schema:       p.Schema,
		MaxConns:     p.MaxConns,
		Lease:        p.Lease,
		PollInterval: p.PollInterval,
		DedupWindow:  cfg.Storage.DedupWindow,
		SinkGrace:    p.SinkGrace,
		Logger:       log,
	})
	if err != nil {
		return nil, fmt.Errorf("open postgres storage: %w", err)
	}
	return pg, nil
}

// registerPostgresMetrics adds the database-side figures: commit latency of accepts, pool
// use, and claim lag (from acceptance, or from a retry's due time, to a replica claiming it).
func registerPostgresMetrics(reg prometheus.Registerer, pg *postgres.Store) {
	commit := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hubrelay_postgres_commit_seconds",
		Help:    "Latency of one accept transaction (the keys, changes and deliveries of the requests it group-commits), by outcome.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"outcome"})
	lag := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hubrelay_postgres_claim_lag_seconds",
		Help:    "Time from a delivery becoming ready (accepted, or its retry due) to a replica claiming it, by sink.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
	}, []string{"sink"})
	stat := func(f func(s *pgxStat) float64) func() float64 {
		return func() float64 {
			st := pg.PoolStat()
			return f(&pgxStat{st.Acquired, st.Idle, st.Total, st.Max})
		}
	}
	reg.MustRegister(commit, lag,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hubrelay_postgres_pool_acquired_connections",
			Help: "Connections of both pools in use now."}, stat(func(s *pgxStat) float64 { return float64(s.acquired) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hubrelay_postgres_pool_idle_connections",
			Help: "Connections of both pools open and idle."}, stat(func(s *pgxStat) float64 { return float64(s.idle) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hubrelay_postgres_pool_max_connections",
			Help: "The size of both pools, synchronous and bookkeeping (storage.postgres.max_conns)."}, stat(func(s *pgxStat) float64 { return float64(s.max) })),
	)
	pg.SetObserver(&postgres.Observer{
		Commit: func(d time.Duration, err error) {
			o := "ok"
			if err != nil {
				o = "error"
			}
			commit.WithLabelValues(o).Observe(d.Seconds())
		},
		Claimed: func(sink string, d time.Duration) { lag.WithLabelValues(sink).Observe(max(d, 0).Seconds()) },
	})
}

type pgxStat struct{ acquired, idle, total, max int32 }
