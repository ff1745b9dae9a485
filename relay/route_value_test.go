package relay

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/hubrelay/hubrelay/rules"
)

// TestRoute_DecodesOnlyProjection checks that routing decodes only what the rules read: a
// change with 300 contacts routed by `value.messages != nil` must not build the contacts.
func TestRoute_DecodesOnlyProjection(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"messages":[{"id":"m1","type":"text"}],"contacts":[`)
	for i := range 300 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"profile":{"name":"n%d"},"wa_id":"%d"}`, i, i)
	}
	b.WriteString(`]}`)
	ev := &Event{Object: "whatsapp_business_account", Field: "messages", Value: []byte(b.String())}
	for _, tt := range []struct {
		when     string
		min, max float64 // allocations per route
	}{
		{`value.messages != nil`, 0, 20},            // the contacts are skipped
		{`value.messages[0].type == "text"`, 0, 40}, // messages decoded, contacts skipped
		{`len(value) > 0`, 3000, math.Inf(1)},       // everything decoded
	} {
		set, err := rules.Compile([]rules.Spec{{Name: "r", When: tt.when, Sinks: []string{"s"}}})
		if err != nil {
			t.Fatal(err)
		}
		table := &routeTable{rules: set}
		if rt := table.route(ev, nil, nil); len(rt.Sinks) != 1 {
			t.Fatalf("%s: route = %+v, want sink s", tt.when, rt)
		}
		allocs := testing.AllocsPerRun(20, func() { table.route(ev, nil, nil) })
		if allocs < tt.min || allocs > tt.max {
			t.Errorf("%s: %.0f allocations per route, want %.0f to %.0f", tt.when, allocs, tt.min, tt.max)
		}
	}
}
