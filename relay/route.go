package relay

import (
	"sync/atomic"

	"github.com/hubrelay/hubrelay/rules"
)

// Router decides which sinks each change goes to. Its rule set is swapped atomically on reload:
// a request routes every one of its changes with the table it loaded first.
type Router struct {
	table atomic.Pointer[routeTable]
}

type routeTable struct {
	rules *rules.Set
	raw   map[string]bool // sinks that take the whole notification (body: raw)
}

// NewRouter returns a Router over set. rawSinks names the sinks configured with body: raw.
func NewRouter(set *rules.Set, rawSinks []string) *Router {
	r := &Router{}
	r.Swap(set, rawSinks)
	return r
}

// Swap replaces the rule set and the raw sink list in one step.
func (r *Router) Swap(set *rules.Set, rawSinks []string) {
	t := &routeTable{rules: set, raw: make(map[string]bool, len(rawSinks))}
	for _, s := range rawSinks {
		t.raw[s] = true
	}
	r.table.Store(t)
}

// Route is the result of routing one change.
type Route struct {
	Rules []string // names of the matched rules, in config order
	Sinks []string // sinks that get the change itself
	Raw   []string // sinks that get the whole notification instead
}

// snapshot returns the current table; callers route a whole request with one snapshot.
func (r *Router) snapshot() *routeTable { return r.table.Load() }

// RuleEnv is the expression environment of one change: what `when` expressions and Slack
// templates see. The value is decoded from its JSON only when withValue is set, and then
// lazily: rules.Set.Match decodes it only for a rule that could match and reads it.
func RuleEnv(ev *Event, withValue bool) *rules.Env {
	return ruleEnv(ev, withValue, rules.Projection{All: true})
}

// ruleEnv is RuleEnv decoding only what proj names of the value (see rules.Projection).
func ruleEnv(ev *Event, withValue bool, proj rules.Projection) *rules.Env {
	env := &rules.Env{
		Object:     ev.Object,
		Field:      ev.Field,
		Verb:       ev.Verb,
		Source:     ev.Source.String(),
		Entry:      rules.Entry{ID: ev.Entry.ID, UID: ev.Entry.UID, Time: ev.Entry.Time},
		App:        ev.App,
		ReceivedAt: ev.ReceivedAt,
	}
	if withValue && len(ev.Value) > 0 {
		raw := ev.Value
		env.LoadValue = func() any {
			v, err := parseProjected(raw, proj)
			if err != nil {
				return nil
			}
			return v
		}
	}
	return env
}

// route matches ev against t. onErr receives rule evaluation errors.
func (t *routeTable) route(ev *Event, onErr func(rule string, err error)) Route {
	env := ruleEnv(ev, t.rules.NeedsValue(), t.rules.Projection())
	m := t.rules.Match(env, onErr)
	rt := Route{Rules: m.Rules}
	if len(t.raw) == 0 {
		rt.Sinks = m.Sinks
		return rt
	}
	for _, s := range m.Sinks {
		if t.raw[s] {
			rt.Raw = append(rt.Raw, s)
		} else {
			rt.Sinks = append(rt.Sinks, s)
		}
	}
	return rt
}

// Route matches one change against the current rules (used by `hubrelay route`).
func (r *Router) Route(ev *Event, onErr func(rule string, err error)) Route {
	return r.snapshot().route(ev, onErr)
}
