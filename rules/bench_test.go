package rules

import (
	"fmt"
	"testing"
)

// BenchmarkMatch measures matching one WhatsApp message change against rule sets of one and
// ten rules, with and without `when` expressions. Of the ten rules, most name other objects
// or fields, as in a real config, and two match.
func BenchmarkMatch(b *testing.B) {
	value := decode(b, waMessage)
	sets := map[string][]Spec{
		"rules=1/when=no": {
			{Name: "r", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"}, Sinks: []string{"a"}},
		},
		"rules=1/when=yes": {
			{Name: "r", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"},
				When: `value.messages != nil`, Sinks: []string{"a"}},
		},
		"rules=10/when=no":  tenRules(false),
		"rules=10/when=yes": tenRules(true),
	}
	for _, name := range []string{"rules=1/when=no", "rules=1/when=yes", "rules=10/when=no", "rules=10/when=yes"} {
		set := mustCompile(b, sets[name])
		b.Run(name, func(b *testing.B) {
			env := &Env{Object: "whatsapp_business_account", Field: "messages", Value: value, Entry: Entry{ID: "102290129340398"}}
			b.ReportAllocs()
			for b.Loop() {
				m := set.Match(env, nil)
				if len(m.Sinks) == 0 {
					b.Fatal("no match")
				}
			}
		})
	}
}

// tenRules returns ten rules: six for other objects, two for other fields, two that match.
func tenRules(when bool) []Spec {
	w := func(s string) string {
		if when {
			return s
		}
		return ""
	}
	var specs []Spec
	for i, obj := range []string{"page", "instagram", "user", "permissions", "page", "instagram"} {
		specs = append(specs, Spec{Name: fmt.Sprintf("other-%d", i), Objects: []string{obj},
			When: w(`value.item == "photo"`), Sinks: []string{"ops"}})
	}
	specs = append(specs,
		Spec{Name: "wa-templates", Objects: []string{"whatsapp_business_account"}, Fields: []string{"message_template_status_update"},
			When: w(`value.event == "APPROVED"`), Sinks: []string{"ops"}},
		Spec{Name: "wa-account", Objects: []string{"whatsapp_business_account"}, Fields: []string{"account_update"}, Sinks: []string{"ops"}},
		Spec{Name: "wa-inbound", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"},
			When: w(`value.messages != nil && value.messages[0].type == "text"`), Sinks: []string{"orders", "archive"}},
		Spec{Name: "wa-failed", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"},
			When: w(`!any(value.statuses ?? [], .status == "failed")`), Sinks: []string{"ops", "archive"}},
	)
	return specs
}
