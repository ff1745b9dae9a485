package console

import (
	"strconv"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// TestFeed_NoAllocation checks that the hooks the receiver and the engine call do not
// allocate once a key has been seen (values off, as by default).
func TestFeed_NoAllocation(t *testing.T) {
	f := NewFeed(false)
	ev := &relay.Event{ID: "wa:msg:shop:x", App: "shop", Object: "whatsapp_business_account", Field: "messages", Value: []byte(`{"a":1}`)}
	rt := &relay.Route{Rules: []string{"r"}, Sinks: []string{"orders"}}
	tr := relay.DeliveryTrace{Sink: "orders", ChangeID: ev.ID, Attempt: 1, At: time.Now(), Outcome: "delivered"}
	f.Request("shop", relay.OutcomeAccepted, time.Millisecond)
	f.Delivered("orders", 1, time.Second)
	allocs := testing.AllocsPerRun(1000, func() {
		f.Request("shop", relay.OutcomeAccepted, time.Millisecond)
		f.Change(ev, rt, false)
		f.Trace(tr)
		f.Delivered("orders", 1, time.Second)
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per request, change and delivery", allocs)
	}
}

// TestFeed_RingsAreBounded checks that the tail keeps only the newest TailSize changes and
// a story only the newest AttemptSize attempts.
func TestFeed_RingsAreBounded(t *testing.T) {
	f := NewFeed(true)
	rt := &relay.Route{}
	for i := range TailSize + 10 {
		f.Change(&relay.Event{ID: "c" + strconv.Itoa(i), Value: []byte(`"v"`)}, rt, false)
	}
	items, last := f.Tail(TailFilter{})
	if len(items) != TailSize || last != TailSize+10 || items[0].ChangeID != "c"+strconv.Itoa(TailSize+9) || items[len(items)-1].ChangeID != "c10" {
		t.Errorf("tail: %d items, last %d, newest %s, oldest %s", len(items), last, items[0].ChangeID, items[len(items)-1].ChangeID)
	}
	if items[0].Value != `"v"` {
		t.Errorf("value not kept with payloads on: %q", items[0].Value)
	}
	if got, _ := f.Tail(TailFilter{ChangeID: "c9"}); len(got) != 0 {
		t.Errorf("evicted change still found")
	}
	for i := range AttemptSize + 5 {
		f.Trace(relay.DeliveryTrace{Sink: "s", ChangeID: "x", Attempt: i + 1, Outcome: "retrying"})
	}
	as := f.Attempts("x")
	if len(as) != AttemptSize || as[0].Attempt != 6 || as[len(as)-1].Attempt != AttemptSize+5 {
		t.Errorf("attempts: %d, first %d", len(as), as[0].Attempt)
	}
	r := f.Retention()
	if r.Changes != TailSize || r.Attempts != AttemptSize || r.OldestChangeAt.IsZero() {
		t.Errorf("retention %+v", r)
	}
}
