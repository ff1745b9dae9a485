package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// decode unmarshals a JSON value the way the relay does, into any.
func decode(t testing.TB, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return v
}

const (
	waMessage = `{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
		"contacts":[{"profile":{"name":"Kerry Fisher"},"wa_id":"16505551234"}],
		"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}]}`
	waStatusFailed = `{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
		"statuses":[{"id":"wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA","status":"failed","timestamp":"1751142888","recipient_id":"16505551234",
		"errors":[{"code":131049,"title":"This message was not delivered to maintain healthy ecosystem engagement."}]}]}`
	waStatusRead = `{"messaging_product":"whatsapp","statuses":[{"id":"wamid.X","status":"read","timestamp":"1751142888","recipient_id":"16505551234"}]}`
	pagePhoto    = `{"from":{"id":"517161164821567","name":"Pituah Coffee"},"post_id":"517161164821567_122100491216739916","created_time":1737458653,"item":"photo","photo_id":"122100491162739916","published":1,"verb":"add"}`
	pageStatus   = `{"from":{"id":"517161164821567","name":"Pituah Coffee"},"item":"status","verb":"edited"}`
)

func TestCompileWhen_Errors(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"empty", "", "empty expression"},
		{"typo", `valeu.item == "photo"`, "unknown name valeu (column 1)"},
		{"unknown function", `lenght(field) > 2`, "unknown name lenght"},
		{"string", `"New " + field`, "must be a boolean expression, got string"},
		{"int", `1 + 2`, "must be a boolean expression, got int"},
		{"time", `received_at`, "must be a boolean expression, got time.Time"},
		{"syntax", `value.item == `, "unexpected token EOF"},
		{"unclosed string", `field == "feed`, "literal not terminated"},
		{"second line", "field == \"feed\" &&\n  valeu.x", "unknown name valeu (line 2, column 3)"},
		{"entry field typo", `entry.idd == "1"`, "type rules.Entry has no field idd"},
		{"string compare int", `field > 3`, "invalid operation"},
		// Types known only at run time, whose result still cannot be a condition.
		{"bare member", `value.item`, `must be a boolean expression, got a member, not a condition; compare it: value.item == "photo" (or == true), or test presence: value.item != nil`},
		{"bare optional member", `value?.item`, "got a member, not a condition"},
		{"bare index", `value["item"]`, "got a member, not a condition"},
		{"bare flag", `value.message.is_echo`, "value.message.is_echo == \"photo\" (or == true)"},
		{"bare value", `value`, "got a name, not a condition; compare it: value =="},
		{"nil", `nil`, "must be a boolean expression, got nil"},
		{"list", `[value.a]`, "must be a boolean expression"},
		{"map", `{"a": value.a}`, "must be a boolean expression"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := CompileWhen(tt.src)
			if err == nil {
				t.Fatalf("CompileWhen(%q) = %v, want error containing %q", tt.src, p, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("CompileWhen(%q) error = %q, want it to contain %q", tt.src, err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("CompileWhen(%q) error spans several lines: %q", tt.src, err)
			}
			var ee *ExprError
			if !errors.As(err, &ee) {
				t.Errorf("CompileWhen(%q) error is %T, want *ExprError", tt.src, err)
			}
		})
	}
}

func TestCompile_Errors(t *testing.T) {
	specs := []Spec{
		{Name: "ok", Sinks: []string{"a"}},
		{Name: "bad-when", When: `valeu != nil`, Sinks: []string{"a"}},
		{Name: "ok", Sinks: []string{"a"}},
		{Name: "", Sinks: []string{"a"}},
		{Name: "no-sinks"},
		{Name: "not-bool", When: `field`, Sinks: []string{"a"}},
	}
	_, err := Compile(specs)
	if err == nil {
		t.Fatal("Compile: no error")
	}
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var ce *CompileError
		if !errors.As(e, &ce) {
			t.Fatalf("error %v is %T, want *CompileError", e, e)
		}
		got = append(got, fmt.Sprintf("%d %s: %v", ce.Index, ce.Part, ce.Err))
	}
	want := []string{
		"1 when: unknown name valeu (column 1)",
		"2 name: duplicate rule name",
		"3 name: missing rule name",
		"4 sinks: a rule needs at least one sink",
		"5 when: must be a boolean expression, got string",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Compile errors:\n got %q\nwant %q", got, want)
	}
	if !strings.Contains(err.Error(), `rules[1] "bad-when": when: unknown name valeu`) {
		t.Errorf("Compile error text = %q", err)
	}
}

