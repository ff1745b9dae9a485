package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/rules"
)

func TestConversation(t *testing.T) {
	wa := func(value string) *relay.Event {
		return &relay.Event{Object: "whatsapp_business_account", Field: "messages", Entry: relay.Entry{ID: "waba"},
			Source: relay.SourceChanges, Value: json.RawMessage(value)}
	}
	msg := func(object, value string) *relay.Event {
		return &relay.Event{Object: object, Field: "messaging", Entry: relay.Entry{ID: "PAGE"},
			Source: relay.SourceMessaging, Value: json.RawMessage(value)}
	}
	for _, c := range []struct {
		name string
		ev   *relay.Event
		want string
	}{
		{"whatsapp message", wa(`{"metadata":{"phone_number_id":"106"},"messages":[{"from":"16505551234","id":"wamid.1"}]}`), "whatsapp:106:16505551234"},
		{"whatsapp status", wa(`{"metadata":{"phone_number_id":"106"},"statuses":[{"id":"wamid.1","status":"read","recipient_id":"16505551234"}]}`), "whatsapp:106:16505551234"},
		{"whatsapp group message", wa(`{"metadata":{"phone_number_id":"106"},"messages":[{"from":"1650","group_id":"G1"}]}`), "whatsapp:106:G1"},
		{"whatsapp group status", wa(`{"metadata":{"phone_number_id":"106"},"statuses":[{"recipient_id":"G1","recipient_type":"group"}]}`), "whatsapp:106:G1"},
		{"whatsapp errors only", wa(`{"metadata":{"phone_number_id":"106"},"errors":[{"code":1}]}`), "whatsapp:106"},
		{"whatsapp numeric ids", wa(`{"metadata":{"phone_number_id":106},"messages":[{"from":1650}]}`), "whatsapp:106:1650"},
		{"whatsapp no metadata", wa(`{"messages":[{"from":"1650"}]}`), "whatsapp_business_account:waba"},
		{"whatsapp not json", wa(`[1,2`), "whatsapp_business_account:waba"},
		{"messenger message", msg("page", `{"sender":{"id":"USER"},"recipient":{"id":"PAGE"},"message":{"mid":"m1"}}`), "page:PAGE:USER"},
		{"messenger echo", msg("page", `{"sender":{"id":"PAGE"},"recipient":{"id":"USER"},"message":{"mid":"m2","is_echo":true}}`), "page:PAGE:USER"},
		{"messenger echo, other sender id", msg("page", `{"sender":{"id":"APP"},"recipient":{"id":"USER"},"message":{"is_echo":true}}`), "page:PAGE:USER"},
		{"messenger delivery", msg("page", `{"sender":{"id":"USER"},"recipient":{"id":"PAGE"},"delivery":{"mids":["m1"]}}`), "page:PAGE:USER"},
		{"instagram message", msg("instagram", `{"sender":{"id":"IGSID"},"recipient":{"id":"PAGE"},"message":{"mid":"m"}}`), "instagram:PAGE:IGSID"},
		{"messaging without parties", msg("page", `{"optin":{}}`), "page:PAGE"},
		{"page feed", &relay.Event{Object: "page", Field: "feed", Entry: relay.Entry{ID: "PAGE"}, Source: relay.SourceChanges, Value: json.RawMessage(`{"sender_id":"x"}`)}, "page:PAGE"},
		{"user", &relay.Event{Object: "user", Field: "email", Entry: relay.Entry{ID: "U1"}, Source: relay.SourceChangedFields}, "user:U1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := relay.Conversation(c.ev); got != c.want {
				t.Fatalf("Conversation = %q, want %q", got, c.want)
			}
		})
	}
}

// TestConversation_MetaSamples: the status and the message of one WhatsApp customer share a
// key, as do Messenger's message and delivery, in Meta's sample payloads.
func TestConversation_MetaSamples(t *testing.T) {
	key := func(file string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("/work/shared/meta", file))
		if err != nil {
			t.Skipf("Meta samples not here: %v", err)
		}
		evs, err := relay.Decode(b, "a", time.Now(), relay.Limits{})
		if err != nil || len(evs) == 0 {
			t.Fatalf("decode %s: %v", file, err)
		}
		return relay.Conversation(&evs[0])
	}
	if a, b := key("whatsapp_text_message.json"), key("whatsapp_status_read.json"); a != b || !strings.HasPrefix(a, "whatsapp:") {
		t.Errorf("WhatsApp message %q and its status %q differ", a, b)
	}
	if a, b := key("messenger_message.json"), key("messenger_delivery.json"); a != b {
		t.Errorf("Messenger message %q and its delivery %q differ", a, b)
	}
}

