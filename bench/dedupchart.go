package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// DedupPoint is one size of the dedup index as relay/spool's BenchmarkDedupScale measured it
// (its output lines "dedup-scale {json}").
type DedupPoint struct {
	Keys          int     `json:"keys"`
	Runs          int     `json:"runs"`
	FilterMB      float64 `json:"filter_mb"`
	HeapMB        float64 `json:"heap_mb"`
	RSSMB         float64 `json:"rss_mb"`
	RSSFileMB     float64 `json:"rss_file_mb"`
	LookupAbsent  float64 `json:"lookup_absent_ns"`
	LookupPresent float64 `json:"lookup_present_ns"`
	AcceptPerSec  float64 `json:"accept_per_s"`
	AcceptCPUUS   float64 `json:"accept_cpu_us"`
	PrefillPerSec float64 `json:"prefill_per_s"`
	SpoolMB       float64 `json:"spool_mb"`
}

// ReadDedupPoints reads the "dedup-scale {json}" lines of a benchmark's output; other lines
// are skipped.
func ReadDedupPoints(r io.Reader) ([]DedupPoint, error) {
	var out []DedupPoint
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "dedup-scale ")
		if !ok {
			continue
		}
		var p DedupPoint
		if err := json.Unmarshal([]byte(rest), &p); err != nil {
			return nil, fmt.Errorf("dedup-scale line %q: %w", rest, err)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read dedup-scale lines: %w", err)
	}
	return out, nil
}

// WriteDedupChart draws the dedup index's growth curve: memory, lookup cost and 1-item Accept
// rate against the keys in the window, for each named set of points (e.g. before and after a
// change; the first set solid, the others dashed).
func WriteDedupChart(w io.Writer, names []string, sets [][]DedupPoint) error {
	x := axis{Label: "keys in the dedup window", Log: true}
	mem := chart{Title: "Heap with the spool open (solid), process RSS, pages released as serve does (dashed)", X: x, Y: axis{Label: "MiB", Zero: true}}
	look := chart{Title: "Lookup CPU: absent key (solid), present (dashed)", X: x, Y: axis{Label: "ns per lookup", Zero: true}}
	acc := chart{Title: "Accept CPU per item: empty index / this one", X: x, Y: axis{Label: "ratio to 0 keys", Zero: true}}
	for i, pts := range sets {
		name := names[i]
		var filt, rss, absent, present, ratio []point
		var base float64
		for _, p := range pts {
			if p.Keys == 0 {
				base = p.AcceptCPUUS
				continue // a log axis has no 0
			}
			k := float64(p.Keys)
			filt = append(filt, point{k, p.HeapMB})
			rss = append(rss, point{k, p.RSSMB})
			absent = append(absent, point{k, p.LookupAbsent})
			present = append(present, point{k, p.LookupPresent})
			if base > 0 && p.AcceptCPUUS > 0 {
				ratio = append(ratio, point{k, base / p.AcceptCPUUS})
			}
		}
		mem.Series = append(mem.Series, series{Legend: name, Points: filt, Color: i, Markers: true}, series{Points: rss, Color: i, Dashed: true, Markers: true})
		look.Series = append(look.Series, series{Legend: name, Points: absent, Color: i, Markers: true}, series{Points: present, Color: i, Dashed: true, Markers: true})
		acc.Series = append(acc.Series, series{Legend: name, Points: ratio, Color: i, Markers: true})
	}
	return writeCharts(w, []chart{mem, look, acc})
}
