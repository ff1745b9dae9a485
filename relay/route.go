package relay

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
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
	opts  RouteOptions
}

// RuleErrorSink is the built-in sink of changes a rule failed to evaluate for: its
// deliveries are dead-lettered at once (see NewRuleErrorSink), with a reason naming each
// failed rule and the class of its error, so the change stays recoverable: `hubrelay
// deadletter replay` routes it again with the current rules. Config refuses a sink of this
// name.
const RuleErrorSink = "rule-errors"

// RouteOptions are the routing settings beside the rules.
type RouteOptions struct {
	// Unmatched names the sinks that get every change no rule matched (a catch-all); none by
	// default: such a change is counted and logged.
	Unmatched []string
	// IgnoreRuleErrors makes a rule that fails to evaluate count as no match, as if the
	// change were not for it. By default the change also goes to RuleErrorSink.
	IgnoreRuleErrors bool
	// OrderBy holds the order_by expression of each sink that has one: it gives every change
	// routed to the sink its ordering key when the change is accepted (Route.Order).
	OrderBy map[string]*rules.Key
}

// NewRouter returns a Router over set with default options. rawSinks names the sinks
// configured with body: raw.
func NewRouter(set *rules.Set, rawSinks []string) *Router {
	r := &Router{}
	r.Swap(set, rawSinks)
	return r
}

// Swap replaces the rule set and the raw sink list in one step, with default options.
func (r *Router) Swap(set *rules.Set, rawSinks []string) {
	r.Configure(set, rawSinks, RouteOptions{})
}

// Configure replaces the rule set, the raw sink list and the options in one step.
func (r *Router) Configure(set *rules.Set, rawSinks []string, opts RouteOptions) {
	t := &routeTable{rules: set, raw: make(map[string]bool, len(rawSinks)), opts: opts}
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
	// Errors lists the rules that failed to evaluate (their error class, never payload).
	// Unless RouteOptions.IgnoreRuleErrors is set, Sinks then holds RuleErrorSink too.
	Errors []RuleError
	// CatchAll reports that no rule matched and Sinks are RouteOptions.Unmatched.
	CatchAll bool
	// Order holds the change's ordering key for each sink of Sinks whose order_by gave one.
	Order []OrderKey
	// OrderErrors lists the sinks whose order_by failed to evaluate for the change (the class
	// of the error, never payload); the change goes to them unordered.
	OrderErrors []OrderError
}

// OrderError names a sink whose order_by failed to evaluate for a change, and the class of
// the failure (rules.ErrorClass).
type OrderError struct {
	Sink  string
	Class string
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
	env := valueEnv(ev, withValue, proj)
	env.LoadConversation = func() string { return Conversation(ev) }
	return env
}

// valueEnv is ruleEnv without the conversation, which costs a closure per change: routing
// adds it only for rules that read it.
func valueEnv(ev *Event, withValue bool, proj rules.Projection) *rules.Env {
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

// route matches ev against t, leaving out the rules named in skip. onErr receives rule
// evaluation errors.
func (t *routeTable) route(ev *Event, skip []string, onErr func(rule string, err error)) Route {
	env := valueEnv(ev, t.rules.NeedsValue(), t.rules.Projection())
	if t.rules.NeedsConversation() {
		env.LoadConversation = func() string { return Conversation(ev) }
	}
	m := t.rules.MatchExcept(env, skip, onErr)
	var errs []RuleError
	for _, f := range m.Failed {
		errs = append(errs, RuleError{Rule: f.Rule, Class: rules.ErrorClass(f.Err)})
	}
	rt := Route{Rules: m.Rules, Errors: errs}
	sinks := m.Sinks
	if len(m.Rules) == 0 && len(t.opts.Unmatched) > 0 && (len(errs) == 0 || t.opts.IgnoreRuleErrors) {
		sinks, rt.CatchAll = t.opts.Unmatched, true
	}
	if len(errs) > 0 && !t.opts.IgnoreRuleErrors {
		// Match's slices may be shared with the rule set: never append to them in place.
		sinks = append(sinks[:len(sinks):len(sinks)], RuleErrorSink)
	}
	if len(t.raw) == 0 {
		rt.Sinks = sinks
	} else {
		for _, s := range sinks {
			if t.raw[s] {
				rt.Raw = append(rt.Raw, s)
			} else {
				rt.Sinks = append(rt.Sinks, s)
			}
		}
	}
	if len(t.opts.OrderBy) > 0 {
		t.order(ev, &rt)
	}
	return rt
}

// order fills rt.Order (and rt.OrderErrors) with the ordering keys of ev for the sinks of rt
// that have an order_by. Key expressions see the whole value and the conversation.
func (t *routeTable) order(ev *Event, rt *Route) {
	var env *rules.Env
	for _, s := range rt.Sinks {
		k := t.opts.OrderBy[s]
		if k == nil {
			continue
		}
		if env == nil {
			env = ruleEnv(ev, true, rules.Projection{All: true})
		}
		key, err := k.Eval(env)
		switch {
		case err != nil:
			rt.OrderErrors = append(rt.OrderErrors, OrderError{Sink: s, Class: rules.ErrorClass(err)})
		case key != "":
			rt.Order = append(rt.Order, OrderKey{Sink: s, Key: key})
		}
	}
}

// Route matches one change against the current rules (used by `hubrelay route`).
func (r *Router) Route(ev *Event, onErr func(rule string, err error)) Route {
	return r.snapshot().route(ev, nil, onErr)
}

// Reroute routes a dead-lettered change again with the current rules, except the rules that
// routed it when it was accepted (ev.Rules: their sinks had it). It is how `deadletter
// replay` recovers a change a rule failed to evaluate for, once the rule is fixed.
func (r *Router) Reroute(ev *Event, onErr func(rule string, err error)) Route {
	return r.snapshot().route(ev, ev.Rules, onErr)
}

// ruleErrorSink dead-letters every delivery it gets: see RuleErrorSink.
type ruleErrorSink struct{}

// NewRuleErrorSink returns the sink that takes the deliveries routed to RuleErrorSink. Run it
// with one attempt (RuleErrorSinkConfig): its error is permanent, and the dead letter's
// reason names each failed rule and its error class.
func NewRuleErrorSink() Sink { return ruleErrorSink{} }

// RuleErrorSinkConfig is how the delivery engine runs NewRuleErrorSink.
func RuleErrorSinkConfig() SinkConfig {
	return SinkConfig{Sink: NewRuleErrorSink(), Concurrency: 1, Retry: RetryPolicy{MaxAttempts: 1}}
}

func (ruleErrorSink) Name() string { return RuleErrorSink }

func (ruleErrorSink) Deliver(_ context.Context, ev *Event) error {
	return &StatusError{Msg: DescribeRuleErrors(ev.RuleErrors), Perm: true}
}

// DescribeRuleErrors says which rules failed and how: `rule "photos" failed to evaluate:
// missing member at column 9`, several joined with "; ".
func DescribeRuleErrors(errs []RuleError) string {
	if len(errs) == 0 {
		return "a rule failed to evaluate"
	}
	var b strings.Builder
	for i, e := range errs {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "rule %q failed to evaluate: %s", e.Rule, e.Class)
	}
	return b.String()
}

// parseProjected decodes what proj needs of a change value: the keys it names
// (jsonscan.ParseProjected), or the whole value when it needs everything.
func parseProjected(b []byte, proj rules.Projection) (any, error) {
	if proj.All {
		return jsonscan.Parse(b)
	}
	return jsonscan.ParseProjected(b, proj.Keys)
}
