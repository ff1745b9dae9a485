package postgres_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

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
		if err := tx.QueryRow(ctx, "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = $1",
			part).Scan(&seq, &idx); err != nil {
			t.Fatal(err)
		}
		tx.Rollback(ctx)
		if seq != 0 || idx < n {
			t.Fatalf("round %d: accept of %d keys scanned the dedup partition %d times and probed its index %d times; want 0 scans, %d probes",
				round, n, seq, idx, n)
		}
		for i, d := range dup {
			if d {
				t.Fatalf("round %d: key %d reported a repeat", round, i)
			}
		}
	}
}
