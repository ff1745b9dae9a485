package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

var stateNames = []string{
	"hubrelay_spool_pending", "hubrelay_spool_oldest_pending_age_seconds", "hubrelay_dedup_keys",
	"hubrelay_dead_letters", "hubrelay_state_collect_errors_total",
}

const noErrors = `
hubrelay_state_collect_errors_total{source="dead_letters"} 0
hubrelay_state_collect_errors_total{source="dedup"} 0
hubrelay_state_collect_errors_total{source="spool"} 0
`

func TestMetrics_WatchSpool(t *testing.T) {
	errRead := errors.New("read: input/output error")
	stats := func() (map[string]relay.SinkStats, error) {
		return map[string]relay.SinkStats{
			"orders":  {Ready: 2, Scheduled: 1, Oldest: t0.Add(-90 * time.Second)},
			"removed": {Ready: 1, Oldest: t0.Add(-10 * time.Second)},
			"idle":    {},
			"clock":   {Ready: 1, Oldest: t0.Add(time.Minute)}, // accepted "in the future": age 0
		}, nil
	}
	dedup := func() (int, error) { return 7, nil }
	letters := func(sink string) (int, error) { return map[string]int{"orders": 3}[sink], nil }
	sinks := func() []string { return []string{"orders", "ops", "orders"} }
	failStats := func() (map[string]relay.SinkStats, error) { return nil, errRead }
	failDedup := func() (int, error) { return 0, errRead }
	failLetters := func(string) (int, error) { return 0, errRead }

	tests := []struct {
		name    string
		watch   bool
		stats   func() (map[string]relay.SinkStats, error)
		dedup   func() (int, error)
		letters func(string) (int, error)
		sinks   func() []string
		want    string
	}{
		{
			name: "not watched", want: noErrors,
		},
		{
			name: "configured sinks", watch: true, stats: stats, dedup: dedup, letters: letters, sinks: sinks,
			want: `
hubrelay_spool_pending{sink="clock",state="ready"} 1
hubrelay_spool_pending{sink="clock",state="scheduled"} 0
hubrelay_spool_pending{sink="ops",state="ready"} 0
hubrelay_spool_pending{sink="ops",state="scheduled"} 0
hubrelay_spool_pending{sink="orders",state="ready"} 2
hubrelay_spool_pending{sink="orders",state="scheduled"} 1
hubrelay_spool_pending{sink="removed",state="ready"} 1
hubrelay_spool_pending{sink="removed",state="scheduled"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="clock"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="ops"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="orders"} 90
hubrelay_spool_oldest_pending_age_seconds{sink="removed"} 10
hubrelay_dedup_keys 7
hubrelay_dead_letters{sink="ops"} 0
hubrelay_dead_letters{sink="orders"} 3
` + noErrors,
		},
		{
			name: "sinks unknown", watch: true, stats: stats, dedup: dedup, letters: letters,
			want: `
hubrelay_spool_pending{sink="clock",state="ready"} 1
hubrelay_spool_pending{sink="clock",state="scheduled"} 0
hubrelay_spool_pending{sink="idle",state="ready"} 0
hubrelay_spool_pending{sink="idle",state="scheduled"} 0
hubrelay_spool_pending{sink="orders",state="ready"} 2
hubrelay_spool_pending{sink="orders",state="scheduled"} 1
hubrelay_spool_pending{sink="removed",state="ready"} 1
hubrelay_spool_pending{sink="removed",state="scheduled"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="clock"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="idle"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="orders"} 90
hubrelay_spool_oldest_pending_age_seconds{sink="removed"} 10
hubrelay_dedup_keys 7
` + noErrors,
		},
		{
			name: "readers fail", watch: true, stats: failStats, dedup: failDedup, letters: failLetters, sinks: sinks,
			want: `
hubrelay_state_collect_errors_total{source="dead_letters"} 1
hubrelay_state_collect_errors_total{source="dedup"} 1
hubrelay_state_collect_errors_total{source="spool"} 1
`,
		},
		{
			name: "all nil", watch: true, want: noErrors,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, reg := newTest(t)
			if tt.watch {
				m.WatchSpool(tt.stats, tt.dedup, tt.letters, tt.sinks)
			}
			compare(t, reg, tt.want, stateNames...)
		})
	}
}

// TestMetrics_WatchSpoolInitSinks checks that a scrape creates the delivery counters of the
// configured sinks at zero, so that an alert on their increase sees the first dead letter.
func TestMetrics_WatchSpoolInitSinks(t *testing.T) {
	m, reg := newTest(t)
	m.WatchSpool(nil, nil, nil, func() []string { return []string{"orders"} })
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("Gather: %v", err)
	}
	compare(t, reg, `
hubrelay_deliveries_total{result="dead_lettered",sink="orders"} 0
hubrelay_deliveries_total{result="delivered",sink="orders"} 0
`, "hubrelay_deliveries_total")
}

