package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

var updateGolden = flag.Bool("update", false, "rewrite relay/testdata/decode/*/golden.json and generated inputs")

// decodeLimits are the limits the golden files are produced with: the config defaults.
var decodeLimits = Limits{MaxChanges: 5000, MaxDepth: 64}

var testReceivedAt = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// goldenEvent is how one decoded event is written to golden.json.
type goldenEvent struct {
	ID     string          `json:"id"`
	Object string          `json:"object"`
	Entry  Entry           `json:"entry"`
	Field  string          `json:"field"`
	Verb   string          `json:"verb,omitempty"`
	Source string          `json:"source"`
	Value  json.RawMessage `json:"value,omitempty"`
}

// goldenFile is the content of golden.json: the events, or the error Decode returned.
type goldenFile struct {
	Error  string        `json:"error,omitempty"`
	Events []goldenEvent `json:"events,omitempty"`
}

// wantCounts are the change counts INDEX.md gives for the shared payloads, and ours.
var wantCounts = map[string]int{
	"large_batch_messenger_100_entries": 100,
	"user_changed_fields":               3,
	"instagram_comment":                 2,
	"mixed_changes_and_messaging":       3,
	"messenger_standby_and_echo":        4,
	"numeric_ids_legacy":                8,
	"empty_entry_array":                 0,
	"instagram_message_lifecycle":       8,
	"whatsapp_group_statuses":           2,
	"unknown_entry_content":             5,
	"permissions_regranted":             3,
}

func decodeCases(t testing.TB) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join("testdata", "decode", "*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no decode test cases: %v", err)
	}
	return dirs
}

// escapeNonASCII rewrites raw UTF-8 JSON into Meta's wire form: every non-ASCII character as a
// lowercase \uXXXX escape, characters beyond the BMP as surrogate pairs. Non-ASCII bytes only
// occur inside strings, so the result is the same JSON document.
func escapeNonASCII(b []byte) []byte {
	var out []byte
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r < utf8.RuneSelf:
			out = append(out, b[0])
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		b = b[n:]
	}
	return out
}

func TestDecode_EscapedTwin(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "decode", "whatsapp_unicode_heavy_utf8", "input.json"))
	if err != nil {
		t.Fatal(err)
	}
	escaped := escapeNonASCII(raw)
	path := filepath.Join("testdata", "decode", "whatsapp_unicode_escaped", "input.json")
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, escaped, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, escaped) {
		t.Fatalf("%s is not the escaped form of the UTF-8 payload (rerun with -update)", path)
	}
	for _, b := range committed {
		if b >= utf8.RuneSelf {
			t.Fatalf("escaped form still holds a non-ASCII byte 0x%02x", b)
		}
	}
	for _, want := range []string{`\u00e9`, `\ud83d\udc4d`, `\u200f`, `\u0645`} {
		if !bytes.Contains(committed, []byte(want)) {
			t.Errorf("escaped form lacks %s", want)
		}
	}
	if Sign(raw, "s") == Sign(committed, "s") {
		t.Error("both forms have the same signature")
	}

	a, err := Decode(raw, "shop", testReceivedAt, decodeLimits)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Decode(committed, "shop", testReceivedAt, decodeLimits)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 1 || len(b) != 1 {
		t.Fatalf("got %d and %d events, want 1 each", len(a), len(b))
	}
	var va, vb any
	if err := json.Unmarshal(a[0].Value, &va); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b[0].Value, &vb); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(va, vb) {
		t.Errorf("the two forms decode to different values:\n%v\n%v", va, vb)
	}
	if !bytes.Contains(b[0].Value, []byte(`\ud83d\udc4d`)) {
		t.Error("escaped value was not forwarded as received")
	}
	if ka, kb := Key(&a[0]), Key(&b[0]); ka != kb {
		t.Errorf("keys differ between the forms: %q, %q", ka, kb)
	}
}

