package bench

import (
	"strings"
	"testing"
)

// TestRoundChecks: with rounds and a compare build, every check is the median of the rounds'
// ratios, each round's relay judged against that round's reference, the builds apart, and
// the lost counts added up.
func TestRoundChecks(t *testing.T) {
	ph := func(target, build string, round int, reqs float64, lost int) Phase {
		p := Phase{Label: "c=32, 1 change/POST", Target: target, Build: build, Round: round, Concurrency: 32, ChangesPerPost: 1, AckedPerSec: reqs}
		if target != TargetReferenceFsync {
			p.Sinks = []SinkResult{{Name: "sink-a", Tally: Tally{Lost: lost}}}
		}
		return p
	}
	r := &Report{Options: OptionsSummary{Concurrency: []int{32}, ChangesPerPost: 1}, Phases: []Phase{
		ph(TargetReferenceFsync, "", 1, 1000, 0), ph(TargetHubrelaySinksDown, BuildCompare, 1, 500, 0), ph(TargetHubrelaySinksDown, "", 1, 950, 0),
		ph(TargetReferenceFsync, "", 2, 2000, 0), ph(TargetHubrelaySinksDown, "", 2, 1000, 1), ph(TargetHubrelaySinksDown, BuildCompare, 2, 1400, 0),
		ph(TargetReferenceFsync, "", 3, 1000, 0), ph(TargetHubrelaySinksDown, BuildCompare, 3, 600, 0), ph(TargetHubrelaySinksDown, "", 3, 920, 2),
	}}
	got := map[string]Check{}
	for _, c := range roundChecks(r) {
		got[c.Build+"|"+c.Name] = c
	}
	find := func(build, part string) Check {
		t.Helper()
		for k, c := range got {
			if strings.HasPrefix(k, build+"|") && strings.Contains(c.Name, part) {
				return c
			}
		}
		t.Fatalf("no %q check %q in %v", build, part, got)
		return Check{}
	}
	after := find("", "sinks-down ingest req/s")
	if after.Value != 0.92 || len(after.Rounds) != 3 || after.Met != true {
		t.Errorf("after: value %v rounds %v met %v; want the median 0.92 of (0.95 0.5 0.92), met", after.Value, after.Rounds, after.Met)
	}
	before := find(BuildCompare, "sinks-down ingest req/s")
	if before.Value != 0.6 || before.Met {
		t.Errorf("compare: value %v rounds %v met %v; want the median 0.6 of (0.5 0.7 0.6), missed", before.Value, before.Rounds, before.Met)
	}
	if lost := find("", "changes lost"); lost.Value != 3 || lost.Met {
		t.Errorf("after lost: %v met %v; want 3 (1+2), missed", lost.Value, lost.Met)
	}
	if lost := find(BuildCompare, "changes lost"); lost.Value != 0 || !lost.Met {
		t.Errorf("compare lost: %v met %v; want 0, met", lost.Value, lost.Met)
	}
}
