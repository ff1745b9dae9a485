package rules

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
)

// Entry is what `entry` means in expressions: the envelope entry a change came from.
type Entry struct {
	ID   string `expr:"id"`
	UID  string `expr:"uid"`
	Time int64  `expr:"time"`
}

// Env is what a `when` expression or a Slack text template sees for one change.
type Env struct {
	Object string `expr:"object"`
	Field  string `expr:"field"`
	Verb   string `expr:"verb"`
	// Source says where in the entry the change was found: changes, changed_fields,
	// messaging, standby, entry (field and value in the entry itself) or unknown (entry
	// content the decoder does not recognise; value is the whole entry).
	Source string `expr:"source"`
	// Value is the change value decoded from JSON (map[string]any, []any, float64, string,
	// bool), or nil when the change has none or the caller did not decode it (see
	// Set.NeedsValue).
	Value      any       `expr:"value"`
	Entry      Entry     `expr:"entry"`
	App        string    `expr:"app"`
	ReceivedAt time.Time `expr:"received_at"`
	// LoadValue, when set and Value is nil, decodes the value on first use: Match calls it at
	// most once, and only if a rule that could match reads `value`, so changes no such rule
	// looks at are never decoded. Expressions cannot see it.
	LoadValue func() any `expr:"-"`
	// Conversation is the change's built-in conversation key (relay.Conversation defines it
	// per object: the business side plus the other party), the usual `order_by` of a chatbot.
	Conversation string `expr:"conversation"`
	// LoadConversation, when set and Conversation is "", works the key out on first use, as
	// LoadValue does for Value, and only for an expression that reads `conversation`.
	LoadConversation func() string `expr:"-"`
}

// Spec is one rule as written in config. Positions in the config file are the config
// package's business; errors from Compile name the rule by index.
type Spec struct {
	Name string
	// Objects, Fields and Verbs list the accepted values, compared as exact strings. An empty
	// list accepts any value.
	Objects, Fields, Verbs []string
	// When is an optional boolean expression; "" means always.
	When string
	// Sinks names the sinks a matching change goes to; at least one.
	Sinks []string
}

// Match is the outcome of matching one change.
type Match struct {
	// Rules holds the names of the matching rules, in config order.
	Rules []string
	// Sinks holds the sinks of the matching rules, deduplicated, in first-seen order.
	Sinks []string
	// Failed lists the rules whose `when` failed to evaluate, in config order; they count as
	// not matching. Its errors may quote the payload (see ErrorClass for one that does not).
	Failed []Failure
}

// Failure is one rule whose `when` failed to evaluate for a change.
type Failure struct {
	Rule string
	Err  error
}

// rule is one compiled Spec.
type rule struct {
	name    string
	objects []string
	fields  []string
	verbs   []string
	when    *vm.Program // nil = always
	nilTest *nilTest    // when, if it is a nil test of a value key (see nilTest)
	value   bool        // when reads `value`
	conv    bool        // when reads `conversation`
	sinks   []string    // deduplicated
	alone   Match       // the Match returned when this rule is the only one to match
}

// Set is a compiled, immutable rule set. It is safe for concurrent use.
type Set struct {
	rules []rule
	// byObject lists, for every object some rule names, the rules that may match it (those
	// naming it and those accepting any object) in config order. Objects no rule names use
	// anyObject.
	byObject   map[string][]int
	anyObject  []int
	needsValue bool
	needsConv  bool       // some `when` reads `conversation`
	projection Projection // what the `when` expressions read of value
}

// CompileError reports one invalid rule. Compile returns one per problem, joined with
// errors.Join when there are several.
type CompileError struct {
	// Index is the rule's position in the specs given to Compile.
	Index int
	// Name is the rule's name (possibly empty).
	Name string
	// Part is what is wrong: "name", "when" or "sinks".
	Part string
	// Err describes the problem; for Part "when" it is an *ExprError.
	Err error
}

// Error implements error.
func (e *CompileError) Error() string {
	return fmt.Sprintf("rules[%d] %q: %s: %v", e.Index, e.Name, e.Part, e.Err)
}

// Unwrap returns the underlying error.
func (e *CompileError) Unwrap() error { return e.Err }

// test evaluates r's `when` against env: a nil test of a value key without the VM when it
// can, else on the VM.
func (r *rule) test(env *Env) (bool, error) {
	if r.nilTest != nil {
		if b, ok := r.nilTest.eval(env.Value); ok {
			return b, nil
		}
	}
	out, err := run(r.when, env)
	if err != nil {
		return false, err
	}
	b, _ := out.(bool)
	return b, nil
}

// vmPool recycles expression virtual machines so that evaluation does not allocate a new
// stack per call. A vm.VM is not safe for concurrent use; a pooled one belongs to one
// goroutine between Get and Put.
var vmPool = sync.Pool{New: func() any { return new(vm.VM) }}