func TestDecode_Golden(t *testing.T) {
	for _, dir := range decodeCases(t) {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(filepath.Join(dir, "input.json"))
			if err != nil {
				t.Fatal(err)
			}
			events, err := Decode(input, "shop", testReceivedAt, decodeLimits)
			var got goldenFile
			if err != nil {
				if !strings.HasPrefix(name, "bad_") {
					t.Fatalf("Decode: %v", err)
				}
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("Decode error %v is not ErrMalformed", err)
				}
				if events != nil {
					t.Errorf("Decode returned %d events with its error", len(events))
				}
				got.Error = err.Error()
			} else if strings.HasPrefix(name, "bad_") {
				t.Fatalf("Decode accepted a malformed body: %d events", len(events))
			}
			for i := range events {
				ev := &events[i]
				if ev.App != "shop" || !ev.ReceivedAt.Equal(testReceivedAt) || ev.ID != "" {
					t.Errorf("event %d: app %q, received_at %v, id %q", i, ev.App, ev.ReceivedAt, ev.ID)
				}
				got.Events = append(got.Events, goldenEvent{
					ID: Key(ev), Object: ev.Object, Entry: ev.Entry, Field: ev.Field, Verb: ev.Verb,
					Source: ev.Source.String(), Value: ev.Value,
				})
			}
			if want, ok := wantCounts[name]; ok && len(events) != want {
				t.Errorf("got %d events, want %d", len(events), want)
			} else if !ok && err == nil && len(events) != 1 {
				t.Errorf("got %d events, want 1", len(events))
			}
			if err == nil {
				checkAgainstReference(t, input, events)
			}

			data, mErr := json.MarshalIndent(got, "", "  ")
			if mErr != nil {
				t.Fatal(mErr)
			}
			data = append(data, '\n')
			golden := filepath.Join(dir, "golden.json")
			if *updateGolden {
				if err := os.WriteFile(golden, data, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./relay -run TestDecode -update)", err)
			}
			if !bytes.Equal(data, want) {
				t.Errorf("decode output differs from %s (rerun with -update if intended):\n%s", golden, data)
			}
		})
	}
}

// refEvent is what the reference decoder, built on encoding/json, expects of one event.
type refEvent struct {
	entryID string
	field   string
	source  Source
	value   []byte
}

