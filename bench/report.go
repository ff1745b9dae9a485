package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything one run measured.
type Report struct {
	Scenario string         `json:"scenario"`
	Machine  Machine        `json:"machine"`
	Started  time.Time      `json:"started"`
	Seconds  float64        `json:"seconds"`
	Options  OptionsSummary `json:"options"`
	Phases   []Phase        `json:"phases"`
	Outage   *Outage        `json:"outage,omitempty"`
	Checks   []Check        `json:"checks"`
	// LoadBefore and LoadAfter are /proc/loadavg at the start and the end of the run: a
	// machine busy with something else makes every number lower.
	LoadBefore string `json:"loadavg_before,omitempty"`
	LoadAfter  string `json:"loadavg_after,omitempty"`
}

// Machine describes where the run took place.
type Machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu,omitempty"`
	GOOS   string `json:"goos"`
	GOARCH string `json:"goarch"`
	Go     string `json:"go"`
}

// OptionsSummary is the part of the Options that shapes the numbers.
type OptionsSummary struct {
	Targets         []string `json:"targets"`
	Concurrency     []int    `json:"concurrency"`
	PhaseSeconds    float64  `json:"phase_seconds"`
	ChangesPerPost  int      `json:"changes_per_post"`
	BatchChanges    int      `json:"batch_changes"`
	BodyBytes       int      `json:"body_bytes,omitempty"`
	Rate            int      `json:"rate,omitempty"`
	BadSig          float64  `json:"bad_sig,omitempty"`
	SinkConcurrency int      `json:"sink_concurrency"`
	Changes         int      `json:"changes,omitempty"`
	RelayLogLevel   string   `json:"relay_log_level"`
	Rounds          int      `json:"rounds,omitempty"`
	Exe             string   `json:"exe,omitempty"`
	CompareExe      string   `json:"compare_exe,omitempty"`
	SpoolSeed       string   `json:"spool_seed,omitempty"`
}

func summarizeOptions(o Options) OptionsSummary {
	s := OptionsSummary{Targets: o.Targets, Concurrency: o.Concurrency, PhaseSeconds: o.Duration.Seconds(),
		ChangesPerPost: o.ChangesPerPost, BatchChanges: max(o.BatchChanges, 0), BodyBytes: o.BodyBytes, Rate: o.Rate,
		BadSig: o.BadSig, SinkConcurrency: o.SinkConcurrency, RelayLogLevel: o.RelayLogLevel,
		Rounds: o.Rounds, Exe: o.Exe, CompareExe: o.CompareExe, SpoolSeed: o.SpoolSeed}
	if o.Scenario == ScenarioOutage {
		s.Changes = o.Changes
	}
	return s
}

// Phase is one target under one load.
type Phase struct {
	Label  string `json:"phase"`
	Target string `json:"target"`
	// Build is "" for Options.Exe's targets, BuildCompare for Options.CompareExe's.
	Build string `json:"build,omitempty"`
	// Round counts the throughput scenario's rounds from 1.
	Round          int `json:"round,omitempty"`
	Concurrency    int `json:"concurrency"`
	ChangesPerPost int `json:"changes_per_post"`
	Rate           int `json:"rate,omitempty"`
	// Seconds is how long the load ran.
	Seconds float64 `json:"seconds"`
	// Requests were sent; Acked (good signature) were answered 200; Rejected (bad signature)
	// were answered 401 as they must be; BadAccepted (bad signature) were answered 200, a
	// bug; Failed is everything else.
	Requests    int64         `json:"requests"`
	Acked       int64         `json:"acked"`
	Rejected    int64         `json:"rejected,omitempty"`
	BadAccepted int64         `json:"bad_signature_accepted,omitempty"`
	Failed      int64         `json:"failed,omitempty"`
	Statuses    map[int]int64 `json:"statuses"`
	FirstError  string        `json:"first_error,omitempty"`
	AckedPerSec float64       `json:"acked_per_sec"`
	// ChangesPerSec is AckedPerSec times the changes per POST.
	ChangesPerSec float64 `json:"changes_per_sec"`
	// AckLatency is from sending a request (or, at a fixed rate, from when it was due) to its
	// 200.
	AckLatency Latency `json:"ack_latency"`
	// CPUSeconds is the target's user+system CPU time from the start of the load until its
	// deliveries were in (hubrelay) or the load ended (references); CPUPerChangeUS divides it
	// by the changes acknowledged. Both are 0 where /proc is not available.
	CPUSeconds     float64 `json:"cpu_seconds"`
	CPUPerChangeUS float64 `json:"cpu_per_change_us"`
	// BenchCPUSeconds is the bench process's own CPU time over the same span: the load
	// generator and the relay's sinks, which share the machine with the target.
	BenchCPUSeconds float64 `json:"bench_cpu_seconds"`
	// PeakRSSMB is the target process's peak resident set (VmHWM), in MiB.
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// DrainSeconds is how long after the load the last acknowledged change took to reach
	// every sink (hubrelay only).
	DrainSeconds float64      `json:"drain_seconds,omitempty"`
	Sinks        []SinkResult `json:"sinks,omitempty"`
	Problems     []string     `json:"problems,omitempty"`
}

