package metrics

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hubrelay/hubrelay/relay"
)

// orderWatch holds WatchOrder's reader and registers its collector once.
type orderWatch struct {
	once sync.Once
	f    atomic.Pointer[func() map[string]relay.OrderStats]
}

// orderCollector reports, at scrape time, the per-key ordering of every running sink.
type orderCollector struct {
	m                      *Metrics
	blocked, held, waiting *prometheus.Desc
}

// WatchOrder makes every scrape report the delivery engine's ordering state, read through
// stats (relay.Engine.OrderStats, cheap and safe for concurrent use), for each running sink:
// hubrelay_order_keys_blocked, hubrelay_order_held_changes and
// hubrelay_order_oldest_waiting_age_seconds. Sinks without order_by report 0.
func (m *Metrics) WatchOrder(stats func() map[string]relay.OrderStats) {
	m.order.f.Store(&stats)
	m.order.once.Do(func() {
		name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
		m.reg.MustRegister(&orderCollector{m: m,
			blocked: prometheus.NewDesc(name("order_keys_blocked"),
				"Ordering keys (order_by) of each sink with changes held back behind an earlier change of the key that is in flight or waiting for a retry.",
				[]string{"sink"}, nil),
			held: prometheus.NewDesc(name("order_held_changes"),
				"Changes of each sink held back in memory behind an earlier change of their ordering key.",
				[]string{"sink"}, nil),
			waiting: prometheus.NewDesc(name("order_oldest_waiting_age_seconds"),
				"Age, from its acceptance, of each sink's oldest change held back behind an earlier change of its ordering key; 0 when none is.",
				[]string{"sink"}, nil),
		})
	})
}

// Describe implements prometheus.Collector.
func (c *orderCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.blocked
	ch <- c.held
	ch <- c.waiting
}

// Collect implements prometheus.Collector.
func (c *orderCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.order.f.Load()
	if f == nil {
		return
	}
	now := c.m.now()
	for sink, st := range (*f)() {
		ch <- prometheus.MustNewConstMetric(c.blocked, prometheus.GaugeValue, float64(st.Blocked), sink)
		ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(st.Held), sink)
		age := 0.0
		if !st.OldestWaiting.IsZero() {
			age = max(0, now.Sub(st.OldestWaiting).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, age, sink)
	}
}