func TestOrderKeyOf(t *testing.T) {
	ev := relay.Event{ID: "x", Object: "page", Value: json.RawMessage(`{"a":1}`), Rules: []string{"r"},
		RuleErrors: []relay.RuleError{{Rule: "q", Class: "c"}},
		Order:      []relay.OrderKey{{Sink: "a", Key: "ka"}, {Sink: "b", Key: "kb"}}}
	data := relay.AppendBinary(nil, &ev)
	if got := relay.OrderKeyOf(data, "b"); got != "kb" {
		t.Fatalf("OrderKeyOf(b) = %q", got)
	}
	if got := relay.OrderKeyOf(data, "c"); got != "" {
		t.Fatalf("OrderKeyOf(c) = %q", got)
	}
	var back relay.Event
	if err := relay.UnmarshalBinary(data, &back); err != nil || !slices.Equal(back.Order, ev.Order) {
		t.Fatalf("round trip: %v, %v", err, back.Order)
	}
	for i := range data { // truncated records: no key, no panic
		_ = relay.OrderKeyOf(data[:i], "b")
	}
	old := append([]byte{2}, data[1:]...)
	if got := relay.OrderKeyOf(old, "b"); got != "" {
		t.Fatalf("a version 2 record has no key, got %q", got)
	}
}

func TestRouter_OrderBy(t *testing.T) {
	set, err := rules.Compile([]rules.Spec{{Name: "all", Sinks: []string{"bot", "plain", "phone"}}})
	if err != nil {
		t.Fatal(err)
	}
	conv, _ := rules.CompileKey("conversation")
	phone, _ := rules.CompileKey("value.metadata.phone_number_id")
	r := relay.NewRouter(set, nil)
	r.Configure(set, nil, relay.RouteOptions{OrderBy: map[string]*rules.Key{"bot": conv, "phone": phone}})
	ev := &relay.Event{Object: "whatsapp_business_account", Field: "messages", Source: relay.SourceChanges,
		Value: json.RawMessage(`{"metadata":{"phone_number_id":"106"},"messages":[{"from":"1650"}]}`)}
	rt := r.Route(ev, nil)
	want := []relay.OrderKey{{Sink: "bot", Key: "whatsapp:106:1650"}, {Sink: "phone", Key: "106"}}
	if !slices.Equal(rt.Order, want) || len(rt.OrderErrors) != 0 {
		t.Fatalf("Order = %v, errors %v; want %v", rt.Order, rt.OrderErrors, want)
	}
	ev.Value = json.RawMessage(`{"statuses":[]}`) // no metadata: phone's key fails
	rt = r.Route(ev, nil)
	if len(rt.OrderErrors) != 1 || rt.OrderErrors[0].Sink != "phone" || len(rt.Order) != 1 {
		t.Fatalf("Order = %v, errors %v; want bot's key and phone's error", rt.Order, rt.OrderErrors)
	}
}

func TestCompileKey(t *testing.T) {
	for src, want := range map[string]string{`"a" + "b"`: "ab", `1 + 1`: "2", `1.5`: "1.5", `true`: "true", `nil`: "", `value.n`: "7", `value.s`: "x"} {
		k, err := rules.CompileKey(src)
		if err != nil {
			t.Fatalf("CompileKey(%s): %v", src, err)
		}
		got, err := k.Eval(&rules.Env{Value: map[string]any{"n": 7.0, "s": "x"}})
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", src, got, err, want)
		}
	}
	k, _ := rules.CompileKey("value.l")
	if _, err := k.Eval(&rules.Env{Value: map[string]any{"l": []any{1}}}); err == nil {
		t.Error("a list key evaluated without error")
	}
}

// batchOrderSink checks that a batch never holds two changes of one key, and that each key's
// changes arrive in order; it fails a third of its batches.
type batchOrderSink struct {
	mu   sync.Mutex
	last map[string]int
	bad  []string
	n    int
}

func (s *batchOrderSink) Name() string { return "batch" }

func (s *batchOrderSink) Deliver(ctx context.Context, ev *relay.Event) error {
	return s.DeliverBatch(ctx, []*relay.Event{ev})
}