// SinkResult is what one of the relay's sinks received.
type SinkResult struct {
	Name string `json:"name"`
	Tally
	// Requests is the deliveries answered 200; Refused those answered 503 (outage).
	Requests int64 `json:"requests"`
	Refused  int64 `json:"refused,omitempty"`
	// DeliveredPerSec is Delivered over the time from the start of the load (outage: from
	// the sinks' return) to the last arrival.
	DeliveredPerSec float64 `json:"delivered_per_sec"`
	// E2E is from the relay accepting a change (the envelope's received_at) to its arrival.
	E2E Latency `json:"e2e_latency"`
}

// Outage is the result of the outage scenario.
type Outage struct {
	Target  string `json:"target"`
	Changes int    `json:"changes"`
	// Phase is the backlog's ingest with both sinks down, and its drain once they returned.
	Phase Phase `json:"phase"`
	// RSS samples the relay's resident set every 500ms from its start.
	RSS                []RSSSample `json:"rss"`
	PeakRSSMB          float64     `json:"peak_rss_mb"`
	PeakAnonMB         float64     `json:"peak_anon_mb"`
	RSSAfterIngestMB   float64     `json:"rss_after_ingest_mb"`
	SpoolMB            float64     `json:"spool_mb"`
	RecoveredAtSeconds float64     `json:"recovered_at_seconds"`
	DrainSeconds       float64     `json:"drain_seconds"`
}

// RSSSample is the relay's resident set at one moment, in MiB: all of it, and the part that
// is anonymous memory (heap, stacks) rather than file pages mapped from the spool, which the
// kernel can drop at will.
type RSSSample struct {
	Seconds float64 `json:"t"`
	MB      float64 `json:"mb"`
	AnonMB  float64 `json:"anon_mb"`
}

// Check compares one measured value with its target from the issue.
type Check struct {
	Name string `json:"name"`
	// Value is what was measured: a ratio of hubrelay to the reference, or an absolute value.
	Value float64 `json:"value"`
	// Hubrelay and Reference are the two values of a ratio (Reference 0 for absolute checks).
	Hubrelay  float64 `json:"hubrelay"`
	Reference float64 `json:"reference,omitempty"`
	Unit      string  `json:"unit"`
	Target    string  `json:"target"`
	Met       bool    `json:"met"`
	// Build is "" for Options.Exe, BuildCompare for Options.CompareExe.
	Build string `json:"build,omitempty"`
	// Rounds holds the value of each round when there were several; Value is their median
	// (a sum for counts).
	Rounds []float64 `json:"rounds,omitempty"`
	// limit and atLeast are the bound Target describes (limit 0: none); sum makes the rounds
	// add up instead of taking the median.
	limit   float64
	atLeast bool
	sum     bool
}

// BuildCompare is the Build of the phases and checks of Options.CompareExe.
const BuildCompare = "compare"

func (p *Phase) fromLoad(res *loadResult) {
	p.Seconds = res.end.Sub(res.start).Seconds()
	p.Requests, p.Acked, p.Rejected, p.BadAccepted, p.Failed = res.requests, res.acked, res.rejected, res.badAccepted, res.failed
	p.Statuses, p.FirstError = res.statuses, res.firstErr
	if p.Seconds > 0 {
		p.AckedPerSec = float64(res.acked) / p.Seconds
		p.ChangesPerSec = p.AckedPerSec * float64(p.ChangesPerPost)
	}
	p.AckLatency = summarize(res.ackLatency)
	if res.badAccepted > 0 {
		p.Problems = append(p.Problems, fmt.Sprintf("%d requests with a bad signature were answered 200", res.badAccepted))
	}
}

