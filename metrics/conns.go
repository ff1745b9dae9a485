package metrics

import "github.com/prometheus/client_golang/prometheus"

// WatchConnections registers the webhook listener's connection metrics:
// hubrelay_open_connections, read through open at scrape time (relay.(*ConnLimiter).Open), and
// hubrelay_connections_dropped_total{reason}, counted through the returned function, which
// front.ConnLimitOptions.Observe takes (reason is refused_total, refused_per_ip or
// closed_for_room). Call it once per Metrics.
func (m *Metrics) WatchConnections(open func() int) func(reason string) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "open_connections",
		Help: "Connections open on the webhook listener.",
	}, func() float64 { return float64(open()) }))
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "connections_dropped_total",
		Help: "Webhook listener connections closed by the connection limits: refused_total (at max_connections, nothing to close), refused_per_ip (at max_connections_per_ip), closed_for_room (idle or silent, closed to let a new one in).",
	}, []string{"reason"})
	m.reg.MustRegister(dropped)
	children := map[string]prometheus.Counter{}
	for _, r := range []string{"refused_total", "refused_per_ip", "closed_for_room"} {
		children[r] = dropped.WithLabelValues(r)
	}
	return func(reason string) {
		if c, ok := children[reason]; ok {
			c.Inc()
		}
	}
}
