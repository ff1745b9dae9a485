package config

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hubrelay/hubrelay/rules"
	"gopkg.in/yaml.v3"
)

// rules decodes and compiles the rules list. sinkNames holds every sink name defined. It
// returns nil when anything is wrong.
func (d *decoder) rules(n *yaml.Node, path string, sinkNames map[string]bool) *rules.Set {
	before := len(d.probs)
	items, ok := d.sequence(n, path)
	if !ok {
		return nil
	}
	known := make([]string, 0, len(sinkNames))
	for name := range sinkNames {
		known = append(known, name)
	}
	slices.Sort(known)
	var (
		specs []rules.Spec
		nodes []*yaml.Node
		lines = make(map[string]int)
	)
	for i, it := range items {
		p := index(path, i)
		f, ok := d.mapping(it, p, "name", "object", "field", "verb", "when", "sinks")
		if !ok {
			continue
		}
		var sp rules.Spec
		if e, ok := f["name"]; ok {
			if v, ok := d.nonEmpty(e.val, join(p, "name")); ok {
				if line, dup := lines[v]; dup {
					d.problem(e.val, join(p, "name"), "duplicate rule name %q (first at line %d)", v, line)
				}
				lines[v] = e.val.Line
				sp.Name = v
			}
		} else {
			d.missing(it, p, "name", "every rule needs a name, reported with each change it routes")
		}
		for _, l := range []struct {
			key string
			dst *[]string
		}{{"object", &sp.Objects}, {"field", &sp.Fields}, {"verb", &sp.Verbs}} {
			if e, ok := f[l.key]; ok {
				if v, ok := d.strList(e.val, join(p, l.key)); ok {
					*l.dst = v
				}
			}
		}
		if e, ok := f["when"]; ok {
			wp := join(p, "when")
			if v, ok := d.nonEmpty(e.val, wp); ok {
				if _, err := rules.CompileWhen(v); err != nil {
					d.exprProblem(e.val, wp, v, err)
				} else {
					sp.When = v
				}
			}
		}
		if e, ok := f["sinks"]; ok {
			sp.Sinks = d.ruleSinks(e.val, join(p, "sinks"), sinkNames, known)
		} else {
			d.missing(it, p, "sinks", "list the sinks matching changes go to")
		}
		specs = append(specs, sp)
		nodes = append(nodes, it)
	}
	if len(d.probs) > before {
		return nil
	}
	set, err := rules.Compile(specs)
	if err != nil {
		// Unexpected: every part was checked above. Report each error at its rule anyway.
		for _, e := range unjoin(err) {
			var ce *rules.CompileError
			if errors.As(e, &ce) && ce.Index < len(nodes) {
				d.problem(nodes[ce.Index], join(index(path, ce.Index), ce.Part), "%v", ce.Err)
			} else {
				d.problem(resolve(n), path, "%v", e)
			}
		}
		return nil
	}
	return set
}

// ruleSinks decodes a rule's sinks: a non-empty list of defined sink names.
func (d *decoder) ruleSinks(n *yaml.Node, path string, sinkNames map[string]bool, known []string) []string {
	its := d.items(n, path)
	if len(its) == 0 && isEmptyList(n) {
		d.problem(resolve(n), path, "must name at least one sink")
		return nil
	}
	var out []string
	for _, it := range its {
		v, ok := d.nonEmpty(it.node, it.path)
		if !ok {
			continue
		}
		if !sinkNames[v] {
			hint := suggest(v, known)
			if hint == "" && len(known) > 0 && len(known) <= 10 {
				hint = fmt.Sprintf(" (sinks: %s)", orList(known))
			}
			d.problem(it.node, it.path, "unknown sink %q%s", v, hint)
			continue
		}
		out = append(out, v)
	}
	return out
}

// unjoin splits an errors.Join error.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Values of routing.on_rule_error.
const (
	OnRuleErrorDeadLetter = "dead_letter"
	OnRuleErrorNoMatch    = "no_match"
)

// routing decodes the routing section: the catch-all sinks and what a failed rule does.
func (d *decoder) routing(n *yaml.Node, path string, sinkNames map[string]bool, r *Routing) {
	f, ok := d.mapping(n, path, "unmatched_sinks", "on_rule_error")
	if !ok {
		return
	}
	if e, ok := f["unmatched_sinks"]; ok {
		known := make([]string, 0, len(sinkNames))
		for name := range sinkNames {
			known = append(known, name)
		}
		slices.Sort(known)
		r.UnmatchedSinks = d.ruleSinks(e.val, join(path, "unmatched_sinks"), sinkNames, known)
	}
	if e, ok := f["on_rule_error"]; ok {
		if v, ok := d.oneOf(e.val, join(path, "on_rule_error"), OnRuleErrorDeadLetter, OnRuleErrorNoMatch); ok {
			r.OnRuleError = v
		}
	}
}