func (s *batchOrderSink) DeliverBatch(_ context.Context, evs []*relay.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := map[string]bool{}
	for _, ev := range evs {
		k, _, _ := strings.Cut(ev.ID, "-")
		if keys[k] {
			s.bad = append(s.bad, fmt.Sprintf("batch holds two changes of key %s", k))
		}
		keys[k] = true
	}
	if rand.IntN(3) == 0 {
		return &relay.StatusError{Status: 503, Msg: "503"}
	}
	for _, ev := range evs {
		k, n, _ := strings.Cut(ev.ID, "-")
		i, _ := strconv.Atoi(n)
		if last, ok := s.last[k]; ok && i < last || !ok && i != 0 {
			s.bad = append(s.bad, fmt.Sprintf("key %s: %d after %d", k, i, last))
		}
		s.last[k] = i
		s.n++
	}
	return nil
}

func orderedItems(keys, perKey int, sink string) []spool.Item {
	var items []spool.Item
	for n := range perKey {
		for k := range keys {
			ev := relay.Event{ID: fmt.Sprintf("k%d-%d", k, n), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges,
				Value: json.RawMessage(`{}`), ReceivedAt: time.Now(), Order: []relay.OrderKey{{Sink: sink, Key: strconv.Itoa(k)}}}
			items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{sink}})
		}
	}
	return items
}

// TestEngine_OrderBatches: with batching, a batch never holds two changes of one key, and
// each key's changes arrive in order through failed batches.
func TestEngine_OrderBatches(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := &batchOrderSink{last: map[string]int{}}
	const keys, perKey = 10, 20
	if _, err := h.spool.Accept(context.Background(), orderedItems(keys, perKey, "batch"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := h.engine.SetSinks([]relay.SinkConfig{{Sink: s, Concurrency: 3, Retry: fastRetry(0),
		Batch: relay.BatchPolicy{MaxChanges: 8, MaxWait: time.Millisecond}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every change delivered", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.n >= keys*perKey })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.bad {
		t.Error(b)
	}
}

// keySink rejects the change "k0-0" permanently once fail is closed, holds "k1-0" until
// release is closed, and records the rest.
type keySink struct {
	mu            sync.Mutex
	got           []string
	fail, release chan struct{}
}

func (s *keySink) Name() string { return "bot" }

func (s *keySink) Deliver(ctx context.Context, ev *relay.Event) error {
	switch ev.ID {
	case "k0-0":
		select {
		case <-s.fail:
		case <-ctx.Done():
			return ctx.Err()
		}
		return &relay.StatusError{Status: 400, Msg: "400", Perm: true}
	case "k1-0":
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	s.got = append(s.got, ev.ID)
	s.mu.Unlock()
	return nil
}

func (s *keySink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// TestEngine_OrderDeadLetterAndBusyKey: a change of a key in flight holds back its key only
// (other keys go on), and a dead-lettered change releases its key; its letter names its key
// and the changes of the key that were waiting behind it.
func TestEngine_OrderDeadLetterAndBusyKey(t *testing.T) {
	h := newHarness(t, t.TempDir())
	s := &keySink{fail: make(chan struct{}), release: make(chan struct{})}
	if _, err := h.spool.Accept(context.Background(), orderedItems(3, 3, "bot"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := h.engine.SetSinks([]relay.SinkConfig{{Sink: s, Concurrency: 4, Retry: fastRetry(3)}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "key 2 delivered while keys 0 and 1 wait", func() bool { return slices.Contains(s.received(), "k2-2") })
	for _, id := range s.received() {
		if !strings.HasPrefix(id, "k2-") {
			t.Fatalf("%s delivered while the first change of its key was in flight", id)
		}
	}
	close(s.fail)
	eventually(t, "key 0 delivered after its first change's dead letter", func() bool { return slices.Contains(s.received(), "k0-2") })
	for _, id := range s.received() {
		if strings.HasPrefix(id, "k1-") {
			t.Fatalf("%s delivered while k1-0 was in flight", id)
		}
	}
	close(s.release)
	eventually(t, "key 1 delivered", func() bool { return slices.Contains(s.received(), "k1-2") })
	got := s.received()
	if i, j := slices.Index(got, "k1-0"), slices.Index(got, "k1-1"); i < 0 || j < i {
		t.Fatalf("key 1 out of order: %v", got)
	}
	letters, err := h.dl.List(deadletter.Filter{})
	if err != nil || len(letters) != 1 {
		t.Fatalf("dead letters: %v, %v; want one", letters, err)
	}
	l := letters[0]
	if l.ChangeID != "k0-0" || l.OrderKey != "0" || !slices.Equal(l.DeliveredAfter, []string{"k0-1", "k0-2"}) {
		t.Fatalf("letter: change %s, order key %q, delivered after %v; want k0-0, 0, [k0-1 k0-2]", l.ChangeID, l.OrderKey, l.DeliveredAfter)
	}
}
