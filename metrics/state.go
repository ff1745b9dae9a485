package metrics

import (
	"time"

	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hubrelay/hubrelay/relay"
)

// Sources of state read at scrape time, the values of the "source" label of
// hubrelay_state_collect_errors_total.
const (
	sourceSpool       = "spool"
	sourceDedup       = "dedup"
	sourceDeadLetters = "dead_letters"
)

var stateSources = [...]string{sourceSpool, sourceDedup, sourceDeadLetters}

// stateFuncs are the readers WatchSpool was given.
type stateFuncs struct {
	stats       func() (map[string]relay.SinkStats, error)
	dedupLen    func() (int, error)
	deadLetters func(sink string) (int, error)
	sinks       func() []string
}

// stateCollector reports the spool and dead-letter state at scrape time, by calling the
// readers given to WatchSpool. A reader that fails is counted in
// hubrelay_state_collect_errors_total and its metrics are left out of that scrape, so the rest
// of the scrape still succeeds.
type stateCollector struct {
	m     *Metrics
	funcs atomic.Pointer[stateFuncs]
	// paused returns the sinks an operator paused (WatchPaused); nil leaves the gauge out.
	paused atomic.Pointer[func() map[string]bool]
	errs   [len(stateSources)]atomic.Uint64

	pending, oldest, dedupKeys, deadLetters, collectErrs *prometheus.Desc
	oldestReady, oldestScheduled, overdue                *prometheus.Desc
	pausedDesc                                           *prometheus.Desc
	damaged                                              *prometheus.Desc
}

func newStateCollector(m *Metrics) *stateCollector {
	name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
	return &stateCollector{
		m: m,
		pending: prometheus.NewDesc(name("spool_pending"),
			"Deliveries waiting in the spool, by sink and state (ready: due now; scheduled: waiting for a retry).",
			[]string{"sink", "state"}, nil),
		oldest: prometheus.NewDesc(name("spool_oldest_pending_age_seconds"),
			"Age of the oldest pending delivery of each sink, from its acceptance; 0 when none is pending.",
			[]string{"sink"}, nil),
		oldestReady: prometheus.NewDesc(name("spool_oldest_ready_age_seconds"),
			"Age, from its acceptance, of each sink's ready delivery with the lowest sequence number; 0 when none is ready. With a healthy sink it stays small: one that keeps growing is a delivery stuck.",
			[]string{"sink"}, nil),
		oldestScheduled: prometheus.NewDesc(name("spool_oldest_scheduled_age_seconds"),
			"Age, from its acceptance, of each sink's scheduled (waiting for a retry) delivery with the lowest sequence number; 0 when none is scheduled.",
			[]string{"sink"}, nil),
		overdue: prometheus.NewDesc(name("spool_retry_overdue_seconds"),
			"How long ago each sink's earliest scheduled retry fell due without being made ready; 0 when none is due. More than a few seconds means a missed promotion.",
			[]string{"sink"}, nil),
		pausedDesc: prometheus.NewDesc(name("sink_paused"),
			"1 while an operator has the sink paused (hubrelay sinks pause, the admin api or the console), else 0; its backlog is hubrelay_spool_pending.",
			[]string{"sink"}, nil),
		damaged: prometheus.NewDesc(name("spool_damaged_deliveries"),
			"Pending deliveries of each sink held back since the start because their stored data fails its checksum; anything above 0 needs hubrelay spool recover.",
			[]string{"sink"}, nil),
		dedupKeys: prometheus.NewDesc(name("dedup_keys"),
			"Dedup keys stored in the spool, expired ones not yet removed included.",
			nil, nil),
		deadLetters: prometheus.NewDesc(name("dead_letters"),
			"Dead-letter files in the dead-letter directory, by configured sink.",
			[]string{"sink"}, nil),
		collectErrs: prometheus.NewDesc(name("state_collect_errors_total"),
			"Scrapes that could not read a part of the relay's state, by source (spool, dedup, dead_letters).",
			[]string{"source"}, nil),
	}
}

// WatchSpool makes every scrape report the spool and dead-letter state read through the given
// functions (any of them may be nil to leave its metrics out): stats for
// hubrelay_spool_pending and hubrelay_spool_oldest_pending_age_seconds, dedupLen for
// hubrelay_dedup_keys, deadLetters for hubrelay_dead_letters of each sink sinks returns (the
// configured sinks). The functions are called at scrape time, concurrently with everything
// else, so they must be cheap and safe for concurrent use; spool.(*Spool).Stats and DedupLen
// and deadletter.(*Dir).Count are. Configured sinks are reported even when nothing is pending
// for them, and their delivery counters are created at zero so that the first dead letter
// shows as an increase. Calling WatchSpool again replaces the functions.
func (m *Metrics) WatchSpool(stats func() (map[string]relay.SinkStats, error), dedupLen func() (int, error), deadLetters func(sink string) (int, error), sinks func() []string) {
	m.state.funcs.Store(&stateFuncs{stats: stats, dedupLen: dedupLen, deadLetters: deadLetters, sinks: sinks})
}

