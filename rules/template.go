package rules

import (
	"fmt"
	"reflect"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
)

// Template is a compiled non-boolean expression evaluated against one change, such as the
// text of a Slack message. It is immutable and safe for concurrent use.
type Template struct {
	src        string
	program    *vm.Program
	needsValue bool
	needsConv  bool // reads `conversation`
}

// CompileText compiles an expression that must produce a string, such as
// `"New " + field + " on page " + entry.id`. It fails, with an *ExprError, if the expression
// does not compile or its type is known not to be a string; an expression whose type is only
// known at run time (such as `value.text`) compiles, and String fails if the result is not a
// string.
func CompileText(src string) (*Template, error) {
	if err := expectKind(src, reflect.String, "string"); err != nil {
		return nil, err
	}
	p, err := compile(src, expr.AsKind(reflect.String))
	if err != nil {
		return nil, err
	}
	return newTemplate(src, p), nil
}

// newTemplate wraps a compiled program.
func newTemplate(src string, p *vm.Program) *Template {
	return &Template{src: src, program: p, needsValue: refersToValue(p), needsConv: refersTo(p, "conversation")}
}

// CompileAny compiles an expression with a result of any type, such as a list of Slack
// blocks built from maps and lists. It fails, with an *ExprError, if the expression does not
// compile.
func CompileAny(src string) (*Template, error) {
	p, err := compile(src)
	if err != nil {
		return nil, err
	}
	return newTemplate(src, p), nil
}

// Eval evaluates the template against env. A run-time failure is returned as an *ExprError.
func (t *Template) Eval(env *Env) (any, error) {
	t.load(env)
	return run(t.program, env)
}

// load decodes env's value through LoadValue, and works out its conversation through
// LoadConversation, when the template reads them.
func (t *Template) load(env *Env) {
	if t.needsValue && env.Value == nil && env.LoadValue != nil {
		env.Value, env.LoadValue = env.LoadValue(), nil
	}
	if t.needsConv {
		loadConversation(env)
	}
}

// loadConversation fills env.Conversation through LoadConversation, once.
func loadConversation(env *Env) {
	if env.Conversation == "" && env.LoadConversation != nil {
		env.Conversation, env.LoadConversation = env.LoadConversation(), nil
	}
}

// String evaluates the template against env and returns its string result; a result that is
// not a string is an error.
func (t *Template) String(env *Env) (string, error) {
	t.load(env)
	out, err := run(t.program, env)
	if err != nil {
		return "", err
	}
	s, ok := out.(string)
	if !ok {
		return "", &ExprError{Msg: fmt.Sprintf("expected string, got %T", out)}
	}
	return s, nil
}

// Source returns the expression as written.
func (t *Template) Source() string { return t.src }

// NeedsValue reports whether the template refers to `value`, so that callers may skip
// decoding change values when it does not.
func (t *Template) NeedsValue() bool { return t.needsValue }

// refersToValue reports whether a compiled program reads the `value` variable, directly or
// through `$env`.
func refersToValue(p *vm.Program) bool {
	v := &valueFinder{}
	node := p.Node()
	walk(&node, v)
	return v.found
}

// walk is ast.Walk that also visits the mapper of a builtin: expr's optimizer folds
// map(filter(xs, p), m) into one filter node that holds m in its Map field, which ast.Walk
// does not visit.
func walk(node *ast.Node, v ast.Visitor) { ast.Walk(node, mapWalker{v}) }

type mapWalker struct{ v ast.Visitor }

// Visit implements ast.Visitor.
func (w mapWalker) Visit(node *ast.Node) {
	w.v.Visit(node)
	if b, ok := (*node).(*ast.BuiltinNode); ok && b.Map != nil {
		ast.Walk(&b.Map, w)
	}
}

type valueFinder struct{ found bool }

// Visit implements ast.Visitor.
func (v *valueFinder) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		if n.Value == "value" || n.Value == "$env" {
			v.found = true
		}
	case *ast.MemberNode:
		// $env.value and $env["value"] compile to members of $env, seen above.
	}
}

// refersTo reports whether a compiled program reads the variable name, directly or through
// `$env`.
func refersTo(p *vm.Program, name string) bool {
	v := &nameFinder{name: name}
	node := p.Node()
	walk(&node, v)
	return v.found
}

type nameFinder struct {
	name  string
	found bool
}

// Visit implements ast.Visitor.
func (v *nameFinder) Visit(node *ast.Node) {
	if n, ok := (*node).(*ast.IdentifierNode); ok && (n.Value == v.name || n.Value == "$env") {
		v.found = true
	}
}