// referenceDecode decodes a well-formed notification with encoding/json, keeping member order
// with a token stream, as an independent check of Decode.
func referenceDecode(t testing.TB, body []byte) []refEvent {
	t.Helper()
	var env struct {
		Object string            `json:"object"`
		Entry  []json.RawMessage `json:"entry"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatalf("reference decode: %v", err)
	}
	var out []refEvent
	for _, raw := range env.Entry {
		var head struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			t.Fatal(err)
		}
		id := string(head.ID)
		if s := ""; json.Unmarshal(head.ID, &s) == nil {
			id = s
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
		var field, unknown string
		var value json.RawMessage
		haveField, fieldOK := false, false
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			switch tok.(string) {
			case "changes":
				var cs []struct {
					Field string          `json:"field"`
					Value json.RawMessage `json:"value"`
				}
				if err := dec.Decode(&cs); err != nil {
					t.Fatal(err)
				}
				for _, c := range cs {
					out = append(out, refEvent{id, c.Field, SourceChanges, c.Value})
				}
			case "changed_fields":
				var fs []string
				if err := dec.Decode(&fs); err != nil {
					t.Fatal(err)
				}
				for _, f := range fs {
					out = append(out, refEvent{id, f, SourceChangedFields, nil})
				}
			case "messaging", "standby":
				var ms []json.RawMessage
				if err := dec.Decode(&ms); err != nil {
					t.Fatal(err)
				}
				src := SourceMessaging
				if tok == "standby" {
					src = SourceStandby
				}
				for _, m := range ms {
					out = append(out, refEvent{id, tok.(string), src, m})
				}
			case "field":
				haveField = true
				var v any
				if err := dec.Decode(&v); err != nil {
					t.Fatal(err)
				}
				field, _ = v.(string)
				fieldOK = field != ""
			case "value":
				if err := dec.Decode(&value); err != nil {
					t.Fatal(err)
				}
			case "id", "uid", "time":
				var skip json.RawMessage
				if err := dec.Decode(&skip); err != nil {
					t.Fatal(err)
				}
			default:
				var v json.RawMessage
				if err := dec.Decode(&v); err != nil {
					t.Fatal(err)
				}
				var probe any
				_ = json.Unmarshal(v, &probe)
				empty := probe == nil
				switch p := probe.(type) {
				case []any:
					empty = len(p) == 0
				case map[string]any:
					empty = len(p) == 0
				}
				if unknown == "" && !empty {
					unknown = tok.(string)
				}
			}
		}
		switch {
		case fieldOK && value != nil:
			out = append(out, refEvent{id, field, SourceEntry, value})
		case unknown == "" && haveField:
			unknown = "field"
		case unknown == "" && value != nil:
			unknown = "value"
		}
		if unknown != "" {
			out = append(out, refEvent{id, unknown, SourceUnknown, raw})
		}
	}
	return out
}

// checkAgainstReference compares events with the reference decoder, value bytes included, and
// checks every value is the very bytes of the input.
func checkAgainstReference(t *testing.T, input []byte, events []Event) {
	t.Helper()
	ref := referenceDecode(t, input)
	if len(ref) != len(events) {
		t.Fatalf("reference decoder found %d events, Decode %d", len(ref), len(events))
	}
	for i, r := range ref {
		ev := &events[i]
		if ev.Entry.ID != r.entryID || ev.Field != r.field || ev.Source != r.source {
			t.Errorf("event %d: got entry %q field %q source %v, reference %q %q %v",
				i, ev.Entry.ID, ev.Field, ev.Source, r.entryID, r.field, r.source)
		}
		if !bytes.Equal(ev.Value, r.value) {
			t.Errorf("event %d: value\n%s\nreference\n%s", i, ev.Value, r.value)
		}
		if ev.Value != nil {
			if !aliases(input, ev.Value) {
				t.Errorf("event %d: value is not a sub-slice of the input", i)
			}
			if cap(ev.Value) != len(ev.Value) {
				t.Errorf("event %d: value capacity %d exceeds its length %d", i, cap(ev.Value), len(ev.Value))
			}
		}
	}
}

// aliases reports whether sub lies inside body's memory.
func aliases(body, sub []byte) bool {
	if len(body) == 0 || len(sub) == 0 {
		return false
	}
	b, p := uintptr(unsafe.Pointer(unsafe.SliceData(body))), uintptr(unsafe.Pointer(unsafe.SliceData(sub)))
	return p >= b && p+uintptr(len(sub)) <= b+uintptr(len(body))
}

func TestDecode_Errors(t *testing.T) {
	deep := func(n int) string {
		return `{"object":"page","entry":[{"id":"1","changes":[{"field":"f","value":` +
			strings.Repeat("[", n) + strings.Repeat("]", n) + `}]}]}`
	}
	changes := func(n int) string {
		return `{"object":"page","entry":[{"id":"1","changes":[` +
			strings.TrimSuffix(strings.Repeat(`{"field":"f","value":1},`, n), ",") + `]}]}`
	}
	tests := []struct {
		name   string
		body   string
		lim    Limits
		target error
		reason string
	}{
		{"depth at limit", deep(59), Limits{MaxDepth: 64}, nil, ""},
		{"depth over limit", deep(60), Limits{MaxDepth: 64}, ErrMalformed, "nesting deeper than 64 levels"},
		{"hostile depth without limit", deep(1_000_000), Limits{}, ErrMalformed, "nesting deeper than 10000 levels"},
		{"hostile top-level array", strings.Repeat("[", 1_000_000), Limits{}, ErrMalformed, "top level is an array"},
		{"hostile unknown member", `{"x":` + strings.Repeat("{\"a\":", 1_000_000), Limits{MaxDepth: 64}, ErrMalformed, "nesting deeper than 64"},
		{"changes at limit", changes(5), Limits{MaxChanges: 5}, nil, ""},
		{"changes over limit", changes(6), Limits{MaxChanges: 5}, ErrTooMany, "too many changes: more than 5 in one notification"},
		{"changed fields over limit", `{"object":"user","entry":[{"changed_fields":["a","b","c"]}]}`, Limits{MaxChanges: 2}, ErrTooMany, "more than 2"},
		{"limit across entries", `{"object":"page","entry":[{"messaging":[{"read":{}}]},{"messaging":[{"read":{}}]}]}`, Limits{MaxChanges: 1}, ErrTooMany, "more than 1"},
		{"field empty", `{"object":"page","entry":[{"changes":[{"field":"","value":1}]}]}`, Limits{}, ErrMalformed, "entry[0].changes[0].field: empty"},
		{"duplicate field", `{"object":"page","entry":[{"changes":[{"field":"a","field":"b"}]}]}`, Limits{}, ErrMalformed, `entry[0].changes[0]: duplicate "field"`},
		{"duplicate entry id", `{"object":"page","entry":[{"id":"1","id":"2"}]}`, Limits{}, ErrMalformed, `entry[0]: duplicate "id"`},
		{"standby not array", `{"object":"page","entry":[{},{"standby":"x"}]}`, Limits{}, ErrMalformed, "entry[1].standby: want an array, got a string"},
		{"control character", "{\"object\":\"pa\nge\",\"entry\":[]}", Limits{}, ErrMalformed, "invalid JSON"},
		{"lone minus", `{"object":"page","entry":[{"time":-}]}`, Limits{}, ErrMalformed, "invalid JSON"},
		{"leading zero", `{"object":"page","entry":[{"time":01}]}`, Limits{}, ErrMalformed, "invalid JSON"},
		{"bad unicode escape", `{"object":"page","entry":[{"id":"\u12G4"}]}`, Limits{}, ErrMalformed, `invalid JSON: unexpected 'G' in \u escape`},
		{"nul byte", "{\"object\":\"page\",\"entry\":[]}\x00", Limits{}, ErrMalformed, "unexpected data after"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events, err := Decode([]byte(tt.body), "shop", testReceivedAt, tt.lim)
			if tt.target == nil {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.target) {
				t.Fatalf("got error %v, want %v", err, tt.target)
			}
			if events != nil {
				t.Errorf("got %d events with the error", len(events))
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not contain %q", err, tt.reason)
			}
			if errors.Is(err, ErrMalformed) && errors.Is(err, ErrTooMany) {
				t.Errorf("error %v is both malformed and too many", err)
			}
		})
	}
}

func TestDecode_ErrorTypes(t *testing.T) {
	_, err := Decode([]byte(`{"object":"page","entry":[]} x`), "a", testReceivedAt, Limits{})
	var de *DecodeError
	if !errors.As(err, &de) || de.Offset != 29 {
		t.Fatalf("got %#v, want a *DecodeError at offset 29", err)
	}
	_, err = Decode([]byte(`{"object":"page","entry":[{"changed_fields":["a","b"]}]}`), "a", testReceivedAt, Limits{MaxChanges: 1})
	var tm *TooManyError
	if !errors.As(err, &tm) || tm.Limit != 1 {
		t.Fatalf("got %#v, want a *TooManyError with limit 1", err)
	}
}

func TestDecode_EntryTime(t *testing.T) {
	tests := []struct {
		time string
		want int64
		// envelope is entry.time as the envelope carries it: what was sent ("" = left out).
		envelope string
	}{
		{`1750034000`, 1750034000, `1750034000`},
		{`1750031500123`, 1750031500123, `1750031500123`},
		{`"1750034002"`, 1750034002, `"1750034002"`},
		{`"1750031500123"`, 1750031500123, `"1750031500123"`},
		{`1750034003.75`, 1750034003, `1750034003.75`},
		{`"17.5e2"`, 1750, `"17.5e2"`},
		{`-5`, -5, `-5`},
		{`1e300`, 0, `1e300`},
		{`"soon"`, 0, `"soon"`},
		{`null`, 0, `null`},
		{`true`, 0, `true`},
		{`{"at":1}`, 0, `{"at":1}`},
		{`[1]`, 0, `[1]`},
		{`"2026-11-23T12:00:00+0000"`, 1795435200, `"2026-11-23T12:00:00+0000"`},
		{`"2026-11-23T12:00:00Z"`, 1795435200, `"2026-11-23T12:00:00Z"`},
		{`"2026-11-23T13:00:00.250+01:00"`, 1795435200, `"2026-11-23T13:00:00.250+01:00"`},
		{`"2026-11-23T12:00:00"`, 1795435200, `"2026-11-23T12:00:00"`},
		{`"2026-11-23"`, 1795392000, `"2026-11-23"`},
		{`"2026-13-45T99:00:00Z"`, 0, `"2026-13-45T99:00:00Z"`},
	}
	for _, tt := range tests {
		t.Run(tt.time, func(t *testing.T) {
			body := `{"object":"user","entry":[{"id":"1","time":` + tt.time + `,"changed_fields":["email"]}]}`
			events, err := Decode([]byte(body), "a", testReceivedAt, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			ev := &events[0]
			if ev.Entry.Time != tt.want {
				t.Errorf("time %s decoded as %d, want %d", tt.time, ev.Entry.Time, tt.want)
			}
			var env struct {
				Entry map[string]json.RawMessage `json:"entry"`
			}
			if err := json.Unmarshal(AppendEnvelope(nil, ev), &env); err != nil {
				t.Fatal(err)
			}
			if got := string(env.Entry["time"]); got != tt.envelope {
				t.Errorf("envelope entry.time %s, want %s as sent", got, tt.envelope)
			}
			// The spool and dead letters keep it too.
			var back Event
			if err := UnmarshalBinary(AppendBinary(nil, ev), &back); err != nil || back.Entry != ev.Entry {
				t.Errorf("spool round trip: %+v, %v; want %+v", back.Entry, err, ev.Entry)
			}
			var fromLetter Event
			if err := json.Unmarshal(AppendEnvelope(nil, ev), &fromLetter); err != nil || fromLetter.Entry != ev.Entry {
				t.Errorf("envelope round trip: %+v, %v; want %+v", fromLetter.Entry, err, ev.Entry)
			}
		})
	}
}

func TestDecode_MessagingVerb(t *testing.T) {
	tests := []struct {
		element string
		want    string
	}{
		{`{"sender":{"id":"1"},"recipient":{"id":"2"},"timestamp":1,"message":{"mid":"m","text":"hi"}}`, "message"},
		{`{"sender":{"id":"1"},"message":{"mid":"m","is_echo":true}}`, "echo"},
		{`{"sender":{"id":"1"},"message":{"mid":"m","is_echo":false}}`, "message"},
		{`{"sender":{"id":"1"},"timestamp":2,"message":{"mid":"m","is_deleted":true}}`, "unsend"},
		{`{"sender":{"id":"1"},"message":{"is_echo":true,"mid":"m","is_deleted":true}}`, "unsend"},
		{`{"sender":{"id":"1"},"message":{"mid":"m","is_deleted":false,"text":"x"}}`, "message"},
		{`{"sender":{"id":"1"},"message":{"mid":"m2","text":"yes","reply_to":{"mid":"m"}}}`, "message"},
		{`{"sender":{"id":"1"},"message_edit":{"mid":"m","text":"hi!","num_edit":1}}`, "message_edit"},
		{`{"message":{"is_echo":"true"}}`, "message"},
		{`{"timestamp":1,"postback":{"title":"Go","payload":"GO"}}`, "postback"},
		{`{"delivery":{"watermark":1}}`, "delivery"},
		{`{"read":{"watermark":1}}`, "read"},
		{`{"reaction":{"mid":"m","action":"react"}}`, "reaction"},
		{`{"referral":{"ref":"x"}}`, "referral"},
		{`{"optin":{"ref":"x"}}`, "optin"},
		{`{"account_linking":{"status":"linked"}}`, "account_linking"},
		{`{"pass_thread_control":{"new_owner_app_id":"1"}}`, "pass_thread_control"},
		{`{"prior_message":{"source":"checkbox_plugin"},"message":{"mid":"m"}}`, "message"},
		{`{"some_future_kind":{},"other":1}`, "some_future_kind"},
		{`{"sender":{"id":"1"},"recipient":{"id":"2"},"timestamp":1}`, ""},
		{`{}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			body := `{"object":"page","entry":[{"id":"1","messaging":[` + tt.element + `]}]}`
			events, err := Decode([]byte(body), "a", testReceivedAt, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if len(events) != 1 || events[0].Verb != tt.want {
				t.Fatalf("got %+v, want verb %q", events, tt.want)
			}
			if string(events[0].Value) != tt.element {
				t.Errorf("value %s, want %s", events[0].Value, tt.element)
			}
		})
	}
}

