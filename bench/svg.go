package bench

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"strconv"
	"strings"
)

// This file is a small SVG line-chart writer: just what WriteSVG draws (panels side by side,
// linear or logarithmic axes, a grid, polylines with optional markers and dashes, a legend).
// It replaces gonum/plot, which pulled 56 packages (fonts, LaTeX, PDF) into the relay binary
// for this one chart.

// Panel geometry, in SVG user units (points).
const (
	panelWidth   = 360
	panelHeight  = 288
	marginLeft   = 62
	marginRight  = 16
	marginTop    = 30
	marginBottom = 44
	fontFamily   = "sans-serif"
)

// palette is the series colours, in order (gonum/plot's dark palette, so charts keep their look).
var palette = []string{"#ee2e2f", "#008c48", "#185aa9", "#f47d23", "#662c91", "#a21d21", "#b43894"}

// tick is an axis tick at Value, labelled Label.
type tick struct {
	Value float64
	Label string
}

// point is one (x, y) of a series.
type point struct{ X, Y float64 }

// series is one line of a chart. Color indexes palette.
type series struct {
	Legend  string
	Points  []point
	Color   int
	Dashed  bool
	Markers bool
}

// axis is one axis of a chart: its label, scale and, optionally, fixed ticks.
type axis struct {
	Label string
	Log   bool
	// Ticks, when set, are the ticks drawn (and widen the range to include them).
	Ticks []tick
	// Zero includes 0 in the range of a linear axis.
	Zero bool
}

// chart is one panel: a title, two axes, and lines.
type chart struct {
	Title  string
	X, Y   axis
	Series []series
}

// writeCharts writes the charts side by side as one SVG document.
func writeCharts(w io.Writer, charts []chart) error {
	bw := bufio.NewWriter(w)
	width := panelWidth * len(charts)
	fmt.Fprintf(bw, "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%dpt\" height=\"%dpt\" viewBox=\"0 0 %d %d\" font-family=\"%s\">\n",
		width, panelHeight, width, panelHeight, fontFamily)
	fmt.Fprintf(bw, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", width, panelHeight)
	for i, c := range charts {
		fmt.Fprintf(bw, "<g transform=\"translate(%d,0)\">\n", i*panelWidth)
		c.draw(bw)
		fmt.Fprintln(bw, "</g>")
	}
	fmt.Fprintln(bw, "</svg>")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write svg: %w", err)
	}
	return nil
}

