package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goodDecodeCases returns the decoded events of every well-formed golden input, by case name.
func goodDecodeCases(t testing.TB, app string) map[string][]Event {
	t.Helper()
	out := map[string][]Event{}
	for _, dir := range decodeCases(t) {
		name := filepath.Base(dir)
		if strings.HasPrefix(name, "bad_") {
			continue
		}
		input, err := os.ReadFile(filepath.Join(dir, "input.json"))
		if err != nil {
			t.Fatal(err)
		}
		events, err := Decode(input, app, testReceivedAt, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = events
	}
	return out
}

// rebatch puts ev alone into a new notification, after an unrelated entry, with another
// entry.time (unless keepTime) and its value re-indented, and decodes it again.
func rebatch(t *testing.T, ev *Event, keepTime bool) Event {
	t.Helper()
	var value bytes.Buffer
	if ev.Value != nil {
		if err := json.Indent(&value, ev.Value, "\t", "    "); err != nil {
			t.Fatal(err)
		}
	}
	entryTime := ev.Entry.Time + 987654
	if keepTime {
		entryTime = ev.Entry.Time
	}
	var member string
	switch ev.Source {
	case SourceChanges:
		if ev.Value == nil {
			member = fmt.Sprintf(`"changes": [{"field": %q}]`, ev.Field)
		} else {
			member = fmt.Sprintf(`"changes": [ {"value": %s, "field": %q} ]`, value.Bytes(), ev.Field)
		}
	case SourceChangedFields:
		member = fmt.Sprintf(`"changed_fields": [%q]`, ev.Field)
	case SourceMessaging, SourceStandby:
		member = fmt.Sprintf(`%q: [%s]`, ev.Field, value.Bytes())
	case SourceEntry:
		member = fmt.Sprintf(`"value": %s, "field": %q`, value.Bytes(), ev.Field)
	}
	entry := fmt.Sprintf(`{%s, "time": %d, "id": %q, "uid": %q}`, member, entryTime, ev.Entry.ID, ev.Entry.UID)
	if ev.Source == SourceUnknown {
		entry = value.String() // the whole entry, its time included
	}
	body := fmt.Sprintf(`{"entry": [{"id": "999", "time": 5, "changed_fields": ["other"]},
		%s], "object": %q}`, entry, ev.Object)
	events, err := Decode([]byte(body), ev.App, testReceivedAt, Limits{})
	if err != nil {
		t.Fatalf("rebatch: %v\n%s", err, body)
	}
	if len(events) != 2 {
		t.Fatalf("rebatch: got %d events", len(events))
	}
	return events[1]
}

func TestKey_StableAcrossBatches(t *testing.T) {
	for name, events := range goodDecodeCases(t, "shop") {
		t.Run(name, func(t *testing.T) {
			for i := range events {
				ev := &events[i]
				want := Key(ev)
				// Some keys cover entry.time on purpose (see Identities); their repeats keep it.
				keepTime := keyCoversTime(ev)
				again := rebatch(t, ev, keepTime)
				if got := Key(&again); got != want {
					t.Errorf("event %d (%s/%s): key %q in its batch, %q re-batched", i, ev.Field, ev.Verb, want, got)
				}
			}
		})
	}
}

// keyCoversTime reports whether ev's key includes entry.time.
func keyCoversTime(ev *Event) bool {
	switch IdentityOf(ev).Kind {
	case IdentityValueTime:
		return true
	case IdentityWhatsApp:
		return strings.HasPrefix(Key(ev), "h:")
	}
	return false
}

func TestKey_ChangedFieldsCoverTime(t *testing.T) {
	ev := Event{App: "shop", Object: "user", Entry: Entry{ID: "1", Time: 100}, Field: "email", Source: SourceChangedFields}
	later := ev
	later.Entry.Time = 200
	if Key(&ev) == Key(&later) {
		t.Error("two changed_fields notifications of the same field at different times share a key")
	}
}

func TestKey_Distinct(t *testing.T) {
	seen := map[string]string{}
	for name, events := range goodDecodeCases(t, "shop") {
		if name == "whatsapp_unicode_escaped" {
			continue // the same message as whatsapp_unicode_heavy_utf8, on purpose
		}
		for i := range events {
			k := Key(&events[i])
			where := fmt.Sprintf("%s[%d]", name, i)
			if prev, ok := seen[k]; ok {
				t.Errorf("%s and %s share key %q", prev, where, k)
			}
			seen[k] = where
			if len(k) > maxKeyLen || k == "" {
				t.Errorf("%s: key %q has length %d", where, k, len(k))
			}
		}
	}
	if len(seen) < 100 {
		t.Fatalf("only %d keys checked", len(seen))
	}
}

func TestKey_AppInKey(t *testing.T) {
	a := goodDecodeCases(t, "shop")
	b := goodDecodeCases(t, "support")
	for name := range a {
		for i := range a[name] {
			if Key(&a[name][i]) == Key(&b[name][i]) {
				t.Errorf("%s[%d]: two apps share key %q", name, i, Key(&a[name][i]))
			}
		}
	}
}

func TestKey_Forms(t *testing.T) {
	wa := func(value string) Event {
		return Event{App: "shop", Object: "whatsapp_business_account", Entry: Entry{ID: "1"}, Field: "messages", Source: SourceChanges, Value: json.RawMessage(value)}
	}
	msg := func(field, verb, value string) Event {
		return Event{App: "shop", Object: "page", Entry: Entry{ID: "1"}, Field: field, Verb: verb, Source: SourceMessaging, Value: json.RawMessage(value)}
	}
	long := strings.Repeat("x", 250)
	tests := []struct {
		name string
		ev   Event
		want string // exact key, or a prefix ending in ':'
	}{
		{"wa message", wa(`{"messages":[{"id":"wamid.A","type":"text"}]}`), "wa:msg:shop:wamid.A"},
		{"wa messages sorted", wa(`{"messages":[{"id":"wamid.B"},{"id":"wamid.A"}]}`), "wa:msg:shop:wamid.A,wamid.B"},
		{"wa status delivered", wa(`{"statuses":[{"id":"wamid.A","status":"delivered"}]}`), "wa:st:shop:wamid.A:delivered"},
		{"wa status read", wa(`{"statuses":[{"status":"read","id":"wamid.A"}]}`), "wa:st:shop:wamid.A:read"},
		{"wa statuses sorted", wa(`{"statuses":[{"id":"wamid.B","status":"sent"},{"id":"wamid.A","status":"read"}]}`), "wa:st:shop:wamid.A:read,wamid.B:sent"},
		{"wa group status per participant", wa(`{"statuses":[{"id":"wamid.G","status":"read","recipient_id":"120363000000000001@g.us","recipient_participant_id":"16505551234","recipient_type":"group"}]}`),
			"wa:st:shop:wamid.G:read:120363000000000001@g.us:16505551234"},
		{"wa one-to-one status keeps its form", wa(`{"statuses":[{"id":"wamid.A","status":"read","recipient_id":"16505551234"}]}`), "wa:st:shop:wamid.A:read"},
		{"wa escaped id", wa(`{"messages":[{"id":"wamid.\u0041"}]}`), "wa:msg:shop:wamid.A"},
		{"wa message without id", wa(`{"messages":[{"id":"wamid.A"},{"type":"text"}]}`), "h:"},
		{"wa status without status", wa(`{"statuses":[{"id":"wamid.A"}]}`), "h:"},
		{"wa messages and statuses", wa(`{"messages":[{"id":"wamid.A"}],"statuses":[{"id":"wamid.B","status":"read"}]}`), "h:"},
		{"wa errors only", wa(`{"errors":[{"code":131000}]}`), "h:"},
		{"wa long id", wa(`{"messages":[{"id":"` + long + `"}]}`), "n:"},
		{"wa not json", wa(`{"messages":[{"id":`), "h:"},
		{"wa other field", Event{App: "shop", Object: "whatsapp_business_account", Field: "account_update", Source: SourceChanges, Value: json.RawMessage(`{"messages":[{"id":"x"}]}`)}, "h:"},
		{"message", msg("messaging", "message", `{"message":{"mid":"m_1","text":"hi"}}`), "mid:shop:page:messaging:message:m_1"},
		{"standby message", msg("standby", "message", `{"message":{"mid":"m_1","text":"hi"}}`), "mid:shop:page:standby:message:m_1"},
		{"echo", msg("messaging", "echo", `{"message":{"mid":"m_1","is_echo":true}}`), "mid:shop:page:messaging:echo:m_1"},
		{"unsend", msg("messaging", "unsend", `{"message":{"mid":"m_1","is_deleted":true}}`), "mid:shop:page:messaging:unsend:m_1"},
		{"reply has its own mid", msg("messaging", "message", `{"message":{"reply_to":{"mid":"m_1"},"mid":"m_2","text":"yes"}}`), "mid:shop:page:messaging:message:m_2"},
		{"postback", msg("messaging", "postback", `{"postback":{"mid":"m_2","payload":"P"}}`), "mid:shop:page:messaging:postback:m_2"},
		{"postback without mid", msg("messaging", "postback", `{"postback":{"payload":"P"}}`), "h:"},
		{"reaction names another message", msg("messaging", "reaction", `{"reaction":{"mid":"m_1","action":"react"}}`), "h:"},
		{"message_edit names another message", msg("messaging", "message_edit", `{"message_edit":{"mid":"m_1","text":"x"}}`), "h:"},
		{"message not object", msg("messaging", "message", `{"message":"m_1"}`), "h:"},
		{"long mid", msg("messaging", "message", `{"message":{"mid":"`+long+`"}}`), "n:"},
		{"changed field", Event{App: "shop", Object: "user", Field: "email", Source: SourceChangedFields}, "h:"},
		{"garbage value", msg("messaging", "message", "\x00\xff{"), "h:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Key(&tt.ev)
			if strings.HasSuffix(tt.want, ":") {
				if !strings.HasPrefix(got, tt.want) || len(got) != len(tt.want)+32 {
					t.Errorf("got %q, want %s and 32 hex digits", got, tt.want)
				}
				return
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestKey_HashCoversIdentity(t *testing.T) {
	base := Event{App: "shop", Object: "page", Entry: Entry{ID: "1", Time: 10}, Field: "feed", Verb: "add", Source: SourceChanges,
		Value: json.RawMessage(`{"item":"status","verb":"add","message":"a b"}`)}
	same := []func(*Event){
		func(e *Event) { e.Entry.Time = 99 },
		func(e *Event) {
			e.Value = json.RawMessage("{\n  \"item\": \"status\",\n  \"verb\": \"add\",\n  \"message\": \"a b\"\n}")
		},
		func(e *Event) { e.ReceivedAt = testReceivedAt },
		func(e *Event) { e.Entry.UID = "7" },
	}
	different := []func(*Event){
		func(e *Event) { e.App = "other" },
		func(e *Event) { e.Object = "user" },
		func(e *Event) { e.Entry.ID = "2" },
		func(e *Event) { e.Field = "feeds" },
		func(e *Event) { e.Verb = "edited" },
		func(e *Event) { e.Value = json.RawMessage(`{"item":"status","verb":"add","message":"ab"}`) },
		func(e *Event) { e.Value = json.RawMessage(`{"item":"status","verb":"add","message":"a  b"}`) },
		func(e *Event) { e.Source = SourceStandby },
		// Length prefixes keep fields from running into each other.
		func(e *Event) { e.Object, e.Entry.ID = "page1", "" },
	}
	want := Key(&base)
	for i, f := range same {
		ev := base
		f(&ev)
		if got := Key(&ev); got != want {
			t.Errorf("same[%d]: key %q, want %q", i, got, want)
		}
	}
	for i, f := range different {
		ev := base
		f(&ev)
		if got := Key(&ev); got == want {
			t.Errorf("different[%d]: key %q is the same", i, got)
		}
	}
}

func FuzzKey(f *testing.F) {
	f.Add("whatsapp_business_account", "messages", "", []byte(`{"messages":[{"id":"a"}]}`))
	f.Add("page", "messaging", "message", []byte(`{"message":{"mid":"m"}}`))
	f.Add("page", "messaging", "postback", []byte(`{"postback":{"mid":"m"}}`))
	f.Fuzz(func(t *testing.T, object, field, verb string, value []byte) {
		for _, src := range []Source{SourceChanges, SourceMessaging, SourceStandby, SourceChangedFields} {
			ev := Event{App: "a", Object: object, Field: field, Verb: verb, Source: src, Value: value}
			k := Key(&ev)
			if k == "" || len(k) > maxKeyLen {
				t.Fatalf("key %q", k)
			}
			if k2 := Key(&ev); k2 != k {
				t.Fatalf("key not deterministic: %q, %q", k, k2)
			}
		}
	})
}

func BenchmarkKey(b *testing.B) {
	cases := goodDecodeCases(b, "shop")
	for _, bc := range []struct{ name, file string }{
		{"whatsapp-message", "whatsapp_text_message"},
		{"whatsapp-status", "whatsapp_status_read"},
		{"messenger-mid", "messenger_message"},
		{"hash-page-feed", "page_feed_add_photo"},
		{"hash-messenger-read", "messenger_read"},
	} {
		ev := &cases[bc.file][0]
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if Key(ev) == "" {
					b.Fatal("empty key")
				}
			}
		})
	}
}