// TestMetrics_WatchSpoolReal reads a real spool and dead-letter directory.
func TestMetrics_WatchSpoolReal(t *testing.T) {
	dir := t.TempDir()
	sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatalf("open spool: %v", err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	dl, err := deadletter.Open(filepath.Join(dir, "dead-letter"))
	if err != nil {
		t.Fatalf("open dead-letter dir: %v", err)
	}

	accepted := t0.Add(-time.Hour)
	if _, err := sp.Accept(context.Background(), []spool.Item{
		{Key: "k1", Data: []byte("1"), Sinks: []string{"orders", "archive"}},
		{Key: "k2", Data: []byte("2"), Sinks: []string{"orders"}},
		{Key: "k3", Data: []byte("3")},
	}, accepted); err != nil {
		t.Fatalf("Accept: %v", err)
	}
	ready, err := sp.Ready("orders", 0, 10)
	if err != nil || len(ready) != 2 {
		t.Fatalf("Ready = %d deliveries, %v; want 2", len(ready), err)
	}
	if err := sp.Reschedule("orders", ready[1].Seq, t0.Add(time.Minute), 1, nil); err != nil {
		t.Fatalf("Reschedule: %v", err)
	}
	for seq := uint64(1); seq <= 2; seq++ {
		if err := dl.Write(&deadletter.Letter{Sink: "orders", Seq: seq, Reason: "test", Change: json.RawMessage(`{}`)}); err != nil {
			t.Fatalf("write dead letter: %v", err)
		}
	}

	m, reg := newTest(t)
	m.WatchSpool(embedded.New(sp).Stats, sp.DedupLen, dl.Count, func() []string { return []string{"archive", "orders", "ops"} })
	compare(t, reg, `
hubrelay_spool_pending{sink="archive",state="ready"} 1
hubrelay_spool_pending{sink="archive",state="scheduled"} 0
hubrelay_spool_pending{sink="ops",state="ready"} 0
hubrelay_spool_pending{sink="ops",state="scheduled"} 0
hubrelay_spool_pending{sink="orders",state="ready"} 1
hubrelay_spool_pending{sink="orders",state="scheduled"} 1
hubrelay_spool_oldest_pending_age_seconds{sink="archive"} 3600
hubrelay_spool_oldest_pending_age_seconds{sink="ops"} 0
hubrelay_spool_oldest_pending_age_seconds{sink="orders"} 3600
hubrelay_dedup_keys 3
hubrelay_dead_letters{sink="archive"} 0
hubrelay_dead_letters{sink="ops"} 0
hubrelay_dead_letters{sink="orders"} 2
`+noErrors, stateNames...)

	// The collector reads the state at each scrape.
	arch, err := sp.Ready("archive", 0, 10)
	if err != nil || len(arch) != 1 {
		t.Fatalf("Ready(archive) = %d deliveries, %v; want 1", len(arch), err)
	}
	if err := sp.Done("archive", arch[0].Seq); err != nil {
		t.Fatalf("Done: %v", err)
	}
	compare(t, reg, `
hubrelay_spool_pending{sink="archive",state="ready"} 0
hubrelay_spool_pending{sink="archive",state="scheduled"} 0
hubrelay_spool_pending{sink="ops",state="ready"} 0
hubrelay_spool_pending{sink="ops",state="scheduled"} 0
hubrelay_spool_pending{sink="orders",state="ready"} 1
hubrelay_spool_pending{sink="orders",state="scheduled"} 1
`, "hubrelay_spool_pending")
}

// TestMetrics_WatchSpool_Liveness: the ages that show a stuck delivery (the oldest ready one)
// and a missed promotion (a retry overdue), per sink.
func TestMetrics_WatchSpool_Liveness(t *testing.T) {
	m, reg := newTest(t)
	m.WatchSpool(func() (map[string]relay.SinkStats, error) {
		return map[string]relay.SinkStats{
			"orders": {Ready: 1, Scheduled: 2, Oldest: t0.Add(-time.Hour), OldestReady: t0.Add(-400 * time.Second),
				OldestScheduled: t0.Add(-time.Hour), NextDue: t0.Add(-3 * time.Second)},
			"ops": {Scheduled: 1, Oldest: t0.Add(-time.Minute), OldestScheduled: t0.Add(-time.Minute), NextDue: t0.Add(time.Minute)},
		}, nil
	}, nil, nil, func() []string { return []string{"orders", "ops", "idle"} })
	compare(t, reg, `
hubrelay_spool_oldest_ready_age_seconds{sink="idle"} 0
hubrelay_spool_oldest_ready_age_seconds{sink="ops"} 0
hubrelay_spool_oldest_ready_age_seconds{sink="orders"} 400
hubrelay_spool_oldest_scheduled_age_seconds{sink="idle"} 0
hubrelay_spool_oldest_scheduled_age_seconds{sink="ops"} 60
hubrelay_spool_oldest_scheduled_age_seconds{sink="orders"} 3600
hubrelay_spool_retry_overdue_seconds{sink="idle"} 0
hubrelay_spool_retry_overdue_seconds{sink="ops"} 0
hubrelay_spool_retry_overdue_seconds{sink="orders"} 3
`, "hubrelay_spool_oldest_ready_age_seconds", "hubrelay_spool_oldest_scheduled_age_seconds", "hubrelay_spool_retry_overdue_seconds")
}