func (p *Phase) setUsage(before, after, selfBefore, selfAfter procUsage, err error) {
	if err != nil {
		return
	}
	p.BenchCPUSeconds = (selfAfter.cpu - selfBefore.cpu).Seconds()
	p.CPUSeconds = (after.cpu - before.cpu).Seconds()
	if changes := p.Acked * int64(p.ChangesPerPost); changes > 0 {
		p.CPUPerChangeUS = p.CPUSeconds * 1e6 / float64(changes)
	}
	p.PeakRSSMB = mb(after.peak)
}

// progressLine is the one-line summary printed as the run goes.
func (p *Phase) progressLine() string {
	s := fmt.Sprintf("%-26s %-16s %8.0f req/s %9.0f changes/s  ack p50 %6.2fms p99 %7.2fms",
		p.roundLabel(), p.targetName(), p.AckedPerSec, p.ChangesPerSec, p.AckLatency.P50, p.AckLatency.P99)
	for _, s2 := range p.Sinks {
		s += fmt.Sprintf("  %s %.0f/s lost %d pending %d dup %d", s2.Name, s2.DeliveredPerSec, s2.Lost, s2.Pending, s2.Duplicated)
	}
	if p.Failed > 0 {
		s += fmt.Sprintf("  %d failed (%s)", p.Failed, p.FirstError)
	}
	return s
}

// find returns the phase of target at concurrency c with k changes per POST (the first round's,
// of Options.Exe's build).
func (r *Report) find(target string, c, k int) *Phase {
	for i := range r.Phases {
		p := &r.Phases[i]
		if p.Target == target && p.Concurrency == c && p.ChangesPerPost == k && p.Build == "" {
			return p
		}
	}
	return nil
}

// checks compares a throughput report with the issue's targets, where both sides ran.
func checks(r *Report) []Check {
	var out []Check
	if len(r.Options.Concurrency) == 0 {
		return out
	}
	c, k := slices.Max(r.Options.Concurrency), r.Options.ChangesPerPost
	ref := r.find(TargetReferenceFsync, c, k)
	out = append(out, issue19Checks(r, c, k)...)
	for _, target := range []string{TargetHubrelay, TargetHubrelayBatch, TargetHubrelayPostgres} {
		hub := r.find(target, c, k)
		if hub == nil {
			continue
		}
		if ref != nil {
			out = append(out,
				ratio(fmt.Sprintf("%s: %s acked req/s vs reference-fsync", hub.Label, target), hub.AckedPerSec, ref.AckedPerSec, "req/s", 0.7, true),
				ratio(fmt.Sprintf("%s: %s p99 ack latency vs reference-fsync", hub.Label, target), hub.AckLatency.P99, ref.AckLatency.P99, "ms", 2, false))
		}
		if bare := r.find(TargetReference, c, k); bare != nil {
			out = append(out, ratio(fmt.Sprintf("%s: %s acked req/s vs reference (no fsync)", hub.Label, target), hub.AckedPerSec, bare.AckedPerSec, "req/s", 0, true))
		}
		if kb := r.Options.BatchChanges; kb > 0 && kb != k {
			if h, f := r.find(target, c, kb), r.find(TargetReferenceFsync, c, kb); h != nil && f != nil {
				out = append(out, ratio(fmt.Sprintf("%s: %s changes/s vs reference-fsync", h.Label, target), h.ChangesPerSec, f.ChangesPerSec, "changes/s", 0.7, true))
			}
		}
		if k == 1 {
			floor := 3000.0
			if target == TargetHubrelayBatch {
				floor = 9000
			}
			for _, s := range hub.Sinks {
				out = append(out, absolute(fmt.Sprintf("%s: %s changes/s delivered to %s", hub.Label, target, s.Name), s.DeliveredPerSec, "changes/s", floor, true))
			}
		}
		out = append(out, lossChecks(r, target)...)
	}
	// Issue 16's targets: Postgres mode at >= 0.5x the embedded mode's acked req/s, p99 <= 3x.
	if pg, emb := r.find(TargetHubrelayPostgres, c, k), r.find(TargetHubrelay, c, k); pg != nil && emb != nil {
		out = append(out,
			ratio(fmt.Sprintf("%s: hubrelay-postgres acked req/s vs hubrelay (embedded)", pg.Label), pg.AckedPerSec, emb.AckedPerSec, "req/s", 0.5, true),
			ratio(fmt.Sprintf("%s: hubrelay-postgres p99 ack latency vs hubrelay (embedded)", pg.Label), pg.AckLatency.P99, emb.AckLatency.P99, "ms", 3, false))
	}
	return out
}

