package postgres_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// Two replicas offered the same changes at the same moment accept each change once.
func TestReplicas_SameChangeAcceptedOnce(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	a := open(t, url, schema, postgres.Options{})
	defer a.Close()
	b := open(t, url, schema, postgres.Options{})
	defer b.Close()
	const rounds = 200
	now := time.Now()
	var wg sync.WaitGroup
	accepted := make([]int, rounds)
	var mu sync.Mutex
	for _, s := range []*postgres.Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				it := relay.Item{Key: fmt.Sprint("wamid.", i), Data: []byte(fmt.Sprint(i)), Sinks: []string{"orders"}}
				dup, err := s.Accept(context.Background(), []relay.Item{it}, now)
				if err != nil {
					t.Errorf("Accept: %v", err)
					return
				}
				if !dup[0] {
					mu.Lock()
					accepted[i]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for i, n := range accepted {
		if n != 1 {
			t.Errorf("change %d accepted %d times", i, n)
		}
	}
	st, err := a.Stats()
	if err != nil || st["orders"].Ready != rounds {
		t.Fatalf("Stats = %+v, %v; want %d ready", st, err, rounds)
	}
}

// A sink's queue is read by one replica at a time; a replica that closes hands it over at
// once, one that dies after its lease.
func TestReplicas_ClaimsAndLease(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	const lease = 2 * time.Second
	a := open(t, url, schema, postgres.Options{Lease: lease})
	b := open(t, url, schema, postgres.Options{Lease: lease})
	defer b.Close()
	c := open(t, url, schema, postgres.Options{Lease: lease})
	defer c.Close()
	var items []relay.Item
	for i := range 10 {
		items = append(items, relay.Item{Key: fmt.Sprint("k", i), Data: []byte{byte(i)}, Sinks: []string{"orders"}})
	}
	if _, err := a.Accept(context.Background(), items, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, err := a.Ready("orders", 0, 4)
	if err != nil || len(got) != 4 {
		t.Fatalf("a.Ready = %d, %v; want 4", len(got), err)
	}
	if other, err := b.Ready("orders", 0, 100); err != nil || len(other) != 0 {
		t.Fatalf("b.Ready while a owns the sink = %d deliveries, %v; want none", len(other), err)
	}
	// a dies holding claims: b and c get nothing until the lease lapses, then one of them
	// takes the sink and every delivery, the claimed ones included.
	a.Kill()
	if other, _ := b.Ready("orders", 0, 100); len(other) != 0 {
		t.Fatalf("b.Ready right after a died = %d deliveries; want none before the lease lapses", len(other))
	}
	deadline := time.Now().Add(30 * time.Second)
	var taken []relay.Delivery
	var taker, idle *postgres.Store
	for time.Now().Before(deadline) {
		if ds, err := b.Ready("orders", 0, 100); err == nil && len(ds) > 0 {
			taken, taker, idle = ds, b, c
			break
		}
		if ds, err := c.Ready("orders", 0, 100); err == nil && len(ds) > 0 {
			taken, taker, idle = ds, c, b
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(taken) != 10 {
		t.Fatalf("after a's lease lapsed, %d deliveries were taken over; want 10", len(taken))
	}
	if ds, _ := idle.Ready("orders", 0, 100); len(ds) != 0 {
		t.Fatalf("the other live replica got %d deliveries of a sink owned by a live replica", len(ds))
	}
	// A closing replica hands its sink over at once.
	if err := taker.Close(); err != nil {
		t.Fatal(err)
	}
	if ds, err := idle.Ready("orders", 0, 100); err != nil || len(ds) != 10 {
		t.Fatalf("after the owner closed, Ready = %d, %v; want 10", len(ds), err)
	}
}

// Replicas starting at once migrate once; an older binary refuses a newer schema.
func TestSchema_MigrateOnceRefuseNewer(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	var wg sync.WaitGroup
	stores := make([]*postgres.Store, 4)
	errs := make([]error, 4)
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			stores[i], errs[i] = postgres.Open(ctx, postgres.Options{URL: url, Schema: schema, MaxConns: 2})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		stores[i].Close()
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, "SELECT version FROM "+pgx.Identifier{schema, "schema_version"}.Sanitize()).Scan(&v); err != nil || v != postgres.SchemaVersion {
		t.Fatalf("schema version = %d, %v; want %d", v, err, postgres.SchemaVersion)
	}
	if _, err := conn.Exec(ctx, "UPDATE "+pgx.Identifier{schema, "schema_version"}.Sanitize()+" SET version = $1", postgres.SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	_, err = postgres.Open(ctx, postgres.Options{URL: url, Schema: schema, MaxConns: 2})
	if !errors.Is(err, postgres.ErrSchemaTooNew) {
		t.Fatalf("Open of a newer schema = %v, want ErrSchemaTooNew", err)
	}
	// Start comes up without an unreachable database, but not past a newer schema.
	if s, err := postgres.Start(ctx, postgres.Options{URL: url, Schema: schema, MaxConns: 2}); !errors.Is(err, postgres.ErrSchemaTooNew) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Start on a newer schema = %v, want ErrSchemaTooNew", err)
	}
}

// A store from Start whose database cannot be reached is not up: it claims nothing, its
// accepts and checks fail with ErrNotUp, and it closes at once.
func TestStart_DatabaseUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now: connections are refused
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := postgres.Start(ctx, postgres.Options{URL: "postgres://u:s3cretpw@" + addr + "/db?sslmode=disable", MaxConns: 2})
	if err != nil {
		t.Fatalf("Start with the database down: %v", err)
	}
	select {
	case <-s.Up():
		t.Fatal("Up is closed, but the database was never reached")
	default:
	}
	_, err = s.Accept(ctx, []relay.Item{{Key: "k", Data: []byte("x"), Sinks: []string{"orders"}}}, time.Now())
	if !errors.Is(err, postgres.ErrNotUp) {
		t.Errorf("Accept = %v, want ErrNotUp", err)
	}
	if err := s.Check(ctx); !errors.Is(err, postgres.ErrNotUp) || containsPw(err.Error()) {
		t.Errorf("Check = %v, want ErrNotUp (and no password)", err)
	}
	if ds, err := s.Ready("orders", 0, 10); len(ds) != 0 || err != nil {
		t.Errorf("Ready = %v, %v; want none", ds, err)
	}
	if names, err := s.Sinks(); len(names) != 0 || err != nil {
		t.Errorf("Sinks = %v, %v; want none", names, err)
	}
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not stop the set-up retries")
	}
}

// Errors never repeat the password of the URL.
func TestParseURL_Redacts(t *testing.T) {
	for _, u := range []string{
		"postgres://u:s3cretpw@127.0.0.1:notaport/db",
		"host=127.0.0.1 password=s3cretpw port=notaport",
	} {
		_, err := postgres.ParseURL(u)
		if err == nil {
			t.Fatalf("ParseURL(%q) succeeded", u)
		}
		if msg := err.Error(); containsPw(msg) {
			t.Errorf("error holds the password: %s", msg)
		}
	}
}

func containsPw(s string) bool {
	for i := 0; i+8 <= len(s); i++ {
		if s[i:i+8] == "s3cretpw" {
			return true
		}
	}
	return false
}

// accept's dedup lookups are index probes even under the generic plan plpgsql caches after a
// few calls: a plan that scans the dedup table costs a POST time in proportion to the window's
// keys. The counters of the transaction itself (pg_stat_xact_user_tables) show the scans.
func TestSchema_AcceptProbesTheIndex(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	s := open(t, url, schema, postgres.Options{})
	defer s.Close()
	now := time.Now().UTC().Truncate(time.Microsecond)
	if _, err := s.Accept(context.Background(), []relay.Item{{Key: "first", Data: []byte("d")}}, now); err != nil {
		t.Fatal(err) // creates the schema and today's partition
	}
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = schema
	cfg.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	part := "dedup_p" + now.Format("20060102")
	if _, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s SELECT decode(md5('pre' || i), 'hex'), $1, $2::date
		FROM generate_series(1, 5000) i`, pgx.Identifier{part}.Sanitize()), now, now.Format("2006-01-02")); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "ANALYZE dedup"); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for round := range 3 { // the first calls plan; then the cached generic plan runs
		keys, datas := make([][]byte, n), make([][]byte, n)
		first := make([]int32, n+1)
		for i := range keys {
			h := sha256.Sum256(fmt.Appendf(nil, "k%d-%d", round, i))
			keys[i], datas[i], first[i] = h[:16], []byte("d"), 1 // no sinks
		}
		first[n] = 1
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var dup []bool
		if err := tx.QueryRow(ctx, "SELECT accept($1, $2, $3, $4, NULL, $5, $6)", keys, datas, first,
			make([]string, 0), now, 168*time.Hour).Scan(&dup); err != nil {
			t.Fatal(err)
		}
		var seq, idx int64
		var ins int64
		if err := tx.QueryRow(ctx, "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0), n_tup_ins FROM pg_stat_xact_user_tables WHERE relname = $1 AND schemaname = $2",
			part, schema).Scan(&seq, &idx, &ins); err != nil {
			t.Fatal(err)
		}
		tx.Rollback(ctx)
		if seq != 0 || idx < n {
			t.Fatalf("round %d: accept of %d keys scanned the dedup partition %d times and probed its index %d times (%d inserted); want 0 scans, %d probes",
				round, n, seq, idx, ins, n)
		}
		for i, d := range dup {
			if d {
				t.Fatalf("round %d: key %d reported a repeat", round, i)
			}
		}
	}
}
