package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

// chartReport is a throughput report with three targets at three concurrencies; hubrelay has
// no phase at c=32 (a target that failed there must not break the chart).
func chartReport() *Report {
	r := &Report{Options: OptionsSummary{Targets: []string{"reference", "reference-fsync", "hubrelay"}, Concurrency: []int{1, 8, 32}, ChangesPerPost: 1}}
	for i, target := range r.Options.Targets {
		for j, c := range r.Options.Concurrency {
			if target == "hubrelay" && c == 32 {
				continue
			}
			f := float64((i + 1) * (j + 1))
			r.Phases = append(r.Phases, Phase{Target: target, Concurrency: c, ChangesPerPost: 1, Acked: 100,
				AckedPerSec: 1000 * f, AckLatency: Latency{P50: 0.2 * f, P99: 1.5 * f}})
		}
	}
	return r
}

// svgElements parses doc as XML and counts its elements by name, failing on malformed XML.
func svgElements(t *testing.T, doc []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	n := map[string]int{}
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, doc)
		}
		if se, ok := tok.(xml.StartElement); ok {
			n[se.Name.Local]++
		}
	}
}

func TestReport_WriteSVG(t *testing.T) {
	tests := []struct {
		name      string
		rep       *Report
		polylines int
		texts     []string
	}{
		{
			name: "throughput",
			rep:  chartReport(),
			// Three targets: one throughput line and two latency lines (p50, p99) each.
			polylines: 9,
			texts:     []string{"Acknowledged requests/s (1 change/POST)", "reference-fsync", "hubrelay", ">32<", "concurrency (connections)"},
		},
		{
			name: "outage",
			rep: &Report{Outage: &Outage{Target: "hubrelay", Changes: 1000, RecoveredAtSeconds: 3, PeakRSSMB: 90,
				RSS: []RSSSample{{0, 20, 10}, {1, 60, 30}, {2, 90, 40}, {3, 85, 35}, {4, 50, 20}}}},
			polylines: 3,
			texts:     []string{"hubrelay RSS: 1000-change backlog, sinks back at 3s", "anonymous (heap)", "MiB"},
		},
		{
			name:      "empty",
			rep:       &Report{Options: OptionsSummary{Targets: []string{"hubrelay"}, Concurrency: []int{1}}},
			polylines: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tt.rep.WriteSVG(&buf); err != nil {
				t.Fatal(err)
			}
			if dir := os.Getenv("BENCH_SVG_DIR"); dir != "" {
				os.WriteFile(dir+"/"+tt.name+".svg", buf.Bytes(), 0o644)
			}
			doc := buf.String()
			if n := svgElements(t, buf.Bytes())["polyline"]; n != tt.polylines {
				t.Errorf("%d polylines, want %d", n, tt.polylines)
			}
			for _, bad := range []string{"NaN", "Inf"} {
				if strings.Contains(doc, bad) {
					t.Errorf("SVG holds %s:\n%s", bad, doc)
				}
			}
			for _, want := range tt.texts {
				if !strings.Contains(doc, want) {
					t.Errorf("SVG lacks %q", want)
				}
			}
		})
	}
}

func TestLinearTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		want   string
	}{
		{0, 20000, "0 5000 10000 15000 20000"},
		{0, 1, "0.0 0.2 0.4 0.6 0.8 1.0"},
		{0, 0.3, "0.0 0.1 0.2 0.3"},
		{10, 95, "20 40 60 80"},
	}
	for _, tt := range tests {
		var got []string
		for _, tk := range linearTicks(tt.lo, tt.hi) {
			got = append(got, tk.Label)
		}
		if g := strings.Join(got, " "); g != tt.want {
			t.Errorf("linearTicks(%v, %v) = %q, want %q", tt.lo, tt.hi, g, tt.want)
		}
	}
}

func TestLogTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		want   string
	}{
		{0.1, 10, "0.1 0.2 0.5 1 2 5 10"},
		{0.01, 100, "0.01 0.1 1 10 100"},
	}
	for _, tt := range tests {
		var got []string
		for _, tk := range logTicks(tt.lo, tt.hi) {
			got = append(got, tk.Label)
		}
		if g := strings.Join(got, " "); g != tt.want {
			t.Errorf("logTicks(%v, %v) = %q, want %q", tt.lo, tt.hi, g, tt.want)
		}
	}
}
