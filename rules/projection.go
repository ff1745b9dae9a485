package rules

import (
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
)

// Projection names the parts of a change value that a rule set's `when` expressions can
// observe, so that callers decode only those parts (see Set.Projection). Decoding the whole
// value of every change only to test `value.messages != nil` is most of what routing costs.
type Projection struct {
	// All is true when some expression reads `value` other than through a constant top-level
	// key (as a whole, with a computed key, through $env, ...): the whole value is needed and
	// Keys is nil.
	All bool
	// Keys maps every top-level key the expressions read to true when its whole value is
	// needed, or to false when it is only compared with nil (`value.k != nil`, `value.k ==
	// nil`): then any value that is present and not null may stand in for it.
	Keys map[string]bool
}

// merge adds o's needs to p.
func (p *Projection) merge(o Projection) {
	if p.All || o.All {
		p.All, p.Keys = true, nil
		return
	}
	for k, whole := range o.Keys {
		if p.Keys == nil {
			p.Keys = make(map[string]bool)
		}
		p.Keys[k] = p.Keys[k] || whole
	}
}

// Projection returns what the set's `when` expressions read of `value`: the zero Projection
// when none reads it (NeedsValue is false). A caller that builds Env.Value from only these
// parts — the listed keys of a top-level object, with `true` standing in for a key that is
// only compared with nil — gets the same matches as with the whole value. A value that is not
// a JSON object must be decoded whole.
func (s *Set) Projection() Projection {
	if s == nil {
		return Projection{}
	}
	return s.projection
}

// project works out what program reads of `value`.
func project(p *vm.Program) Projection {
	u := &valueUses{members: map[*ast.MemberNode]string{}, nilTests: map[*ast.MemberNode]bool{}, claimed: map[*ast.IdentifierNode]bool{}}
	node := p.Node()
	walk(&node, u)
	for _, id := range u.idents {
		if !u.claimed[id] {
			return Projection{All: true}
		}
	}
	var out Projection
	for m, k := range u.members {
		if out.Keys == nil {
			out.Keys = make(map[string]bool)
		}
		out.Keys[k] = out.Keys[k] || !u.nilTests[m]
	}
	return out
}

// valueUses collects, from a walk of an expression tree, every reference to `value` (and to
// $env, through which value can also be read), the member accesses `value.k` with a constant
// key, and which of those are only compared with nil. ast.Walk visits children before their
// parent, so a comparison is seen after its operands.
type valueUses struct {
	idents   []*ast.IdentifierNode
	members  map[*ast.MemberNode]string
	nilTests map[*ast.MemberNode]bool
	claimed  map[*ast.IdentifierNode]bool
}

// Visit implements ast.Visitor.
func (u *valueUses) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		if n.Value == "value" || n.Value == "$env" {
			u.idents = append(u.idents, n)
		}
	case *ast.MemberNode:
		id, ok := n.Node.(*ast.IdentifierNode)
		if !ok || id.Value != "value" || n.Method {
			return
		}
		if key, ok := n.Property.(*ast.StringNode); ok {
			u.members[n] = key.Value
			u.claimed[id] = true
		}
	case *ast.BinaryNode:
		if n.Operator != "==" && n.Operator != "!=" {
			return
		}
		if m := u.valueMember(n.Left); m != nil && isNil(n.Right) {
			u.nilTests[m] = true
		}
		if m := u.valueMember(n.Right); m != nil && isNil(n.Left) {
			u.nilTests[m] = true
		}
	}
}

// valueMember returns n as a `value.k` access (possibly optional, `value?.k`), or nil.
func (u *valueUses) valueMember(n ast.Node) *ast.MemberNode {
	if c, ok := n.(*ast.ChainNode); ok {
		n = c.Node
	}
	m, ok := n.(*ast.MemberNode)
	if !ok {
		return nil
	}
	if _, ok := u.members[m]; !ok {
		return nil
	}
	return m
}

func isNil(n ast.Node) bool {
	_, ok := n.(*ast.NilNode)
	return ok
}

// Apply returns what p keeps of a value decoded whole: the reference for decoders that build
// the projected value directly. A value that is not an object, or a projection that needs
// everything, is returned as it is.
func (p Projection) Apply(v any) any {
	m, ok := v.(map[string]any)
	if p.All || !ok {
		return v
	}
	out := make(map[string]any, len(p.Keys))
	for k, whole := range p.Keys {
		x, ok := m[k]
		switch {
		case !ok:
		case whole || x == nil:
			out[k] = x
		default:
			out[k] = true
		}
	}
	return out
}