// issue19Checks are the targets of issue 19 (performance, round two), at the run's largest
// concurrency c with k changes per POST and with the many-changes phase, where both sides ran:
//   - hubrelay with its sinks down (ingest alone) against reference-fsync: req/s >= 0.9x, p99
//     ack <= 1.5x, and changes/s of the many-changes phase >= 0.8x;
//   - the relay's CPU per change with two unbatched HTTP sinks (hubrelay, deliveries included)
//     against reference-fsync's CPU per request: <= 3x, the three HTTP exchanges it must make;
//   - with sink batching, the many-changes phase's delivered changes/s of each sink against
//     the changes/s acknowledged: >= 0.9x, a backlog that does not grow.
func issue19Checks(r *Report, c, k int) []Check {
	var out []Check
	kb := r.Options.BatchChanges
	ref := r.find(TargetReferenceFsync, c, k)
	if down := r.find(TargetHubrelaySinksDown, c, k); down != nil && ref != nil {
		out = append(out,
			ratio(fmt.Sprintf("%s: sinks-down ingest req/s vs reference-fsync", down.Label), down.AckedPerSec, ref.AckedPerSec, "req/s", 0.9, true),
			ratio(fmt.Sprintf("%s: sinks-down ingest p99 ack vs reference-fsync", down.Label), down.AckLatency.P99, ref.AckLatency.P99, "ms", 1.5, false))
	}
	if kb > 0 && kb != k {
		if down, f := r.find(TargetHubrelaySinksDown, c, kb), r.find(TargetReferenceFsync, c, kb); down != nil && f != nil {
			out = append(out, ratio(fmt.Sprintf("%s: sinks-down ingest changes/s vs reference-fsync", down.Label), down.ChangesPerSec, f.ChangesPerSec, "changes/s", 0.8, true))
		}
	}
	if hub := r.find(TargetHubrelay, c, k); hub != nil && ref != nil && hub.CPUPerChangeUS > 0 {
		out = append(out, ratio(fmt.Sprintf("%s: relay CPU per change (2 unbatched http sinks) vs reference-fsync CPU per request", hub.Label),
			hub.CPUPerChangeUS, ref.CPUPerChangeUS, "µs", 3, false))
	}
	if kb > 0 && kb != k {
		if b := r.find(TargetHubrelayBatch, c, kb); b != nil {
			for _, s := range b.Sinks {
				out = append(out, ratio(fmt.Sprintf("%s: hubrelay-batch delivered/s of %s vs changes/s acknowledged", b.Label, s.Name),
					s.DeliveredPerSec, b.ChangesPerSec, "changes/s", 0.9, true))
			}
		}
	}
	return append(out, lossChecks(r, TargetHubrelaySinksDown)...)
}

// lossChecks checks that no phase of target lost a change.
func lossChecks(r *Report, target string) []Check {
	var lost, dup, phases int
	all := slices.Clone(r.Phases)
	if r.Outage != nil {
		all = append(all, r.Outage.Phase)
	}
	for _, p := range all {
		if p.Target != target || len(p.Sinks) == 0 {
			continue
		}
		phases++
		for _, s := range p.Sinks {
			lost += s.Lost
			dup += s.Duplicated
		}
	}
	if phases == 0 {
		return nil
	}
	lc := absolute(fmt.Sprintf("all phases: %s changes lost", target), float64(lost), "changes", 0, false)
	dc := info(fmt.Sprintf("all phases: %s duplicate deliveries (allowed, at least once)", target), float64(dup), "deliveries")
	lc.sum, dc.sum = true, true
	return []Check{lc, dc}
}

// info is a measured value with no target.
func info(name string, v float64, unit string) Check {
	return Check{Name: name, Value: v, Hubrelay: v, Unit: unit, Target: "-", Met: true}
}

// outageChecks compares an outage report with the issue's targets.
func outageChecks(r *Report) []Check {
	o := r.Outage
	if o == nil {
		return nil
	}
	var out []Check
	name := fmt.Sprintf("%d-change backlog", o.Changes)
	// Issue 19: below 100 MB (95.4 MiB), for the 1M-change backlog.
	out = append(out, absolute(name+": relay peak RSS (VmHWM), MB", o.PeakRSSMB*(1<<20)/1e6, "MB", 100, false))
	if len(r.Phases) > 0 {
		out = append(out, ratio(name+": acked req/s with sinks down vs up", o.Phase.AckedPerSec, r.Phases[0].AckedPerSec, "req/s", 0, true))
	}
	for _, s := range o.Phase.Sinks {
		out = append(out, absolute(fmt.Sprintf("%s: drain rate of %s (%s)", name, s.Name, o.Target), s.DeliveredPerSec, "changes/s", 5000, true))
	}
	out = append(out, absolute(name+": relay anonymous memory peak (heap, not spool pages)", o.PeakAnonMB, "MiB", 150, false))
	return append(out, lossChecks(r, o.Target)...)
}

