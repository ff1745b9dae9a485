package rules

import "slices"

// Selector is what a rule matches on before its `when` expression: the object, field and
// verb lists (empty = any) and whether a `when` narrows it further.
type Selector struct {
	Name                   string
	Objects, Fields, Verbs []string
	HasWhen                bool
}

// Selectors returns the selector of every rule, in config order, for tools that reason
// about which changes a rule set can route (such as comparing it with Meta's webhook
// subscriptions). The slices are copies.
func (s *Set) Selectors() []Selector {
	if s == nil {
		return nil
	}
	out := make([]Selector, len(s.rules))
	for i, r := range s.rules {
		out[i] = Selector{Name: r.name, Objects: slices.Clone(r.objects), Fields: slices.Clone(r.fields), Verbs: slices.Clone(r.verbs), HasWhen: r.when != nil}
	}
	return out
}