// draw writes the panel's elements.
func (c *chart) draw(w io.Writer) {
	x0, x1 := float64(marginLeft), float64(panelWidth-marginRight)
	y0, y1 := float64(panelHeight-marginBottom), float64(marginTop)
	var xs, ys []float64
	for _, s := range c.Series {
		for _, p := range s.Points {
			xs, ys = append(xs, p.X), append(ys, p.Y)
		}
	}
	xsc := newScale(c.X, xs, x0, x1)
	ysc := newScale(c.Y, ys, y0, y1)

	fmt.Fprintf(w, "<text x=\"%g\" y=\"18\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n", (x0+x1)/2, esc(c.Title))
	fmt.Fprintf(w, "<text x=\"%g\" y=\"%d\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n", (x0+x1)/2, panelHeight-8, esc(c.X.Label))
	fmt.Fprintf(w, "<text transform=\"translate(14,%g) rotate(-90)\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n", (y0+y1)/2, esc(c.Y.Label))

	// Grid and ticks.
	for _, t := range xsc.ticks {
		x := xsc.pos(t.Value)
		fmt.Fprintf(w, "<line x1=\"%.2f\" y1=\"%g\" x2=\"%.2f\" y2=\"%g\" stroke=\"#dddddd\" stroke-width=\"0.5\"/>\n", x, y0, x, y1)
		fmt.Fprintf(w, "<text x=\"%.2f\" y=\"%g\" font-size=\"9\" text-anchor=\"middle\">%s</text>\n", x, y0+13, esc(t.Label))
	}
	for _, t := range ysc.ticks {
		y := ysc.pos(t.Value)
		fmt.Fprintf(w, "<line x1=\"%g\" y1=\"%.2f\" x2=\"%g\" y2=\"%.2f\" stroke=\"#dddddd\" stroke-width=\"0.5\"/>\n", x0, y, x1, y)
		fmt.Fprintf(w, "<text x=\"%g\" y=\"%.2f\" font-size=\"9\" text-anchor=\"end\">%s</text>\n", x0-4, y+3, esc(t.Label))
	}
	fmt.Fprintf(w, "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#000000\" stroke-width=\"0.5\"/>\n", x0, y1, x1-x0, y0-y1)

	// Lines and markers.
	for _, s := range c.Series {
		if len(s.Points) == 0 {
			continue
		}
		color := palette[s.Color%len(palette)]
		var b strings.Builder
		for i, p := range s.Points {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%.2f,%.2f", xsc.pos(p.X), ysc.pos(p.Y))
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="4,3"`
		}
		fmt.Fprintf(w, "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.2\"%s/>\n", b.String(), color, dash)
		if s.Markers {
			for _, p := range s.Points {
				marker(w, s.Color, xsc.pos(p.X), ysc.pos(p.Y), color)
			}
		}
	}

	// Legend, top left inside the plot area, on a white box so lines do not cross its text.
	var entries, longest int
	for _, s := range c.Series {
		if s.Legend != "" && len(s.Points) > 0 {
			entries, longest = entries+1, max(longest, len(s.Legend))
		}
	}
	if entries > 0 {
		fmt.Fprintf(w, "<rect x=\"%g\" y=\"%g\" width=\"%d\" height=\"%d\" fill=\"#ffffff\" fill-opacity=\"0.85\"/>\n", x0+3, y1+3, 30+longest*5, entries*12+4)
	}
	ly := y1 + 12
	for _, s := range c.Series {
		if s.Legend == "" || len(s.Points) == 0 {
			continue
		}
		color := palette[s.Color%len(palette)]
		fmt.Fprintf(w, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" stroke-width=\"1.2\"/>\n", x0+6, ly-3, x0+24, ly-3, color)
		if s.Markers {
			marker(w, s.Color, x0+15, ly-3, color)
		}
		fmt.Fprintf(w, "<text x=\"%g\" y=\"%g\" font-size=\"9\">%s</text>\n", x0+28, ly, esc(s.Legend))
		ly += 12
	}
}

// marker draws the i'th marker shape centred at (x, y).
func marker(w io.Writer, i int, x, y float64, color string) {
	const r = 2.5
	switch i % 4 {
	case 0:
		fmt.Fprintf(w, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"%g\" fill=\"none\" stroke=\"%s\"/>\n", x, y, r, color)
	case 1:
		fmt.Fprintf(w, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"%s\"/>\n", x-r, y-r, 2*r, 2*r, color)
	case 2:
		fmt.Fprintf(w, "<polygon points=\"%.2f,%.2f %.2f,%.2f %.2f,%.2f\" fill=\"none\" stroke=\"%s\"/>\n", x, y-r, x+r, y+r, x-r, y+r, color)
	default:
		fmt.Fprintf(w, "<polygon points=\"%.2f,%.2f %.2f,%.2f %.2f,%.2f %.2f,%.2f\" fill=\"none\" stroke=\"%s\"/>\n", x, y-r, x+r, y, x, y+r, x-r, y, color)
	}
}

// scale maps data values of one axis to SVG coordinates.
type scale struct {
	log      bool
	lo, hi   float64 // data range (log10 of it on a log axis)
	from, to float64 // SVG coordinates of lo and hi
	ticks    []tick
}

// newScale fits an axis to the values vs, drawn from SVG coordinate from to to.
func newScale(a axis, vs []float64, from, to float64) scale {
	s := scale{log: a.Log, from: from, to: to}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range append(vs, tickValues(a.Ticks)...) {
		if a.Log && v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			continue
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	if a.Zero && !a.Log {
		lo = min(lo, 0)
	}
	if lo > hi { // nothing to draw
		lo, hi = 0, 1
		if a.Log {
			lo = 1
		}
	}
	if a.Log {
		if a.Ticks == nil {
			lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
		}
		if lo == hi {
			lo, hi = lo/10, hi*10
		}
		s.lo, s.hi = math.Log10(lo), math.Log10(hi)
	} else {
		if lo == hi {
			lo, hi = lo-1, hi+1
		}
		if a.Ticks == nil {
			step := niceStep((hi - lo) / 5)
			lo, hi = math.Floor(lo/step)*step, math.Ceil(hi/step)*step
		}
		s.lo, s.hi = lo, hi
	}
	s.ticks = a.Ticks
	if s.ticks == nil {
		if a.Log {
			s.ticks = logTicks(lo, hi)
		} else {
			s.ticks = linearTicks(lo, hi)
		}
	}
	return s
}

// pos is the SVG coordinate of the data value v (clamped into the axis on a log axis).
func (s scale) pos(v float64) float64 {
	if s.log {
		v = math.Log10(max(v, math.Pow(10, s.lo)))
	}
	return s.from + (v-s.lo)/(s.hi-s.lo)*(s.to-s.from)
}

func tickValues(ts []tick) []float64 {
	out := make([]float64, len(ts))
	for i, t := range ts {
		out[i] = t.Value
	}
	return out
}

// niceStep rounds d up to 1, 2 or 5 times a power of ten.
func niceStep(d float64) float64 {
	if d <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(d)))
	for _, m := range []float64{1, 2, 5, 10} {
		if d <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// linearTicks returns about five evenly spaced round ticks from lo to hi.
func linearTicks(lo, hi float64) []tick {
	step := niceStep((hi - lo) / 5)
	decimals := max(0, int(-math.Floor(math.Log10(step))))
	var out []tick
	for i := math.Ceil(lo / step); i*step <= hi+step/1e6; i++ {
		v := i * step
		out = append(out, tick{Value: v, Label: strconv.FormatFloat(v, 'f', decimals, 64)})
	}
	return out
}

// logTicks returns a tick per power of ten from lo to hi, and at 2 and 5 times each when the
// range spans two decades or less.
func logTicks(lo, hi float64) []tick {
	var out []tick
	few := math.Log10(hi)-math.Log10(lo) <= 2
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if m != 1 && !few {
				continue
			}
			v := m * math.Pow(10, e)
			if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				out = append(out, tick{Value: v, Label: formatTick(v)})
			}
		}
	}
	return out
}

// formatTick prints a tick value without needless digits.
func formatTick(v float64) string {
	if math.Abs(v) < 1e-9 {
		return "0"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

func esc(s string) string { return html.EscapeString(s) }
