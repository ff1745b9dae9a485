package bench

import (
	"slices"
)

// roundChecks computes the throughput checks of every round and build of r and merges each
// check over the rounds: the median of its per-round values (the sum, for counts), judged
// against its bound again. The compare build's checks come first, then Options.Exe's. A
// round's compare build is judged against the references of the same round.
func roundChecks(r *Report) []Check {
	rounds := 1
	builds := []string{""}
	for _, p := range r.Phases {
		rounds = max(rounds, p.Round)
		if p.Build == BuildCompare && !slices.Contains(builds, BuildCompare) {
			builds = []string{BuildCompare, ""}
		}
	}
	var out []Check
	for _, build := range builds {
		var names []string
		per := map[string][]Check{}
		for round := 1; round <= rounds; round++ {
			view := *r
			view.Phases = nil
			for _, p := range r.Phases {
				if max(p.Round, 1) != round || (p.Build != build && p.relay()) {
					continue
				}
				p.Build = "" // find looks at the build under judgement as the main one
				view.Phases = append(view.Phases, p)
			}
			for _, c := range checks(&view) {
				if _, ok := per[c.Name]; !ok {
					names = append(names, c.Name)
				}
				per[c.Name] = append(per[c.Name], c)
			}
		}
		for _, name := range names {
			out = append(out, mergeRounds(per[name], build))
		}
	}
	return out
}

// relay reports whether the phase ran a hubrelay target (not a reference).
func (p *Phase) relay() bool { return p.Target != TargetReference && p.Target != TargetReferenceFsync }

// mergeRounds merges one check's per-round values.
func mergeRounds(cs []Check, build string) Check {
	c := cs[0]
	c.Build = build
	if len(cs) == 1 {
		return c
	}
	var vals, hubs, refs []float64
	for _, x := range cs {
		vals, hubs, refs = append(vals, x.Value), append(hubs, x.Hubrelay), append(refs, x.Reference)
	}
	c.Rounds = vals
	if c.sum {
		c.Value, c.Hubrelay = sum(vals), sum(hubs)
	} else {
		c.Value, c.Hubrelay, c.Reference = median(vals), median(hubs), median(refs)
	}
	if c.Target != "-" { // a bound, not an informative value
		_, c.Met = bound(c.Value, c.limit, c.atLeast, "")
	}
	return c
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func sum(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t
}