// ratio checks hub/ref against limit: at least limit when atLeast, else at most. A zero
// limit makes an informative ratio that is always met.
func ratio(name string, hub, ref float64, unit string, limit float64, atLeast bool) Check {
	c := Check{Name: name, Hubrelay: hub, Reference: ref, Unit: unit, Met: true, Target: "-", limit: limit, atLeast: atLeast}
	if ref > 0 {
		c.Value = hub / ref
	}
	if limit > 0 {
		c.Target, c.Met = bound(c.Value, limit, atLeast, "×")
		if ref <= 0 {
			c.Met = false
		}
	}
	return c
}

// absolute checks v against limit: at least limit when atLeast, else at most.
func absolute(name string, v float64, unit string, limit float64, atLeast bool) Check {
	c := Check{Name: name, Value: v, Hubrelay: v, Unit: unit, limit: limit, atLeast: atLeast}
	c.Target, c.Met = bound(v, limit, atLeast, " "+unit)
	return c
}

func bound(v, limit float64, atLeast bool, unit string) (string, bool) {
	if atLeast {
		return fmt.Sprintf(">= %g%s", limit, unit), v >= limit
	}
	return fmt.Sprintf("<= %g%s", limit, unit), v <= limit
}

// WriteJSON writes the whole report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as tables a person reads: every phase, the sinks of the relay
// phases, the outage if any, and the checks against the issue's targets.
func (r *Report) WriteTable(w io.Writer) error {
	ew := &errWriter{w: w}
	m := r.Machine
	fmt.Fprintf(ew, "hubrelay bench, scenario %s: %d CPUs (%s), %s/%s, %s; %gs phases, sink concurrency %d, relay log level %s; took %.0fs\n",
		r.Scenario, m.CPUs, orDash(m.CPU), m.GOOS, m.GOARCH, m.Go, r.Options.PhaseSeconds, r.Options.SinkConcurrency, r.Options.RelayLogLevel, r.Seconds)
	if r.LoadBefore != "" {
		fmt.Fprintf(ew, "load average before %s, after %s (the bench's own load included)\n", r.LoadBefore, r.LoadAfter)
	}
	if r.Options.SpoolSeed != "" {
		fmt.Fprintf(ew, "every embedded hubrelay target started on a copy of the spool in %s\n", r.Options.SpoolSeed)
	}
	fmt.Fprintln(ew)
	phases := slices.Clone(r.Phases)
	if r.Outage != nil {
		phases = append(phases, r.Outage.Phase)
	}
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\ttarget\treq/s\tchanges/s\tack p50 ms\tp90\tp99\tmax\tCPU µs/change\ttarget cores\tbench cores\tpeak RSS MiB\tfailed\t")
	for _, p := range phases {
		span := p.Seconds + p.DrainSeconds
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%.2f\t%.2f\t%.1f\t%d\t\n", p.roundLabel(), p.targetName(), p.AckedPerSec, p.ChangesPerSec,
			p.AckLatency.P50, p.AckLatency.P90, p.AckLatency.P99, p.AckLatency.Max, p.CPUPerChangeUS,
			p.CPUSeconds/span, p.BenchCPUSeconds/span, p.PeakRSSMB, p.Failed)
	}
	tw.Flush()

	fmt.Fprintln(ew, "\ndeliveries (relay phases): rate from the start of the load, end to end from the relay's received_at")
	tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\ttarget\tsink\tdelivered/s\te2e p50 ms\tp90\tp99\tmax\tacked\tdelivered\tpending\tlost\tdup\tdrain s\t")
	for _, p := range phases {
		for _, s := range p.Sinks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.1f\t%.1f\t%.1f\t%.0f\t%d\t%d\t%d\t%d\t%d\t%.1f\t\n", p.roundLabel(), p.targetName(), s.Name, s.DeliveredPerSec,
				s.E2E.P50, s.E2E.P90, s.E2E.P99, s.E2E.Max, s.Expected, s.Delivered, s.Pending, s.Lost, s.Duplicated, p.DrainSeconds)
		}
	}
	tw.Flush()

	if o := r.Outage; o != nil {
		fmt.Fprintf(ew, "\noutage (%s): %d changes posted with both sinks answering 503, then the sinks returned\n", o.Target, o.Changes)
		fmt.Fprintf(ew, "  ingest: %.0f changes/s acknowledged, ack p99 %.2fms; spool %.0f MiB; RSS after ingest %.1f MiB, peak %.1f MiB (anonymous memory peak %.1f MiB, the rest spool pages)\n",
			o.Phase.ChangesPerSec, o.Phase.AckLatency.P99, o.SpoolMB, o.RSSAfterIngestMB, o.PeakRSSMB, o.PeakAnonMB)
		for _, s := range o.Phase.Sinks {
			fmt.Fprintf(ew, "  drain %s: %d changes at %.0f changes/s (from the sinks' return), %d refused while down\n", s.Name, s.Delivered, s.DeliveredPerSec, s.Refused)
		}
		fmt.Fprintf(ew, "  RSS MiB over time: %s\n", rssSeries(o.RSS, 12))
	}

	var problems []string
	for _, p := range phases {
		for _, pr := range p.Problems {
			problems = append(problems, fmt.Sprintf("%s, %s: %s", p.roundLabel(), p.targetName(), pr))
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(ew, "\nproblems:\n  %s\n", strings.Join(problems, "\n  "))
	}

	if len(r.Checks) > 0 {
		fmt.Fprintln(ew, "\nagainst the targets (ratios from this run; with rounds, the median of the rounds' ratios, each listed):")
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "check\thubrelay\treference\tvalue\ttarget\tresult")
		for _, c := range r.Checks {
			refCol, val := "-", fmt.Sprintf("%.0f %s", c.Value, c.Unit)
			if c.Reference > 0 {
				refCol, val = fmt.Sprintf("%.2f %s", c.Reference, c.Unit), fmt.Sprintf("%.2f×", c.Value)
			}
			result := "met"
			switch {
			case c.Target == "-":
				result = "(info)"
			case !c.Met:
				result = "MISSED"
			}
			name := c.Name
			if c.Build != "" {
				name = "[" + c.Build + "] " + name
			}
			if len(c.Rounds) > 0 {
				val += " " + roundList(c.Rounds, c.Reference > 0)
			}
			fmt.Fprintf(tw, "%s\t%.2f %s\t%s\t%s\t%s\t%s\n", name, c.Hubrelay, c.Unit, refCol, val, c.Target, result)
		}
		tw.Flush()
	}
	return ew.err
}

