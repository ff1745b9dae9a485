package postgres

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Claims. A replica reads a sink's queue only while it owns the sink (sink_owners), and claims
// the deliveries it hands out (deliveries.owner). The claim commits asynchronously (the book
// pool): lost in a crash of the database server, the deliveries are unclaimed again, and as the
// owner of the sink, which is durable, is still this replica, only this replica reads them again
// and its engine skips what it has in flight. Taking a sink over is therefore a synchronous
// commit of its own (takeQuery), done before anything of the sink is claimed under it.

// claimQuery returns up to $3 ready deliveries of sink $1 after seq $2 for replica $4, when
// this replica owns the sink's queue: deliveries not claimed by another live replica (lease
// $5), whose ordering key (if any) has no older pending delivery, ready, scheduled or claimed
// (order.go). It claims those it does not own yet and reads those it owns already without
// rewriting them (claimed tells which). When the replica does not own the sink it returns one
// row of seq -1 instead.
const claimQuery = `
WITH live AS (
	SELECT id FROM replicas WHERE heartbeat > now() - $5::interval
), own AS (
	SELECT 1 FROM sink_owners WHERE sink = $1 AND owner = $4
), cand AS (
	SELECT d.seq, d.owner IS NOT DISTINCT FROM $4 AS mine FROM deliveries d
	WHERE d.sink = $1 AND d.state = 0 AND d.seq > $2 AND EXISTS (SELECT 1 FROM own)
	  AND (d.owner IS NULL OR d.owner = $4 OR d.owner NOT IN (SELECT id FROM live))
	  AND (d.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM deliveries o
	       WHERE o.sink = d.sink AND o.order_key = d.order_key AND o.seq < d.seq))
	ORDER BY d.seq LIMIT $3
), u AS (
	-- Rows are found by seq = ANY in the primary key (an index condition whatever the planner
	-- thinks of the table's size: a queue's statistics are often those of an empty table).
	-- The UPDATE re-checks, on the current version of a row another transaction changed
	-- meanwhile, that it is still ready and unclaimed, so it needs no FOR UPDATE of its own
	-- (a lock is one more write per row). The check is state::int = 0, not state = 0, so that
	-- it cannot pick the partial index deliveries_ready, which has no seq condition to offer
	-- here: with a backlog that was a scan of the sink's ready rows.
	UPDATE deliveries d SET owner = $4
	WHERE d.sink = $1 AND d.seq = ANY (ARRAY(SELECT seq FROM cand WHERE NOT mine)) AND d.state::int = 0
	  AND (d.owner IS NULL OR d.owner NOT IN (SELECT id FROM live))
	RETURNING d.seq, d.data, d.attempt, d.first_at, d.history, coalesce(d.due_at, d.first_at) AS since
)
SELECT seq, data, attempt, first_at, history, since, true AS claimed FROM u
UNION ALL
SELECT d.seq, d.data, d.attempt, d.first_at, d.history, coalesce(d.due_at, d.first_at), false
FROM deliveries d WHERE d.sink = $1 AND d.seq = ANY (ARRAY(SELECT seq FROM cand WHERE mine))
UNION ALL
SELECT -1, NULL::bytea, 0, now(), NULL::bytea, now(), false WHERE NOT EXISTS (SELECT 1 FROM own)`

// takeQuery makes replica $2 the owner of sink $1's queue when no live replica (lease $3)
// owns it. It reads before it writes, so a replica that finds the sink owned by a live one
// locks nothing and commits no write.
const takeQuery = `
INSERT INTO sink_owners AS o (sink, owner)
SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM sink_owners x JOIN replicas r ON r.id = x.owner
	WHERE x.sink = $1 AND r.heartbeat > now() - $3::interval)
ON CONFLICT (sink) DO UPDATE SET owner = $2
WHERE o.owner <> $2 AND o.owner NOT IN (SELECT id FROM replicas WHERE heartbeat > now() - $3::interval)
RETURNING 1`

// Ready implements relay.Queue; it claims what it returns. Until the store is up (Start) it
// returns none.
func (s *Store) Ready(sink string, after uint64, max int) ([]relay.Delivery, error) {
	if max <= 0 || after >= 1<<63 || !s.isUp.Load() {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	if ok, err := s.mayClaim(ctx, sink); !ok || err != nil {
		return nil, err
	}
	out, owner, err := s.claim(ctx, sink, after, max)
	if err != nil || owner {
		return out, err
	}
	// Not this replica's sink: take it over if its owner's lease lapsed (or it has none), in
	// a synchronous commit, then claim under the durable ownership.
	tag, err := s.pool.Exec(ctx, takeQuery, sink, s.me.Load(), s.opt.Lease)
	if err != nil {
		return nil, fmt.Errorf("ready %s: take the sink's queue: %w", sink, err)
	}
	if tag.RowsAffected() == 0 {
		return nil, nil // a live replica owns it
	}
	out, _, err = s.claim(ctx, sink, after, max)
	return out, err
}

// claim runs claimQuery: the deliveries in Seq order, and whether this replica owns the sink.
func (s *Store) claim(ctx context.Context, sink string, after uint64, max int) ([]relay.Delivery, bool, error) {
	rows, err := s.book.Query(ctx, claimQuery, sink, int64(after), max, s.me.Load(), s.opt.Lease)
	if err != nil {
		return nil, false, fmt.Errorf("ready %s: %w", sink, err)
	}
	var out []relay.Delivery
	var since []time.Time
	owner := true
	for rows.Next() {
		var d relay.Delivery
		var seq int64
		var attempt int32
		var due time.Time
		var claimed bool
		if err := rows.Scan(&seq, &d.Data, &attempt, &d.FirstAt, &d.History, &due, &claimed); err != nil {
			rows.Close()
			return nil, false, fmt.Errorf("ready %s: %w", sink, err)
		}
		if seq < 0 {
			owner = false
			continue
		}
		d.Sink, d.Seq, d.Attempt = sink, uint64(seq), int(attempt)
		out = append(out, d)
		if claimed {
			since = append(since, due)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("ready %s: %w", sink, err)
	}
	if o := s.obs.Load(); o != nil && o.Claimed != nil {
		now := time.Now()
		for _, t := range since {
			o.Claimed(sink, now.Sub(t))
		}
	}
	slices.SortFunc(out, func(a, b relay.Delivery) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, owner, nil
}
