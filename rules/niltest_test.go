package rules

import (
	"fmt"
	"slices"
	"testing"
)

// TestNilTest_AsTheVM: for every form of nil test and every kind of value, the answer without
// the VM is the VM's, errors included; other expressions are not taken for nil tests.
func TestNilTest_AsTheVM(t *testing.T) {
	nilTests := []string{
		`value.messages != nil`, `value.messages == nil`, `nil != value.messages`, `nil == value.messages`,
		`value?.messages != nil`, `value?.messages == nil`, `value["messages"] != nil`, `value.statuses == nil`,
	}
	others := []string{
		`value.messages != nil && value.statuses == nil`, `value.messages != 1`, `value.messages.id != nil`,
		`value != nil`, `!(value.messages == nil)`, `(value.messages ?? nil) != nil`, `object != nil`,
	}
	values := []any{
		map[string]any{}, map[string]any{"messages": nil}, map[string]any{"messages": true},
		map[string]any{"messages": false}, map[string]any{"messages": 0.0}, map[string]any{"messages": ""},
		map[string]any{"messages": []any{}}, map[string]any{"messages": []any(nil)}, map[string]any{"messages": map[string]any(nil)},
		map[string]any{"messages": []any{map[string]any{"id": "x"}}}, map[string]any{"statuses": []any{}},
		map[string]any(nil), nil, "text", 1.5, true, []any{}, []any{map[string]any{"messages": true}},
	}
	for _, src := range append(nilTests, others...) {
		p, err := CompileWhen(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		r := rule{name: "r", when: p, nilTest: nilTestOf(p)}
		if want := slices.Contains(nilTests, src); (r.nilTest != nil) != want {
			t.Errorf("%s: taken for a nil test: %v, want %v", src, r.nilTest != nil, want)
		}
		for _, v := range values {
			env := &Env{Object: "whatsapp_business_account", Value: v}
			got, gotErr := r.test(env)
			out, wantErr := run(p, env)
			want, _ := out.(bool)
			if got != want || (gotErr != nil) != (wantErr != nil) {
				t.Errorf("%s on %s: %v, %v; the VM: %v, %v", src, fmt.Sprintf("%#v", v), got, gotErr, want, wantErr)
			}
		}
	}
}