// roundLabel is the phase's label with its round, if any.
func (p *Phase) roundLabel() string {
	if p.Round > 0 {
		return fmt.Sprintf("%s #%d", p.Label, p.Round)
	}
	return p.Label
}

// targetName is the target with its build, if not the main one.
func (p *Phase) targetName() string {
	if p.Build != "" {
		return p.Target + " [" + p.Build + "]"
	}
	return p.Target
}

// roundList renders per-round values: "(0.81 0.77 0.90)".
func roundList(v []float64, isRatio bool) string {
	parts := make([]string, len(v))
	for i, x := range v {
		if isRatio {
			parts[i] = fmt.Sprintf("%.2f", x)
		} else {
			parts[i] = fmt.Sprintf("%.0f", x)
		}
	}
	return "(" + strings.Join(parts, " ") + ")"
}

// rssSeries renders at most n evenly spaced samples.
func rssSeries(s []RSSSample, n int) string {
	if len(s) == 0 {
		return "-"
	}
	var parts []string
	step := max(1, (len(s)+n-1)/n)
	for i := 0; i < len(s); i += step {
		parts = append(parts, fmt.Sprintf("%.0fs %.0f (anon %.0f)", s[i].Seconds, s[i].MB, s[i].AnonMB))
	}
	if last := s[len(s)-1]; (len(s)-1)%step != 0 {
		parts = append(parts, fmt.Sprintf("%.0fs %.0f (anon %.0f)", last.Seconds, last.MB, last.AnonMB))
	}
	return strings.Join(parts, ", ")
}

// loadAvg returns the three load averages of /proc/loadavg, "" where there is none.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel(cpuinfo string) string {
	for line := range strings.SplitSeq(cpuinfo, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// errWriter remembers the first write error so the table code can ignore them.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}