// designRules are the rules of DESIGN.md plus a few more.
var designRules = []Spec{
	{Name: "whatsapp-inbound", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"},
		When: `value.messages != nil`, Sinks: []string{"orders", "archive"}},
	{Name: "page-photos", Objects: []string{"page"}, Fields: []string{"feed"}, Verbs: []string{"add", "edited"},
		When: `value.item == "photo"`, Sinks: []string{"ops"}},
	{Name: "failed-statuses", Objects: []string{"whatsapp_business_account"},
		When: `any(value.statuses ?? [], .status == "failed")`, Sinks: []string{"ops", "orders"}},
	{Name: "one-page", Objects: []string{"page", "instagram"}, When: `entry.id == "123"`, Sinks: []string{"ops"}},
	{Name: "archive-all", Sinks: []string{"archive", "archive"}},
}

func TestSet_Match(t *testing.T) {
	set, err := Compile(designRules)
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != len(designRules) {
		t.Errorf("Len = %d, want %d", set.Len(), len(designRules))
	}
	if !set.NeedsValue() {
		t.Error("NeedsValue = false, want true")
	}
	tests := []struct {
		name      string
		env       Env
		value     string
		wantRules []string
		wantSinks []string
		wantErrs  []string
	}{
		{
			name:      "whatsapp message",
			env:       Env{Object: "whatsapp_business_account", Field: "messages", Entry: Entry{ID: "102290129340398"}},
			value:     waMessage,
			wantRules: []string{"whatsapp-inbound", "archive-all"},
			wantSinks: []string{"orders", "archive"},
		},
		{
			name:      "whatsapp failed status",
			env:       Env{Object: "whatsapp_business_account", Field: "messages"},
			value:     waStatusFailed,
			wantRules: []string{"failed-statuses", "archive-all"},
			wantSinks: []string{"ops", "orders", "archive"},
		},
		{
			name:      "whatsapp read status",
			env:       Env{Object: "whatsapp_business_account", Field: "messages"},
			value:     waStatusRead,
			wantRules: []string{"archive-all"},
			wantSinks: []string{"archive"},
		},
		{
			name:      "page photo add",
			env:       Env{Object: "page", Field: "feed", Verb: "add", Entry: Entry{ID: "517161164821567"}},
			value:     pagePhoto,
			wantRules: []string{"page-photos", "archive-all"},
			wantSinks: []string{"ops", "archive"},
		},
		{
			name:      "page photo removed: verb filtered",
			env:       Env{Object: "page", Field: "feed", Verb: "remove"},
			value:     pagePhoto,
			wantRules: []string{"archive-all"},
			wantSinks: []string{"archive"},
		},
		{
			name:      "page status: when false",
			env:       Env{Object: "page", Field: "feed", Verb: "edited"},
			value:     pageStatus,
			wantRules: []string{"archive-all"},
			wantSinks: []string{"archive"},
		},
		{
			name:      "page entry id",
			env:       Env{Object: "page", Field: "mention", Entry: Entry{ID: "123"}},
			value:     `{}`,
			wantRules: []string{"one-page", "archive-all"},
			wantSinks: []string{"ops", "archive"},
		},
		{
			name:      "unknown object: catch-all only",
			env:       Env{Object: "user", Field: "photos"},
			value:     `{"verb":"update"}`,
			wantRules: []string{"archive-all"},
			wantSinks: []string{"archive"},
		},
		{
			name:      "no value: run-time error is no match",
			env:       Env{Object: "page", Field: "feed", Verb: "add"},
			wantRules: []string{"archive-all"},
			wantSinks: []string{"archive"},
			wantErrs:  []string{"page-photos: cannot fetch item from <nil> (column 7)"},
		},
		{
			name:      "value is a list",
			env:       Env{Object: "whatsapp_business_account", Field: "messages"},
			value:     `[1, 2]`,
			wantRules: []string{"archive-all"},
			wantSinks: []string{"archive"},
			wantErrs:  []string{"whatsapp-inbound: ", "failed-statuses: "},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if tt.value != "" {
				env.Value = decode(t, tt.value)
			}
			var errs []string
			m := set.Match(&env, func(rule string, err error) {
				errs = append(errs, rule+": "+err.Error())
			})
			if !reflect.DeepEqual(m.Rules, tt.wantRules) {
				t.Errorf("Rules = %q, want %q", m.Rules, tt.wantRules)
			}
			if !reflect.DeepEqual(m.Sinks, tt.wantSinks) {
				t.Errorf("Sinks = %q, want %q", m.Sinks, tt.wantSinks)
			}
			if len(errs) != len(tt.wantErrs) {
				t.Fatalf("errors = %q, want %q", errs, tt.wantErrs)
			}
			for i := range errs {
				if !strings.HasPrefix(errs[i], tt.wantErrs[i]) {
					t.Errorf("error %d = %q, want prefix %q", i, errs[i], tt.wantErrs[i])
				}
			}
		})
	}
}

