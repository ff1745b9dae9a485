package rules

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// FuzzCompileEval compiles arbitrary sources as `when` expressions and templates and
// evaluates whatever compiles against a fixed change: nothing may panic, and a `when` gives
// the same verdict on the value's projection (Set.Projection) as on the whole value.
func FuzzCompileEval(f *testing.F) {
	for _, s := range []string{
		`value.messages != nil`,
		`value.item == "photo"`,
		`any(value.statuses, .status == "failed")`,
		`entry.id == "123"`,
		`"New " + field + " on page " + entry.id`,
		`verb in ["add", "edited"] && app == "shop"`,
		`received_at > now() - duration("1h")`,
		`value.entry[0].changes[-1].value?.x ?? "none"`,
		`len(value.contacts) > 0 ? value.contacts[0].wa_id : ""`,
		`map(1..10, # * 2)`,
		`repeat("a", 100000000)`,
		`int(value.timestamp) > 0`,
		`let x = value; x.a.b.c`,
		`$env.value`,
		`[{"type": "section"}]`,
		`value.statuses != nil && "x" in map(filter([1], true), value.metadata.display_phone_number)`,
		`nil == value?.errors`,
		`valeu`, `(`, `"`, `1 +`, `}}`, ``,
	} {
		f.Add(s)
	}
	var value any
	if err := json.Unmarshal([]byte(waStatusFailed), &value); err != nil {
		f.Fatal(err)
	}
	env := &Env{
		Object: "whatsapp_business_account", Field: "messages", Verb: "add", Value: value,
		Entry: Entry{ID: "102290129340398", UID: "u", Time: 1751142888}, App: "shop",
		ReceivedAt: time.Unix(1751142890, 0).UTC(),
	}
	f.Fuzz(func(t *testing.T, src string) {
		if p, err := CompileWhen(src); err == nil {
			set, err := Compile([]Spec{{Name: "r", When: src, Sinks: []string{"s"}}})
			if err != nil {
				t.Fatalf("CompileWhen accepted %q but Compile did not: %v", src, err)
			}
			_ = p
			var wholeErr, projErr error
			whole := set.Match(env, func(_ string, err error) { wholeErr = err })
			projected := *env
			projected.Value = set.Projection().Apply(value)
			got := set.Match(&projected, func(_ string, err error) { projErr = err })
			if !reflect.DeepEqual(got, whole) || (wholeErr == nil) != (projErr == nil) {
				t.Fatalf("%q: projected value matches %v (error %v), whole value %v (error %v)", src, got, projErr, whole, wholeErr)
			}
			set.Match(&Env{}, nil)
		}
		if tpl, err := CompileText(src); err == nil {
			_, _ = tpl.String(env)
		}
		if tpl, err := CompileAny(src); err == nil {
			_, _ = tpl.Eval(env)
			_, _ = tpl.Eval(&Env{})
		}
	})
}