// WatchPaused makes every scrape report hubrelay_sink_paused for the configured sinks (those
// WatchSpool's sinks returns) and every sink paused returns, which must be cheap and safe for
// concurrent use (relay.Engine.Paused is).
func (m *Metrics) WatchPaused(paused func() map[string]bool) {
	m.state.paused.Store(&paused)
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.oldest
	ch <- c.oldestReady
	ch <- c.oldestScheduled
	ch <- c.overdue
	ch <- c.damaged
	ch <- c.dedupKeys
	ch <- c.deadLetters
	ch <- c.collectErrs
	ch <- c.pausedDesc
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if f := c.funcs.Load(); f != nil {
		c.collect(ch, f)
	}
	for i, src := range stateSources {
		ch <- prometheus.MustNewConstMetric(c.collectErrs, prometheus.CounterValue, float64(c.errs[i].Load()), src)
	}
}

func (c *stateCollector) collect(ch chan<- prometheus.Metric, f *stateFuncs) {
	var names []string
	configured := map[string]bool{}
	if f.sinks != nil {
		for _, s := range f.sinks() {
			if !configured[s] && fitLabel(s) {
				configured[s] = true
				names = append(names, s)
				c.m.sinkC.get(s)
			}
		}
	}

	if f.stats != nil {
		if st, err := f.stats(); err != nil {
			c.errs[0].Add(1)
		} else {
			now := c.m.now()
			emit := func(sink string, s relay.SinkStats) {
				age := 0.0
				if !s.Oldest.IsZero() {
					age = max(now.Sub(s.Oldest).Seconds(), 0)
				}
				c.send(ch, c.pending, prometheus.GaugeValue, float64(s.Ready), sink, "ready")
				c.send(ch, c.pending, prometheus.GaugeValue, float64(s.Scheduled), sink, "scheduled")
				c.send(ch, c.oldest, prometheus.GaugeValue, age, sink)
				since := func(t time.Time) float64 {
					if t.IsZero() {
						return 0
					}
					return max(now.Sub(t).Seconds(), 0)
				}
				c.send(ch, c.oldestReady, prometheus.GaugeValue, since(s.OldestReady), sink)
				c.send(ch, c.oldestScheduled, prometheus.GaugeValue, since(s.OldestScheduled), sink)
				c.send(ch, c.overdue, prometheus.GaugeValue, since(s.NextDue), sink)
				c.send(ch, c.damaged, prometheus.GaugeValue, float64(s.Damaged), sink)
			}
			for _, s := range names {
				emit(s, st[s])
			}
			// Sinks no longer configured, while something is still pending for them (the
			// engine dead-letters it), or every sink when the configured ones are unknown.
			for s, v := range st {
				if !configured[s] && fitLabel(s) && (f.sinks == nil || v.Ready+v.Scheduled > 0) {
					emit(s, v)
				}
			}
		}
	}

	if p := c.paused.Load(); p != nil {
		paused := (*p)()
		for _, s := range names {
			c.send(ch, c.pausedDesc, prometheus.GaugeValue, b2f(paused[s]), s)
		}
		for s := range paused {
			if !configured[s] && fitLabel(s) {
				c.send(ch, c.pausedDesc, prometheus.GaugeValue, 1, s)
			}
		}
	}

	if f.dedupLen != nil {
		if n, err := f.dedupLen(); err != nil {
			c.errs[1].Add(1)
		} else {
			c.send(ch, c.dedupKeys, prometheus.GaugeValue, float64(n))
		}
	}

	if f.deadLetters != nil {
		for _, s := range names {
			n, err := f.deadLetters(s)
			if err != nil {
				// One error per scrape: the next sink's read would most likely fail the same way.
				c.errs[2].Add(1)
				break
			}
			c.send(ch, c.deadLetters, prometheus.GaugeValue, float64(n), s)
		}
	}
}

// send emits one constant metric; label values were checked, so an error cannot happen, and a
// metric that cannot be built is left out rather than failing the scrape.
func (c *stateCollector) send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	if m, err := prometheus.NewConstMetric(d, t, v, labels...); err == nil {
		ch <- m
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
