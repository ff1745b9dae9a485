package rules

import (
	"reflect"
	"testing"
)

func TestSet_Projection(t *testing.T) {
	all := Projection{All: true}
	keys := func(kv ...any) Projection {
		p := Projection{Keys: map[string]bool{}}
		for i := 0; i < len(kv); i += 2 {
			p.Keys[kv[i].(string)] = kv[i+1].(bool)
		}
		return p
	}
	tests := []struct {
		when []string
		want Projection
	}{
		{[]string{`entry.id == "1"`}, Projection{}},
		{[]string{`value.messages != nil`}, keys("messages", false)},
		{[]string{`nil == value.messages`}, keys("messages", false)},
		{[]string{`value?.messages != nil`}, keys("messages", false)},
		{[]string{`value["messages"] == nil`}, keys("messages", false)},
		{[]string{`value.messages != nil && value.messages[0].type == "text"`}, keys("messages", true)},
		{[]string{`value.messages[0] != nil`}, keys("messages", true)},
		{[]string{`value.item == "photo"`}, keys("item", true)},
		{[]string{`any(value.statuses ?? [], .status == "failed")`}, keys("statuses", true)},
		{[]string{`value.messages != nil`, `value.item == "photo"`, `value.messages == nil`}, keys("messages", false, "item", true)},
		{[]string{`value.messages != nil`, `len(value.messages) > 0`}, keys("messages", true)},
		{[]string{`value != nil`}, all},
		{[]string{`len(value) > 0`}, all},
		{[]string{`"messages" in value`}, all},
		{[]string{`value[field] != nil`}, all},
		{[]string{`$env.value.messages != nil`}, all},
		{[]string{`let v = value; v.messages != nil`}, all},
		{[]string{`value.messages != nil`, `toJSON(value) contains "x"`}, all},
		// The optimizer folds map(filter(...), m) into one node whose mapper ast.Walk skips.
		{[]string{`value.messages != nil && "photo" in map(filter([1, 2], # > 0), value.item)`}, keys("messages", false, "item", true)},
		{[]string{`first(map(filter(value.messages ?? [], true), value.item)) == "photo"`}, keys("messages", true, "item", true)},
	}
	for _, tt := range tests {
		var specs []Spec
		for i, w := range tt.when {
			specs = append(specs, Spec{Name: string(rune('a' + i)), When: w, Sinks: []string{"s"}})
		}
		set := mustCompile(t, specs)
		if got := set.Projection(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: Projection() = %+v, want %+v", tt.when, got, tt.want)
		}
	}
}

// TestProjection_SameMatches evaluates every expression on every value twice, with the whole
// value and with only its projection, and requires the same verdict: a projection that left
// out something an expression reads would change a match.
func TestProjection_SameMatches(t *testing.T) {
	whens := []string{
		`value.messages != nil`,
		`value.messages == nil`,
		`nil != value?.statuses`,
		`value.messages != nil && value.messages[0].type == "text"`,
		`any(value.statuses ?? [], .status == "failed")`,
		`value.item == "photo" && value.verb in ["add", "edited"]`,
		`value.from?.name == "Pituah Coffee"`,
		`value.missing == nil`,
		`value.published == 1`,
		`value.metadata.phone_number_id == "106540352242922"`,
		`value.from != nil && "photo" in map(filter([1, 2], # > 0), value.item)`,
		`first(map(filter(value.statuses ?? [1], true), value.item)) == "photo"`,
	}
	values := []string{waMessage, waStatusFailed, waStatusRead, pagePhoto, pageStatus,
		`{"messages":null,"statuses":false,"item":0}`, `{}`, `[1,2]`, `"text"`, `null`}
	for _, w := range whens {
		set := mustCompile(t, []Spec{{Name: "r", When: w, Sinks: []string{"s"}}})
		proj := set.Projection()
		if proj.All {
			t.Fatalf("%s: projection needs the whole value", w)
		}
		for _, v := range values {
			full := decode(t, v)
			var fullErr, projErr error
			want := set.Match(&Env{Value: full}, func(_ string, err error) { fullErr = err })
			got := set.Match(&Env{Value: proj.Apply(full)}, func(_ string, err error) { projErr = err })
			if !reflect.DeepEqual(got, want) || (fullErr == nil) != (projErr == nil) {
				t.Errorf("%s on %.40s: projected match %v (error %v), whole value %v (error %v)", w, v, got, projErr, want, fullErr)
			}
		}
	}
}

func TestProjection_Apply(t *testing.T) {
	p := Projection{Keys: map[string]bool{"a": true, "b": false, "c": false, "d": false}}
	got := p.Apply(map[string]any{"a": []any{1.0}, "b": map[string]any{"x": 1.0}, "c": nil, "e": "dropped"})
	want := map[string]any{"a": []any{1.0}, "b": true, "c": nil}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Apply = %#v, want %#v", got, want)
	}
	if got := p.Apply([]any{1.0}); !reflect.DeepEqual(got, []any{1.0}) {
		t.Errorf("Apply(list) = %#v", got)
	}
	whole := map[string]any{"a": 1.0}
	if got := (Projection{All: true}).Apply(whole); !reflect.DeepEqual(got, whole) {
		t.Errorf("Apply with All = %#v", got)
	}
}
