package bench

import (
	"slices"
	"time"
)

// maxListedIDs bounds the ids a Tally lists by name.
const maxListedIDs = 10

// Tally is the delivery accounting of one sink: what was acknowledged to the load generator
// against what the sink received.
type Tally struct {
	// Expected is the number of distinct changes acknowledged with 200.
	Expected int `json:"expected"`
	// Delivered is how many of the expected changes the sink received at least once.
	Delivered int `json:"delivered"`
	// Lost is how many expected changes the sink never received and the relay no longer holds
	// (not pending in its spool, not dead-lettered). It must be 0.
	Lost int `json:"lost"`
	// Pending is how many expected changes the sink had not received when the bench stopped
	// waiting but the relay still held, in its spool or as dead letters: not lost, late.
	Pending int `json:"pending"`
	// Duplicated counts deliveries beyond the first of each change: a change received twice
	// counts 1, three times 2. At-least-once delivery allows them, but a healthy run has none.
	Duplicated int `json:"duplicated"`
	// Unacked is how many distinct changes the sink received that were never acknowledged:
	// allowed, since a POST may time out after the relay committed it.
	Unacked int `json:"unacked"`
	// LostIDs lists the first lost change ids in sorted order, at most 10.
	LostIDs []string `json:"lost_ids,omitempty"`
}

// Account compares what was acknowledged with what one sink received. acked holds the id of
// every change acknowledged with 200 (a repeated id counts once); got maps each id the sink
// received to the number of times it arrived. A change that was sent but not acknowledged is
// never lost, whether or not it arrived.
func Account(acked []string, got map[string]int) Tally { return AccountHeld(acked, got, nil) }

// AccountHeld is Account where held names the changes the relay still holds for the sink
// (pending in its spool or dead-lettered): those count as Pending, not Lost.
func AccountHeld(acked []string, got map[string]int, held map[string]bool) Tally {
	var t Tally
	seen := make(map[string]struct{}, len(acked))
	for _, id := range acked {
		if _, ok := seen[id]; ok {
			continue
		}
		seen[id] = struct{}{}
		t.Expected++
		if got[id] > 0 {
			t.Delivered++
			continue
		}
		if held[id] {
			t.Pending++
			continue
		}
		t.Lost++
		if len(t.LostIDs) < maxListedIDs {
			t.LostIDs = append(t.LostIDs, id)
		}
	}
	for id, n := range got {
		if n > 1 {
			t.Duplicated += n - 1
		}
		if _, ok := seen[id]; !ok && n > 0 {
			t.Unacked++
		}
	}
	slices.Sort(t.LostIDs)
	return t
}

// Latency summarises a set of durations, in milliseconds.
type Latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// summarize sorts d in place and returns its percentiles (nearest rank).
func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	return Latency{
		N:   len(d),
		P50: ms(percentile(d, 50)),
		P90: ms(percentile(d, 90)),
		P99: ms(percentile(d, 99)),
		Max: ms(d[len(d)-1]),
	}
}

// percentile returns the p-th percentile of the sorted, non-empty d by nearest rank.
func percentile(d []time.Duration, p float64) time.Duration {
	rank := int(p/100*float64(len(d))+0.999999) - 1
	return d[min(max(rank, 0), len(d)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
