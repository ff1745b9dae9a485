package relay

import (
	"encoding/binary"
	"reflect"
	"testing"
	"time"
)

// appendBinaryV1 is AppendBinary as version 1 wrote it (no Entry.TimeJSON, no RuleErrors):
// spools written by earlier binaries hold such records.
func appendBinaryV1(dst []byte, ev *Event) []byte {
	dst = append(dst, 1)
	dst = appendString(dst, ev.ID)
	dst = appendString(dst, ev.App)
	dst = appendString(dst, ev.Object)
	dst = appendString(dst, ev.Entry.ID)
	dst = appendString(dst, ev.Entry.UID)
	dst = binary.AppendVarint(dst, ev.Entry.Time)
	dst = appendString(dst, ev.Field)
	dst = appendString(dst, ev.Verb)
	dst = append(dst, byte(ev.Source))
	dst = binary.AppendUvarint(dst, uint64(len(ev.Value)))
	dst = append(dst, ev.Value...)
	dst = appendString(dst, ev.Signature)
	dst = binary.AppendVarint(dst, ev.ReceivedAt.UnixNano())
	dst = binary.AppendUvarint(dst, uint64(len(ev.Rules)))
	for _, r := range ev.Rules {
		dst = appendString(dst, r)
	}
	return dst
}

func TestCodec_Versions(t *testing.T) {
	at := time.Date(2026, 11, 23, 12, 0, 0, 5, time.UTC)
	old := Event{ID: "h:1", App: "shop", Object: "page", Entry: Entry{ID: "1", UID: "u", Time: 1700000000}, Field: "feed",
		Verb: "add", Source: SourceChanges, Value: []byte(`{"a":1}`), ReceivedAt: at, Rules: []string{"r1"}}
	var got Event
	if err := UnmarshalBinary(appendBinaryV1(nil, &old), &got); err != nil {
		t.Fatalf("version 1 record: %v", err)
	}
	if !reflect.DeepEqual(got, old) {
		t.Errorf("version 1 record decoded as %+v, want %+v", got, old)
	}

	cur := old
	cur.Entry.TimeJSON = `"2023-11-14T22:13:20+0000"`
	cur.RuleErrors = []RuleError{{Rule: "photos", Class: "missing member"}, {Rule: "b", Class: "type mismatch"}}
	got = Event{}
	if err := UnmarshalBinary(AppendBinary(nil, &cur), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, cur) {
		t.Errorf("decoded %+v, want %+v", got, cur)
	}
	for _, bad := range [][]byte{nil, {0}, {codecVersion + 1}, AppendBinary(nil, &cur)[:20]} {
		if err := UnmarshalBinary(bad, &got); err == nil {
			t.Errorf("UnmarshalBinary(%x) accepted a bad record", bad)
		}
	}
}

// TestBinarySizeMax: the bound the receiver sizes its item buffer with holds for events with
// and without every optional part, with numbers that take the longest varints.
func TestBinarySizeMax(t *testing.T) {
	long := string(make([]byte, 300)) // a length of two varint bytes
	for _, ev := range []Event{
		{},
		{ID: "wa:1", App: "shop", Object: "whatsapp_business_account", Entry: Entry{ID: "1", Time: 1700000000, TimeJSON: "1700000000"},
			Field: "messages", Source: SourceChanges, Value: []byte(`{"messages":[]}`), ReceivedAt: time.Now(), Rules: []string{"r"}},
		{ID: long, App: long, Object: long, Entry: Entry{ID: long, UID: long, Time: -1 << 63, TimeJSON: long}, Field: long, Verb: long,
			Source: SourceRaw, Value: []byte(long), Signature: long, ReceivedAt: time.Unix(0, -1<<63),
			Rules: []string{long, ""}, RuleErrors: []RuleError{{Rule: long, Class: long}}, Order: []OrderKey{{Sink: long, Key: long}, {}}},
	} {
		if n, max := len(AppendBinary(nil, &ev)), binarySizeMax(&ev); n > max {
			t.Errorf("encoded %d bytes, bound %d", n, max)
		}
	}
}

// TestCodec_RoundTrip: every field comes back as it was written, whichever are empty, and the
// decoded strings do not change when the record's bytes are reused afterwards.
func TestCodec_RoundTrip(t *testing.T) {
	full := Event{ID: "wamid.HBgLMTU1NTAxMjM0NTY3FQIAEhgg", App: "shop", Object: "whatsapp_business_account",
		Entry: Entry{ID: "102290129340398", UID: "u1", Time: 1700000000, TimeJSON: "1700000000"}, Field: "messages",
		Verb: "add", Source: SourceChanges, Value: []byte(`{"messages":[{"id":"x"}]}`), Signature: "sha256=abc",
		ReceivedAt: time.Date(2026, 12, 2, 5, 0, 0, 7, time.UTC), Rules: []string{"r1", "r2"},
		RuleErrors: []RuleError{{Rule: "r3", Class: "missing member"}}, Order: []OrderKey{{Sink: "a", Key: "k"}}}
	cases := []Event{full, {ReceivedAt: time.Unix(0, 0).UTC()}}
	for _, drop := range []func(*Event){
		func(e *Event) { e.ID = "" }, func(e *Event) { e.Entry.UID, e.Verb = "", "" },
		func(e *Event) { e.Signature, e.Value = "", nil }, func(e *Event) { e.App, e.Field, e.Entry.TimeJSON = "", "", "" },
	} {
		e := full
		drop(&e)
		cases = append(cases, e)
	}
	for _, want := range cases {
		rec := AppendBinary(nil, &want)
		var got Event
		if err := UnmarshalBinary(rec, &got); err != nil {
			t.Fatalf("%+v: %v", want, err)
		}
		if len(got.Value) > 0 {
			got.Value = append([]byte(nil), got.Value...) // Value aliases the record
		}
		clear(rec)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decoded %+v, want %+v", got, want)
		}
	}
}

func BenchmarkUnmarshalBinary(b *testing.B) {
	ev := Event{ID: "wamid.HBgLMTU1NTAxMjM0NTY3FQIAEhggQkE5Rjc0", App: "shop", Object: "whatsapp_business_account",
		Entry: Entry{ID: "102290129340398", Time: 1700000000, TimeJSON: "1700000000"}, Field: "messages",
		Source: SourceChanges, Value: []byte(`{"messaging_product":"whatsapp","messages":[{"id":"x","text":{"body":"hi"}}]}`),
		Signature:  "sha256=8a1f8e0b6b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e",
		ReceivedAt: time.Now(), Rules: []string{"whatsapp-inbound"}}
	rec := AppendBinary(nil, &ev)
	b.ReportAllocs()
	for b.Loop() {
		var got Event
		if err := UnmarshalBinary(rec, &got); err != nil {
			b.Fatal(err)
		}
	}
}
