package postgres_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// locker holds advisory locks on a connection of its own, so that the Accept calls taking
// them wait in the database: the test decides when their batches may go on. Advisory locks
// belong to the whole database, not to a schema, so the keys a locker holds are its test's
// own (key names them): two tests running in parallel never wait for each other's locks.
type locker struct {
	t    *testing.T
	conn *pgx.Conn
}

// key is the item key, unique to the test, whose lock lock(k) holds.
func (l *locker) key(k string) string { return l.t.Name() + "/" + k }

func newLocker(t *testing.T, url string) *locker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &locker{t: t, conn: conn}
}

func (l *locker) exec(q string, args ...any) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := l.conn.Exec(ctx, q, args...); err != nil {
		l.t.Fatalf("%s: %v", q, err)
	}
}

func (l *locker) lock(k string)   { l.exec("SELECT pg_advisory_lock($1)", postgres.LockOf(l.key(k))) }
func (l *locker) unlock(k string) { l.exec("SELECT pg_advisory_unlock($1)", postgres.LockOf(l.key(k))) }

// waiters returns the backends waiting for the lock of key.
func (l *locker) waiters(key string) []int32 {
	l.t.Helper()
	k := postgres.LockOf(l.key(key))
	rows, err := l.conn.Query(context.Background(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
		AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1`, k)
	if err != nil {
		l.t.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		l.t.Fatal(err)
	}
	return pids
}

type acceptResult struct {
	dup []bool
	err error
}

// acceptAsync runs Accept in a goroutine.
func acceptAsync(s *postgres.Store, items []relay.Item, now time.Time) <-chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		dup, err := s.Accept(context.Background(), items, now)
		ch <- acceptResult{dup, err}
	}()
	return ch
}

// fillSlots starts one Accept of key per slot, each waiting for the lock l holds on key, so
// that every later call queues.
func fillSlots(t *testing.T, s *postgres.Store, l *locker, key string, now time.Time) []<-chan acceptResult {
	t.Helper()
	var out []<-chan acceptResult
	for i := range postgres.AcceptSlots {
		out = append(out, acceptAsync(s, []relay.Item{{Key: l.key(key), Data: []byte(key), Sinks: []string{"orders"}}}, now))
		waitUntil(t, fmt.Sprintf("%d batches waiting for the lock", i+1), func() bool { return len(l.waiters(key)) == i+1 })
	}
	return out
}

func openCounted(t *testing.T, url, schema string) (*postgres.Store, *atomic.Int64) {
	s := open(t, url, schema, postgres.Options{MaxConns: 12})
	t.Cleanup(func() { s.Close() })
	var commits atomic.Int64
	s.SetObserver(&postgres.Observer{Commit: func(time.Duration, error) { commits.Add(1) }})
	return s, &commits
}

// Accept calls arriving while every slot is busy commit together, one transaction for all
// of them; dedup across the requests of a batch is exact (a key offered by two requests is
// new for one), and each caller gets its own flags.
func TestAccept_GroupCommit(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	s, commits := openCounted(t, url, pgtest.Schema(t, url))
	now := time.Now()
	accept(t, s, now, relay.Item{Key: "warm", Data: []byte("warm"), Sinks: []string{"orders"}})
	l := newLocker(t, url)
	l.lock("blocker")
	blocked := fillSlots(t, s, l, "blocker", now)
	const n = 20 // callers 2j and 2j+1 both offer key dup-j, and each its own key
	queued := make([]<-chan acceptResult, n)
	for i := range n {
		queued[i] = acceptAsync(s, []relay.Item{
			{Key: fmt.Sprint("own-", i), Data: []byte(fmt.Sprint("own-", i)), Sinks: []string{"orders"}},
			{Key: fmt.Sprint("dup-", i/2), Data: []byte(fmt.Sprint("dup-", i/2)), Sinks: []string{"orders", "audit"}},
		}, now)
	}
	waitUntil(t, "every caller queued", func() bool { return s.Queued() == n })
	before := commits.Load()
	l.unlock("blocker")

	newBlockers := 0
	for _, ch := range blocked {
		r := <-ch
		if r.err != nil {
			t.Fatalf("blocked Accept: %v", r.err)
		}
		if !r.dup[0] {
			newBlockers++
		}
	}
	if newBlockers != 1 {
		t.Errorf("key offered by %d concurrent batches accepted %d times, want once", len(blocked), newBlockers)
	}
	newDups := make([]int, n/2)
	for i, ch := range queued {
		r := <-ch
		if r.err != nil {
			t.Fatalf("queued Accept %d: %v", i, r.err)
		}
		if len(r.dup) != 2 || r.dup[0] {
			t.Fatalf("caller %d got flags %v, want [false ...]", i, r.dup)
		}
		if !r.dup[1] {
			newDups[i/2]++
		}
	}
	for j, c := range newDups {
		if c != 1 {
			t.Errorf("key dup-%d, offered by two requests of one batch, accepted %d times", j, c)
		}
	}
	// The blocked batches (one each) and one batch of every queued caller.
	if got, want := commits.Load()-before, int64(postgres.AcceptSlots+1); got != want {
		t.Errorf("%d transactions for %d blocked and %d queued callers, want %d", got, len(blocked), n, want)
	}
	if got := len(ready(t, s, "orders", 64)); got != 1+1+n+n/2 {
		t.Errorf("orders has %d deliveries, want %d", got, 1+1+n+n/2)
	}
	if got := len(ready(t, s, "audit", 64)); got != n/2 {
		t.Errorf("audit has %d deliveries, want %d", got, n/2)
	}
}

// A request the database refuses for what it holds fails alone: the other requests of its
// batch are committed, and nothing of the refused one is written.
func TestAccept_RefusedRequestFailsAlone(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	s, _ := openCounted(t, url, pgtest.Schema(t, url))
	now := time.Now()
	accept(t, s, now, relay.Item{Key: "warm", Data: []byte("warm"), Sinks: []string{"orders"}})
	l := newLocker(t, url)
	l.lock("blocker")
	blocked := fillSlots(t, s, l, "blocker", now)
	good := []<-chan acceptResult{
		acceptAsync(s, []relay.Item{{Key: "good-1", Data: []byte("good-1"), Sinks: []string{"orders"}}}, now),
		acceptAsync(s, []relay.Item{{Key: "good-2", Data: []byte("good-2"), Sinks: []string{"orders"}}}, now),
	}
	bad := acceptAsync(s, []relay.Item{{Key: "bad", Data: []byte("bad"), Sinks: []string{"or\x00ders"}}}, now)
	waitUntil(t, "every caller queued", func() bool { return s.Queued() == 3 })
	l.unlock("blocker")
	for _, ch := range blocked {
		if r := <-ch; r.err != nil {
			t.Fatalf("blocked Accept: %v", r.err)
		}
	}
	if r := <-bad; r.err == nil {
		t.Fatal("Accept of a sink name holding a NUL byte succeeded")
	}
	for i, ch := range good {
		if r := <-ch; r.err != nil || r.dup[0] {
			t.Fatalf("good Accept %d in the batch of a refused one: %v, %v", i, r.dup, r.err)
		}
	}
	if got := datasOf(ready(t, s, "orders", 64)); len(got) != 4 || !slices.Contains(got, "good-1") || !slices.Contains(got, "good-2") {
		t.Errorf("orders holds %q, want warm, blocker and the two good ones", got)
	}
	if dup := accept(t, s, now, relay.Item{Key: "bad", Data: []byte("bad"), Sinks: []string{"orders"}}); dup[0] {
		t.Error("the refused request's key was recorded")
	}
}

// A batch that fails (its connection killed while it waits) fails every caller in it, and
// nothing of any of them is written.
func TestAccept_FailedBatchFailsEveryCaller(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	s, _ := openCounted(t, url, pgtest.Schema(t, url))
	now := time.Now()
	accept(t, s, now, relay.Item{Key: "warm", Data: []byte("warm"), Sinks: []string{"orders"}})
	l := newLocker(t, url)
	l.lock("first")
	l.lock("second")
	blocked := fillSlots(t, s, l, "first", now)
	const n = 3
	queued := make([]<-chan acceptResult, n)
	for i := range n {
		queued[i] = acceptAsync(s, []relay.Item{
			{Key: fmt.Sprint("own-", i), Data: []byte("own"), Sinks: []string{"orders"}},
			{Key: l.key("second"), Data: []byte("second"), Sinks: []string{"orders"}},
		}, now)
	}
	waitUntil(t, "every caller queued", func() bool { return s.Queued() == n })
	l.unlock("first") // the blocked batches commit; the queued callers' batch waits for "second"
	for _, ch := range blocked {
		if r := <-ch; r.err != nil {
			t.Fatalf("blocked Accept: %v", r.err)
		}
	}
	waitUntil(t, "the queued callers' batch waiting", func() bool { return len(l.waiters("second")) == 1 })
	l.exec("SELECT pg_terminate_backend($1)", l.waiters("second")[0])
	for i, ch := range queued {
		if r := <-ch; r.err == nil {
			t.Errorf("caller %d of a batch whose connection was killed: %v, no error", i, r.dup)
		}
	}
	l.unlock("second")
	if got := datasOf(ready(t, s, "orders", 64)); len(got) != 2 {
		t.Errorf("orders holds %q, want only warm and first", got)
	}
	for i := range n {
		if dup := accept(t, s, now, relay.Item{Key: fmt.Sprint("own-", i), Data: []byte("own"), Sinks: []string{"orders"}}); dup[0] {
			t.Errorf("key own-%d of the failed batch was recorded", i)
		}
	}
}

// Claims, removals, retries and promotions go through connections with synchronous_commit
// off; everything else, accepts above all, through connections with it on.
func TestPools_SynchronousCommit(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	s := open(t, url, pgtest.Schema(t, url), postgres.Options{})
	defer s.Close()
	main, book, err := s.SyncCommit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if main != "on" || book != "off" {
		t.Fatalf("synchronous_commit: main pool %q, bookkeeping pool %q; want on, off", main, book)
	}
}

// Reading a sink's queue again hands out the deliveries this replica has claimed already
// without writing their rows again (their xmin stays).
func TestReady_OwnedRowsNotRewritten(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	s := open(t, url, schema, postgres.Options{})
	defer s.Close()
	now := time.Now()
	for i := range 3 {
		accept(t, s, now, relay.Item{Key: fmt.Sprint("k", i), Data: []byte(fmt.Sprint(i)), Sinks: []string{"orders"}})
	}
	l := newLocker(t, url)
	xmins := func() string {
		var out string
		q := fmt.Sprintf("SELECT string_agg(seq || ':' || xmin::text, ',' ORDER BY seq) FROM %s.deliveries", pgx.Identifier{schema}.Sanitize())
		if err := l.conn.QueryRow(context.Background(), q).Scan(&out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first := ready(t, s, "orders", 10)
	claimed := xmins()
	again := ready(t, s, "orders", 10)
	if len(first) != 3 || len(again) != 3 {
		t.Fatalf("Ready handed out %d, then %d deliveries; want 3 both times", len(first), len(again))
	}
	if got := xmins(); got != claimed {
		t.Errorf("rows rewritten by a second read: xmin %s, then %s", claimed, got)
	}
}

func accept(t *testing.T, s *postgres.Store, now time.Time, items ...relay.Item) []bool {
	t.Helper()
	dup, err := s.Accept(context.Background(), items, now)
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	return dup
}

func ready(t *testing.T, s *postgres.Store, sink string, max int) []relay.Delivery {
	t.Helper()
	ds, err := s.Ready(sink, 0, max)
	if err != nil {
		t.Fatalf("Ready %s: %v", sink, err)
	}
	return ds
}

func datasOf(ds []relay.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d.Data)
	}
	return out
}
