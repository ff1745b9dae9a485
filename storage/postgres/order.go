package postgres

import (
	"context"
	"fmt"

	"github.com/hubrelay/hubrelay/relay"
)

// Ordering in a shared store: Accept stores each delivery's ordering key (relay.OrderKeyOf its
// data for its sink) in deliveries.order_key, and Ready claims a delivery with a key only when
// no pending delivery of the same sink and key has a lower seq, whatever its state or owner.
// So a replica taking over a sink, or one whose engine does not know of another's retry,
// never delivers a key's change before an older one; the engine's own ordering (relay's
// order.go) keeps the order among what one replica claimed.

// Scheduled implements relay.Queue: the sink's scheduled deliveries in Seq order, unclaimed.
func (s *Store) Scheduled(sink string, after uint64, max int) ([]relay.Delivery, error) {
	if max <= 0 || after >= 1<<63 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT seq, data, attempt, first_at, history FROM deliveries
		WHERE sink = $1 AND state = 1 AND seq > $2 ORDER BY seq LIMIT $3`, sink, int64(after), max)
	if err != nil {
		return nil, fmt.Errorf("scheduled %s: %w", sink, err)
	}
	defer rows.Close()
	var out []relay.Delivery
	for rows.Next() {
		var d relay.Delivery
		var seq int64
		var attempt int32
		if err := rows.Scan(&seq, &d.Data, &attempt, &d.FirstAt, &d.History); err != nil {
			return nil, fmt.Errorf("scheduled %s: %w", sink, err)
		}
		d.Sink, d.Seq, d.Attempt = sink, uint64(seq), int(attempt)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scheduled %s: %w", sink, err)
	}
	return out, nil
}

// orderKeys returns the ordering key of every (item, sink) pair, in the order Accept lists the
// sinks ("" for none), or nil when no pair has one: then the plain accept runs, unchanged.
func orderKeys(items []relay.Item, n int) []string {
	var out []string
	j := 0
	for _, it := range items {
		for _, sink := range it.Sinks {
			if k := relay.OrderKeyOf(it.Data, sink); k != "" {
				if out == nil {
					out = make([]string, n)
				}
				out[j] = k
			}
			j++
		}
	}
	return out
}

// DoneSync implements relay.Queue: Done through the synchronous pool, durable once it returns.
func (s *Store) DoneSync(sink string, seqs ...uint64) error { return s.done(s.pool, sink, seqs) }
