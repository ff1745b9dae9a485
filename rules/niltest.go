package rules

import (
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
	exprruntime "github.com/expr-lang/expr/vm/runtime"
)

// nilTest is a `when` that only asks whether one top-level key of the value is missing or
// null: `value.k != nil`, `value.k == nil`, `value?.k != nil`, `value["k"] == nil`, or with
// nil on the left. It is the most common rule (the README's `value.messages != nil`), and on
// a value that is a JSON object Match answers it from the map instead of running the
// expression on the VM (reflection for the fetch and the comparison). On anything else the VM
// decides, errors included, so the result is the VM's in every case (TestNilTest_AsTheVM).
type nilTest struct {
	key string
	neq bool // the test is != nil
}

// nilTestOf returns the nilTest program is, or nil when it is any other expression.
func nilTestOf(p *vm.Program) *nilTest {
	b, ok := p.Node().(*ast.BinaryNode)
	if !ok || (b.Operator != "==" && b.Operator != "!=") {
		return nil
	}
	operand := b.Left
	switch {
	case isNil(b.Right):
	case isNil(b.Left):
		operand = b.Right
	default:
		return nil
	}
	if c, ok := operand.(*ast.ChainNode); ok {
		operand = c.Node
	}
	m, ok := operand.(*ast.MemberNode)
	if !ok || m.Method {
		return nil
	}
	id, ok := m.Node.(*ast.IdentifierNode)
	if !ok || id.Value != "value" {
		return nil
	}
	key, ok := m.Property.(*ast.StringNode)
	if !ok {
		return nil
	}
	return &nilTest{key: key.Value, neq: b.Operator == "!="}
}

// eval answers t for value when it is a decoded JSON object (ok), as the VM would: a member
// of a map is its entry or nil when missing, and `== nil` is the VM's IsNil.
func (t *nilTest) eval(value any) (result, ok bool) {
	m, ok := value.(map[string]any)
	if !ok {
		return false, false
	}
	return exprruntime.IsNil(m[t.key]) != t.neq, true
}
