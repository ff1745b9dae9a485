package bench

import (
	"fmt"
	"io"
	"slices"
	"strconv"
)

// WriteSVG draws the report as an SVG chart. For the throughput scenario: acknowledged
// requests per second, and p50 and p99 acknowledgement latency, by concurrency for each
// target (the phases with the run's usual changes per POST). For the outage scenario: the
// relay's resident set over time.
func (r *Report) WriteSVG(w io.Writer) error {
	if r.Outage != nil {
		return writeCharts(w, []chart{r.rssChart()})
	}
	tp, lp := r.concurrencyCharts()
	return writeCharts(w, []chart{tp, lp})
}

// concurrencyCharts returns the throughput and the latency chart.
func (r *Report) concurrencyCharts() (chart, chart) {
	k := r.Options.ChangesPerPost
	var ticks []tick
	for _, c := range slices.Sorted(slices.Values(r.Options.Concurrency)) {
		ticks = append(ticks, tick{Value: float64(c), Label: strconv.Itoa(c)})
	}
	x := axis{Label: "concurrency (connections)", Log: true, Ticks: ticks}
	tp := chart{Title: fmt.Sprintf("Acknowledged requests/s (%d change/POST)", k), X: x, Y: axis{Label: "requests/s", Zero: true}}
	lp := chart{Title: "Ack latency p50 (solid) and p99 (dashed)", X: x, Y: axis{Label: "ms", Log: true}}
	for i, target := range r.Options.Targets {
		var thr, p50, p99 []point
		for _, c := range slices.Sorted(slices.Values(r.Options.Concurrency)) {
			ph := r.find(target, c, k)
			if ph == nil || ph.Acked == 0 {
				continue
			}
			x := float64(c)
			thr = append(thr, point{x, ph.AckedPerSec})
			p50 = append(p50, point{x, max(ph.AckLatency.P50, 0.001)})
			p99 = append(p99, point{x, max(ph.AckLatency.P99, 0.001)})
		}
		tp.Series = append(tp.Series, series{Legend: target, Points: thr, Color: i, Markers: true})
		lp.Series = append(lp.Series,
			series{Legend: target, Points: p50, Color: i, Markers: true},
			series{Points: p99, Color: i, Markers: true, Dashed: true})
	}
	return tp, lp
}

// rssChart plots the relay's resident set during the outage scenario, with a dashed vertical
// line where the sinks came back.
func (r *Report) rssChart() chart {
	o := r.Outage
	c := chart{
		Title: fmt.Sprintf("%s RSS: %d-change backlog, sinks back at %.0fs", o.Target, o.Changes, o.RecoveredAtSeconds),
		X:     axis{Label: "seconds", Zero: true},
		Y:     axis{Label: "MiB", Zero: true},
	}
	all, anon := make([]point, len(o.RSS)), make([]point, len(o.RSS))
	for i, s := range o.RSS {
		all[i] = point{s.Seconds, s.MB}
		anon[i] = point{s.Seconds, s.AnonMB}
	}
	c.Series = []series{
		{Legend: "RSS", Points: all, Color: 0},
		{Legend: "anonymous (heap)", Points: anon, Color: 1},
		{Points: []point{{o.RecoveredAtSeconds, 0}, {o.RecoveredAtSeconds, max(o.PeakRSSMB, 1)}}, Color: 2, Dashed: true},
	}
	return c
}
