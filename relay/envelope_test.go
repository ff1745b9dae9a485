package relay

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
)

// envelopeJSON mirrors the envelope for decoding in tests.
type envelopeJSON struct {
	ID     string `json:"id"`
	App    string `json:"app"`
	Object string `json:"object"`
	Entry  struct {
		ID   string `json:"id"`
		UID  string `json:"uid"`
		Time int64  `json:"time"`
	} `json:"entry"`
	Field      string          `json:"field"`
	Verb       string          `json:"verb"`
	Value      json.RawMessage `json:"value"`
	ReceivedAt time.Time       `json:"received_at"`
}

func TestAppendEnvelope_RoundTrip(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 890123456, time.UTC)
	tests := []struct {
		name string
		ev   Event
	}{
		{"whatsapp", Event{
			ID: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", App: "shop",
			Object: "whatsapp_business_account", Entry: Entry{ID: "102290129340398"},
			Field: "messages", ReceivedAt: at,
			Value: json.RawMessage(`{"messaging_product":"whatsapp","messages":[{"text":{"body":"caf\u00e9 \ud83d\udc4d"}}]}`),
		}},
		{"raw utf8 value", Event{
			ID: "k1", App: "a", Object: "page", Entry: Entry{ID: "1", Time: 1700000000},
			Field: "feed", Verb: "add", ReceivedAt: at,
			Value: json.RawMessage(`{"message":"café 👍 äöå","n":1.50,"e":1e3}`),
		}},
		{"user with uid, no value", Event{
			ID: "k2", App: "a", Object: "user", Entry: Entry{ID: "7", UID: "7", Time: 1},
			Field: "photos", ReceivedAt: at,
		}},
		{"strings needing escapes", Event{
			ID: "q\"b\\s/\n\r\t\x00\x1f", App: "<&>", Object: "obj\u2028\u2029", Entry: Entry{ID: "é👍"},
			Field: "f", Verb: "v\x7f", ReceivedAt: at, Value: json.RawMessage(`"x"`),
		}},
		{"zero time", Event{ID: "z", Value: json.RawMessage(`null`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := tt.ev
			out := AppendEnvelope([]byte("prefix"), &ev)
			if !bytes.HasPrefix(out, []byte("prefix")) {
				t.Fatalf("dst prefix lost: %q", out)
			}
			out = out[len("prefix"):]
			if !json.Valid(out) {
				t.Fatalf("invalid JSON: %s", out)
			}
			var got envelopeJSON
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if got.ID != ev.ID || got.App != ev.App || got.Object != ev.Object || got.Field != ev.Field || got.Verb != ev.Verb {
				t.Errorf("strings: got %+v, want %+v", got, ev)
			}
			if got.Entry.ID != ev.Entry.ID || got.Entry.UID != ev.Entry.UID || got.Entry.Time != ev.Entry.Time {
				t.Errorf("entry: got %+v, want %+v", got.Entry, ev.Entry)
			}
			if !got.ReceivedAt.Equal(ev.ReceivedAt) {
				t.Errorf("received_at: got %v, want %v", got.ReceivedAt, ev.ReceivedAt)
			}
			if !bytes.Equal(got.Value, ev.Value) {
				t.Errorf("value: got %s, want %s", got.Value, ev.Value)
			}
			if ev.Value != nil && !bytes.Contains(out, ev.Value) {
				t.Errorf("value bytes not copied verbatim in %s", out)
			}
			// Optional members are omitted, not written empty.
			var m map[string]json.RawMessage
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatal(err)
			}
			if _, ok := m["verb"]; ok != (ev.Verb != "") {
				t.Errorf("verb present=%v, want %v", ok, ev.Verb != "")
			}
			if _, ok := m["value"]; ok != (len(ev.Value) > 0) {
				t.Errorf("value present=%v, want %v", ok, len(ev.Value) > 0)
			}
		})
	}
}

func TestAppendEnvelope_InvalidUTF8(t *testing.T) {
	ev := Event{ID: "a\xffb\xc3", Field: "f"}
	out := AppendEnvelope(nil, &ev)
	if !json.Valid(out) || !utf8.Valid(out) {
		t.Fatalf("invalid output: %q", out)
	}
	var got envelopeJSON
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if want := "a\ufffdb\ufffd"; got.ID != want {
		t.Errorf("id = %q, want %q", got.ID, want)
	}
}

func BenchmarkAppendEnvelope(b *testing.B) {
	ev := Event{
		ID: "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", App: "shop",
		Object: "whatsapp_business_account", Entry: Entry{ID: "102290129340398", Time: 1700000000},
		Field: "messages", ReceivedAt: time.Now(),
		Value: json.RawMessage(`{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}]}`),
	}
	b.Run("append", func(b *testing.B) {
		buf := make([]byte, 0, 1024)
		b.ReportAllocs()
		for b.Loop() {
			buf = AppendEnvelope(buf[:0], &ev)
		}
		b.SetBytes(int64(len(buf)))
	})
	b.Run("encoding_json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out, err := json.Marshal(&ev)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(out)))
		}
	})
}