func TestDecode_ChangeVerb(t *testing.T) {
	tests := []struct{ value, want string }{
		{`{"item":"photo","verb":"add"}`, "add"},
		{`{"verb":"edited"}`, "edited"},
		{`{"verb":7}`, ""},
		{`{"nested":{"verb":"add"}}`, ""},
		{`"add"`, ""},
		{`["verb","add"]`, ""},
		{`{"verb":"gr\u0061nted"}`, "granted"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			body := `{"object":"page","entry":[{"id":"1","changes":[{"field":"feed","value":` + tt.value + `}]}]}`
			events, err := Decode([]byte(body), "a", testReceivedAt, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if events[0].Verb != tt.want || string(events[0].Value) != tt.value {
				t.Errorf("got verb %q value %s, want %q %s", events[0].Verb, events[0].Value, tt.want, tt.value)
			}
		})
	}
}

// TestDecode_ValueNotShared checks that appending to one event's value cannot overwrite the
// body or a neighbouring value.
func TestDecode_ValueNotShared(t *testing.T) {
	body := []byte(`{"object":"page","entry":[{"id":"1","changes":[{"field":"a","value":1},{"field":"b","value":2}]}]}`)
	orig := bytes.Clone(body)
	events, err := Decode(body, "a", testReceivedAt, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_ = append(events[0].Value, "XXXXXXXX"...)
	if !bytes.Equal(body, orig) {
		t.Fatalf("appending to a value changed the body: %s", body)
	}
}

func FuzzDecode(f *testing.F) {
	for _, dir := range decodeCases(f) {
		if b, err := os.ReadFile(filepath.Join(dir, "input.json")); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		events, err := Decode(body, "app", testReceivedAt, Limits{MaxChanges: 1000, MaxDepth: 64})
		if err != nil {
			if events != nil {
				t.Fatalf("events with error %v", err)
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooMany) {
				t.Fatalf("error of unknown class: %v", err)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("Decode accepted invalid JSON %q", body)
		}
		for i := range events {
			ev := &events[i]
			if ev.Value != nil && !json.Valid(ev.Value) {
				t.Fatalf("event %d: value %q is not valid JSON", i, ev.Value)
			}
			if ev.Value != nil && !aliases(body, ev.Value) {
				t.Fatalf("event %d: value is not a sub-slice of the body", i)
			}
			if ev.Object == "" || ev.Field == "" {
				t.Fatalf("event %d: empty object or field: %+v", i, ev)
			}
			if k := Key(ev); k == "" || len(k) > maxKeyLen {
				t.Fatalf("event %d: key %q", i, k)
			}
		}
	})
}

// BenchmarkDecode measures the hot path on a one-change body and on a 1000-change batch.
func BenchmarkDecode(b *testing.B) {
	one, err := os.ReadFile(filepath.Join("testdata", "decode", "whatsapp_text_message", "input.json"))
	if err != nil {
		b.Fatal(err)
	}
	batch100, err := os.ReadFile(filepath.Join("testdata", "decode", "large_batch_messenger_100_entries", "input.json"))
	if err != nil {
		b.Fatal(err)
	}
	// 1000 changes: the 100-entry batch ten times over.
	var env struct {
		Entry []json.RawMessage `json:"entry"`
	}
	if err := json.Unmarshal(batch100, &env); err != nil {
		b.Fatal(err)
	}
	var entries []json.RawMessage
	for range 10 {
		entries = append(entries, env.Entry...)
	}
	batch1000, err := json.MarshalIndent(map[string]any{"object": "page", "entry": entries}, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, batch1000); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		body []byte
		n    int
	}{{"1change", one, 1}, {"1000changes", batch1000, 1000}, {"1000changes-compact", compact.Bytes(), 1000}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				events, err := Decode(bc.body, "shop", testReceivedAt, decodeLimits)
				if err != nil || len(events) != bc.n {
					b.Fatalf("got %d events, %v", len(events), err)
				}
			}
		})
		b.Run("stdlib-rawmessage-"+bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				var env struct {
					Object string `json:"object"`
					Entry  []struct {
						ID        json.RawMessage   `json:"id"`
						Time      json.RawMessage   `json:"time"`
						Messaging []json.RawMessage `json:"messaging"`
						Changes   []struct {
							Field string          `json:"field"`
							Value json.RawMessage `json:"value"`
						} `json:"changes"`
					} `json:"entry"`
				}
				if err := json.Unmarshal(bc.body, &env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