// run evaluates program against env on a pooled virtual machine.
func run(program *vm.Program, env *Env) (out any, err error) {
	m := vmPool.Get().(*vm.VM)
	out, err = m.Run(program, env)
	// Drop references to the change so a pooled VM does not keep a payload alive.
	clear(m.Stack[:cap(m.Stack)])
	m.Stack = m.Stack[:0]
	clear(m.Variables)
	vmPool.Put(m)
	if err != nil {
		return nil, exprError(err)
	}
	return out, nil
}

// Compile compiles rule specs into a Set. It checks every rule and reports every problem:
// an empty or duplicate name, a rule without sinks, or a `when` that does not compile or is
// not boolean. The error is a *CompileError, or several joined with errors.Join.
func Compile(specs []Spec) (*Set, error) {
	s := &Set{
		rules:    make([]rule, 0, len(specs)),
		byObject: make(map[string][]int),
	}
	var errs []error
	seen := make(map[string]bool, len(specs))
	for i, sp := range specs {
		fail := func(part string, err error) {
			errs = append(errs, &CompileError{Index: i, Name: sp.Name, Part: part, Err: err})
		}
		switch {
		case sp.Name == "":
			fail("name", errors.New("missing rule name"))
		case seen[sp.Name]:
			fail("name", errors.New("duplicate rule name"))
		}
		seen[sp.Name] = true
		r := rule{
			name:    sp.Name,
			objects: slices.Clone(sp.Objects),
			fields:  slices.Clone(sp.Fields),
			verbs:   slices.Clone(sp.Verbs),
		}
		for _, sk := range sp.Sinks {
			if sk == "" {
				fail("sinks", errors.New("empty sink name"))
				continue
			}
			if !slices.Contains(r.sinks, sk) {
				r.sinks = append(r.sinks, sk)
			}
		}
		if len(sp.Sinks) == 0 {
			fail("sinks", errors.New("a rule needs at least one sink"))
		}
		if sp.When != "" {
			p, err := CompileWhen(sp.When)
			if err != nil {
				fail("when", err)
			} else {
				r.when, r.nilTest = p, nilTestOf(p)
				if refersTo(p, "conversation") {
					r.conv, s.needsConv = true, true
				}
				if refersToValue(p) {
					r.value = true
					s.needsValue = true
					s.projection.merge(project(p))
				}
			}
		}
		r.alone = Match{Rules: []string{r.name}, Sinks: r.sinks}
		s.rules = append(s.rules, r)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.index()
	return s, nil
}

// index fills byObject and anyObject.
func (s *Set) index() {
	for i, r := range s.rules {
		if len(r.objects) == 0 {
			s.anyObject = append(s.anyObject, i)
			continue
		}
		for _, o := range r.objects {
			s.byObject[o] = nil
		}
	}
	for o := range s.byObject {
		var idx []int
		for i, r := range s.rules {
			if len(r.objects) == 0 || slices.Contains(r.objects, o) {
				idx = append(idx, i)
			}
		}
		s.byObject[o] = idx
	}
}

// Len returns the number of rules.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.rules)
}

// NeedsConversation reports whether any rule's `when` refers to `conversation`: only then
// need callers set Env.LoadConversation.
func (s *Set) NeedsConversation() bool { return s != nil && s.needsConv }

// NeedsValue reports whether any rule's `when` refers to `value`. When it does not, callers
// may skip decoding change values before calling Match.
func (s *Set) NeedsValue() bool { return s != nil && s.needsValue }

// Match returns the rules whose object, field and verb lists accept the change and whose
// `when` is true, with their sinks. A `when` that fails at run time (for instance `value.x`
// when the change has no value, or a type mismatch) counts as no match and is reported to
// onErr, if not nil, with the rule's name; the error is one line but may quote parts of the
// payload, so log it at debug level or with payload logging enabled.
//
// Match allocates nothing when no rule or a single rule matches: the slices of the returned
// Match may then be shared with the Set and must not be modified.
func (s *Set) Match(env *Env, onErr func(rule string, err error)) Match {
	return s.match(env, nil, onErr)
}

// MatchExcept is Match leaving out the rules named in skip: a dead-letter replay routes a
// change again with the current rules, except those that routed it the first time (their
// sinks have it already).
func (s *Set) MatchExcept(env *Env, skip []string, onErr func(rule string, err error)) Match {
	return s.match(env, skip, onErr)
}

