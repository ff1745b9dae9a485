package bench

import (
	"fmt"
	"io"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WriteSVG draws the report as an SVG chart. For the throughput scenario: acknowledged
// requests per second, and p50 and p99 acknowledgement latency, by concurrency for each
// target (the phases with the run's usual changes per POST). For the outage scenario: the
// relay's resident set over time.
func (r *Report) WriteSVG(w io.Writer) error {
	var plots []*plot.Plot
	if r.Outage != nil {
		plots = []*plot.Plot{r.rssPlot()}
	} else {
		tp, lp, err := r.concurrencyPlots()
		if err != nil {
			return err
		}
		plots = []*plot.Plot{tp, lp}
	}
	width := vg.Length(len(plots)) * 5 * vg.Inch
	c := vgsvg.New(width, 4*vg.Inch)
	dc := draw.New(c)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	return nil
}

// concurrencyPlots returns the throughput and the latency plot.
func (r *Report) concurrencyPlots() (*plot.Plot, *plot.Plot, error) {
	k := r.Options.ChangesPerPost
	tp, lp := plot.New(), plot.New()
	tp.Title.Text = fmt.Sprintf("Acknowledged requests/s (%d change/POST)", k)
	lp.Title.Text = "Ack latency p50 (solid) and p99 (dashed)"
	tp.Y.Label.Text, lp.Y.Label.Text = "requests/s", "ms"
	var ticks []plot.Tick
	for _, c := range r.Options.Concurrency {
		ticks = append(ticks, plot.Tick{Value: float64(c), Label: strconv.Itoa(c)})
	}
	for _, p := range []*plot.Plot{tp, lp} {
		p.X.Label.Text = "concurrency (connections)"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.Legend.Top, p.Legend.Left = true, true
		p.Add(plotter.NewGrid())
	}
	lp.Y.Scale = plot.LogScale{}
	lp.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	tp.Y.Min = 0
	for i, target := range r.Options.Targets {
		var thr, p50, p99 plotter.XYs
		for _, c := range slices.Sorted(slices.Values(r.Options.Concurrency)) {
			ph := r.find(target, c, k)
			if ph == nil || ph.Acked == 0 {
				continue
			}
			x := float64(c)
			thr = append(thr, plotter.XY{X: x, Y: ph.AckedPerSec})
			p50 = append(p50, plotter.XY{X: x, Y: max(ph.AckLatency.P50, 0.001)})
			p99 = append(p99, plotter.XY{X: x, Y: max(ph.AckLatency.P99, 0.001)})
		}
		if len(thr) == 0 {
			continue
		}
		for _, s := range []struct {
			p      *plot.Plot
			xy     plotter.XYs
			dashed bool
			legend string
		}{{tp, thr, false, target}, {lp, p50, false, target}, {lp, p99, true, ""}} {
			l, pts, err := plotter.NewLinePoints(s.xy)
			if err != nil {
				return nil, nil, fmt.Errorf("chart %s: %w", target, err)
			}
			l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
			pts.Shape = plotutil.Shape(i)
			if s.dashed {
				l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			s.p.Add(l, pts)
			if s.legend != "" {
				s.p.Legend.Add(s.legend, l, pts)
			}
		}
	}
	return tp, lp, nil
}

// rssPlot plots the relay's resident set during the outage scenario.
func (r *Report) rssPlot() *plot.Plot {
	o := r.Outage
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s RSS: %d-change backlog, sinks back at %.0fs", o.Target, o.Changes, o.RecoveredAtSeconds)
	p.X.Label.Text, p.Y.Label.Text = "seconds", "MiB"
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	all, anon := make(plotter.XYs, len(o.RSS)), make(plotter.XYs, len(o.RSS))
	for i, s := range o.RSS {
		all[i] = plotter.XY{X: s.Seconds, Y: s.MB}
		anon[i] = plotter.XY{X: s.Seconds, Y: s.AnonMB}
	}
	p.Legend.Top, p.Legend.Left = true, true
	for i, s := range []struct {
		xy     plotter.XYs
		legend string
	}{{all, "RSS"}, {anon, "anonymous (heap)"}} {
		if len(s.xy) == 0 {
			continue
		}
		if l, err := plotter.NewLine(s.xy); err == nil {
			l.Color = plotutil.Color(i)
			p.Add(l)
			p.Legend.Add(s.legend, l)
		}
	}
	if l, err := plotter.NewLine(plotter.XYs{{X: o.RecoveredAtSeconds, Y: 0}, {X: o.RecoveredAtSeconds, Y: max(o.PeakRSSMB, 1)}}); err == nil {
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l)
	}
	return p
}