func TestSet_MatchNoRules(t *testing.T) {
	for name, set := range map[string]*Set{"nil": nil, "empty": mustCompile(t, nil)} {
		t.Run(name, func(t *testing.T) {
			if m := set.Match(&Env{Object: "page"}, nil); m.Rules != nil || m.Sinks != nil {
				t.Errorf("Match = %+v, want zero", m)
			}
			if set.Len() != 0 || set.NeedsValue() {
				t.Errorf("Len = %d, NeedsValue = %v", set.Len(), set.NeedsValue())
			}
		})
	}
}

func TestSet_MatchNilOnErr(t *testing.T) {
	set := mustCompile(t, []Spec{{Name: "r", When: "value.x == 1", Sinks: []string{"s"}}})
	if m := set.Match(&Env{}, nil); m.Rules != nil {
		t.Errorf("Match = %+v, want no match", m)
	}
}

func TestSet_NeedsValue(t *testing.T) {
	tests := []struct {
		when string
		want bool
	}{
		{"", false},
		{`entry.id == "1"`, false},
		{`verb in ["add", "edited"]`, false},
		{`value.item == "photo"`, true},
		{`$env.value != nil`, true},
		{`$env["value"] != nil`, true},
		{`let v = value; v != nil`, true},
		{`any([1, 2], # == 1)`, false},
		{`"photo" in map(filter([1, 2], # > 0), value.item)`, true}, // the mapper of a folded map(filter())
	}
	for _, tt := range tests {
		t.Run(tt.when, func(t *testing.T) {
			set := mustCompile(t, []Spec{{Name: "r", When: tt.when, Sinks: []string{"s"}}})
			if got := set.NeedsValue(); got != tt.want {
				t.Errorf("NeedsValue() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSet_MatchFields(t *testing.T) {
	set := mustCompile(t, []Spec{
		{Name: "env", When: `app == "shop" && entry.uid == "u1" && entry.time == 1737458657 && received_at.Year() == 2025 && object == "page" && field == "feed" && verb == ""`, Sinks: []string{"s"}},
	})
	env := &Env{Object: "page", Field: "feed", App: "shop", Entry: Entry{ID: "1", UID: "u1", Time: 1737458657},
		ReceivedAt: time.Date(2025, 1, 21, 11, 24, 17, 0, time.UTC)}
	var errs []error
	m := set.Match(env, func(_ string, err error) { errs = append(errs, err) })
	if len(m.Rules) != 1 || len(errs) != 0 {
		t.Errorf("Match = %+v, errors %v; want rule env", m, errs)
	}
}

// TestSet_Concurrent exercises the VM pool from several goroutines (run with -race).
func TestSet_Concurrent(t *testing.T) {
	set := mustCompile(t, designRules)
	v := decode(t, pagePhoto)
	done := make(chan []string)
	for range 8 {
		go func() {
			var got []string
			for range 200 {
				m := set.Match(&Env{Object: "page", Field: "feed", Verb: "add", Value: v}, nil)
				got = m.Rules
			}
			done <- got
		}()
	}
	for range 8 {
		if got := <-done; !reflect.DeepEqual(got, []string{"page-photos", "archive-all"}) {
			t.Errorf("Rules = %q", got)
		}
	}
}

func TestSet_SpecsCopied(t *testing.T) {
	specs := []Spec{{Name: "r", Objects: []string{"page"}, Sinks: []string{"s"}}}
	set := mustCompile(t, specs)
	specs[0].Objects[0] = "user"
	specs[0].Sinks[0] = "x"
	if m := set.Match(&Env{Object: "page"}, nil); !reflect.DeepEqual(m.Sinks, []string{"s"}) {
		t.Errorf("Match after changing specs = %+v", m)
	}
}

func mustCompile(t testing.TB, specs []Spec) *Set {
	t.Helper()
	s, err := Compile(specs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSet_MatchMany checks results when more rules and sinks match than the first
// allocation holds, so that growing one slice cannot overwrite the other.
func TestSet_MatchMany(t *testing.T) {
	var specs []Spec
	var wantRules, wantSinks []string
	for i := range 9 {
		name := fmt.Sprintf("r%d", i)
		specs = append(specs, Spec{Name: name, Sinks: []string{fmt.Sprintf("s%d", i), "shared", fmt.Sprintf("t%d", i)}})
		wantRules = append(wantRules, name)
	}
	wantSinks = []string{"s0", "shared", "t0"}
	for i := 1; i < 9; i++ {
		wantSinks = append(wantSinks, fmt.Sprintf("s%d", i), fmt.Sprintf("t%d", i))
	}
	set := mustCompile(t, specs)
	m := set.Match(&Env{Object: "page"}, nil)
	if !reflect.DeepEqual(m.Rules, wantRules) {
		t.Errorf("Rules = %q, want %q", m.Rules, wantRules)
	}
	if !reflect.DeepEqual(m.Sinks, wantSinks) {
		t.Errorf("Sinks = %q, want %q", m.Sinks, wantSinks)
	}
	// A second match must not see the first one's slices.
	m2 := set.Match(&Env{Object: "user"}, nil)
	m2.Rules[0], m2.Sinks[0] = "x", "y"
	if m.Rules[0] != "r0" || m.Sinks[0] != "s0" {
		t.Errorf("results share memory: %q %q", m.Rules, m.Sinks)
	}
}

// TestMatch_LoadValueLazily: the value is decoded only for a candidate rule that reads it, and
// at most once.
func TestMatch_LoadValueLazily(t *testing.T) {
	set, err := Compile([]Spec{
		{Name: "feed-photos", Objects: []string{"page"}, Fields: []string{"feed"}, When: `value.item == "photo"`, Sinks: []string{"a"}},
		{Name: "feed-verb", Objects: []string{"page"}, Fields: []string{"feed"}, When: `value.verb == "add"`, Sinks: []string{"b"}},
		{Name: "users", Objects: []string{"user"}, Sinks: []string{"c"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		object, field string
		loads         int
		rules         []string
	}{
		{"user", "photos", 0, []string{"users"}},
		{"page", "leadgen", 0, nil},
		{"page", "feed", 1, []string{"feed-photos", "feed-verb"}},
	}
	for _, c := range cases {
		loads := 0
		env := &Env{Object: c.object, Field: c.field, LoadValue: func() any {
			loads++
			return map[string]any{"item": "photo", "verb": "add"}
		}}
		m := set.Match(env, func(rule string, err error) { t.Errorf("%s: %v", rule, err) })
		if loads != c.loads {
			t.Errorf("%s/%s: value decoded %d times, want %d", c.object, c.field, loads, c.loads)
		}
		if fmt.Sprint(m.Rules) != fmt.Sprint(c.rules) {
			t.Errorf("%s/%s: rules %v, want %v", c.object, c.field, m.Rules, c.rules)
		}
	}
	tpl, err := CompileText(`"item " + value.item`)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := tpl.String(&Env{LoadValue: func() any { return map[string]any{"item": "photo"} }}); err != nil || s != "item photo" {
		t.Errorf("template with lazy value: %q, %v", s, err)
	}
}

func TestErrorClass(t *testing.T) {
	value := map[string]any{"a": "secret text", "n": 5.0, "list": []any{1.0}}
	tests := []struct{ when, want string }{
		{`value.x.y == 1`, "missing member at column 9"},
		{`value.list[5] == 1`, "index out of range at column 11"},
		{`value.a > 3`, "type mismatch at column 9"},
		{`!value.n`, "not a boolean at column 1"},
		{`len(value.n) > 0`, "type mismatch at column 1"},
		{"field == \"feed\" &&\n  value.x.y == 1", "missing member at column 11 of line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.when, func(t *testing.T) {
			set, err := Compile([]Spec{{Name: "r", When: tt.when, Sinks: []string{"s"}}})
			if err != nil {
				t.Fatal(err)
			}
			var got string
			set.Match(&Env{Field: "feed", Value: value}, func(rule string, err error) { got = ErrorClass(err) })
			if got != tt.want {
				t.Errorf("ErrorClass = %q, want %q", got, tt.want)
			}
			if strings.Contains(got, "secret") || strings.Contains(got, "5") && !strings.Contains(tt.want, "5") {
				t.Errorf("ErrorClass %q quotes the change", got)
			}
		})
	}
}