func (s *Set) match(env *Env, skip []string, onErr func(rule string, err error)) Match {
	if s == nil {
		return Match{}
	}
	idx, ok := s.byObject[env.Object]
	if !ok {
		idx = s.anyObject
	}
	first := -1
	var m Match
	for _, i := range idx {
		r := &s.rules[i]
		if !accepts(r.fields, env.Field) || !accepts(r.verbs, env.Verb) || (skip != nil && slices.Contains(skip, r.name)) {
			continue
		}
		if r.when != nil {
			if r.value && env.Value == nil && env.LoadValue != nil {
				env.Value, env.LoadValue = env.LoadValue(), nil
			}
			if r.conv {
				loadConversation(env)
			}
			ok, err := r.test(env)
			if err != nil {
				m.Failed = append(m.Failed, Failure{Rule: r.name, Err: err})
				if onErr != nil {
					onErr(r.name, err)
				}
				continue
			}
			if !ok {
				continue
			}
		}
		if first < 0 {
			first = i
			continue
		}
		if m.Rules == nil {
			f := &s.rules[first]
			// One allocation backs both slices; full slice expressions keep an append to
			// one from overwriting the other.
			buf := make([]string, 4+max(4, len(f.sinks)+len(r.sinks)))
			m.Rules = append(buf[:0:4], f.name)
			m.Sinks = append(buf[4:4:len(buf)], f.sinks...)
		}
		m.Rules = append(m.Rules, r.name)
		for _, sk := range r.sinks {
			if !slices.Contains(m.Sinks, sk) {
				m.Sinks = append(m.Sinks, sk)
			}
		}
	}
	if m.Rules == nil && first >= 0 {
		alone := s.rules[first].alone
		alone.Failed = m.Failed
		return alone
	}
	return m
}

// accepts reports whether list, where empty means any, accepts v.
func accepts(list []string, v string) bool {
	return len(list) == 0 || slices.Contains(list, v)
}

// CompileWhen compiles a `when` expression against Env. It fails, with an *ExprError, if the
// expression does not parse, names an unknown variable or function, or is not boolean.
//
// A `when` whose result cannot be a boolean is refused too, even where its type is only known
// at run time: a bare member or identifier (`value.item`, `value.is_echo`), a string, a
// number, nil, a list or a map. At run time it would fail for every change, which would then
// match nothing; the error says how to make it a condition. An expression whose type is only
// known at run time but can be a bool (`value.x ?? false`, `!value.is_echo`) compiles, and
// evaluating it fails if the result is not a bool.
func CompileWhen(src string) (*vm.Program, error) {
	if err := expectKind(src, reflect.Bool, "boolean"); err != nil {
		return nil, err
	}
	p, err := compile(src)
	if err != nil {
		return nil, err
	}
	if what := notCondition(p.Node()); what != "" {
		msg := "must be a boolean expression, got " + what
		if strings.HasPrefix(what, "a member") || strings.HasPrefix(what, "a name") {
			msg += fmt.Sprintf("; compare it: %s == \"photo\" (or == true), or test presence: %s != nil", src, src)
		}
		return nil, &ExprError{Msg: msg}
	}
	return compile(src, expr.AsBool())
}

// notCondition describes the root of a `when` expression when its result cannot be a
// boolean (a value to compare rather than a comparison), "" otherwise.
func notCondition(n ast.Node) string {
	if c, ok := n.(*ast.ChainNode); ok {
		n = c.Node
	}
	switch n := n.(type) {
	case *ast.MemberNode:
		return "a member, not a condition"
	case *ast.IdentifierNode:
		return "a name, not a condition"
	case *ast.StringNode:
		return "a string"
	case *ast.IntegerNode, *ast.FloatNode:
		return "a number"
	case *ast.NilNode:
		return "nil"
	case *ast.ArrayNode:
		return "a list"
	case *ast.MapNode:
		return "a map"
	case *ast.SliceNode:
		return "a slice"
	case *ast.ConstantNode:
		if _, ok := n.Value.(bool); !ok {
			return "a constant"
		}
	}
	return ""
}

// expectKind compiles src without an expected type and fails with a clear message if its
// static type is known and is not kind.
func expectKind(src string, kind reflect.Kind, what string) error {
	p, err := compile(src)
	if err != nil {
		return err
	}
	if t := p.Node().Type(); t != nil && t.Kind() != kind && t.Kind() != reflect.Interface {
		return &ExprError{Msg: fmt.Sprintf("must be a %s expression, got %s", what, t)}
	}
	return nil
}

// compile compiles src against Env with extra options, turning a panic inside the compiler
// into an error and expr's multi-line errors into *ExprError.
func compile(src string, opts ...expr.Option) (p *vm.Program, err error) {
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, &ExprError{Msg: fmt.Sprintf("invalid expression: %v", r)}
		}
	}()
	if src == "" {
		return nil, &ExprError{Msg: "empty expression"}
	}
	opts = append([]expr.Option{expr.Env(Env{})}, opts...)
	p, err = expr.Compile(src, opts...)
	if err != nil {
		return nil, exprError(err)
	}
	return p, nil
}

// RuleSummary is the name and the sinks of one rule, for start-up logs.
type RuleSummary struct {
	Name  string
	Sinks []string
}

// Summaries returns the name and sinks of every rule, in config order.
func (s *Set) Summaries() []RuleSummary {
	if s == nil {
		return nil
	}
	out := make([]RuleSummary, len(s.rules))
	for i, r := range s.rules {
		out[i] = RuleSummary{Name: r.name, Sinks: slices.Clone(r.sinks)}
	}
	return out
}
