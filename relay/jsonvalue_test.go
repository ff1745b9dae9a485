package relay

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// sameAsEncodingJSON checks parseValue against encoding/json on b: the same verdict on
// validity, and the same value when valid.
func sameAsEncodingJSON(t *testing.T, b []byte) {
	t.Helper()
	var want any
	wantErr := json.Unmarshal(b, &want)
	got, err := parseValue(b)
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%q: parseValue error %v, encoding/json error %v", b, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %#v\nwant %#v", b, got, want)
	}
}

func TestParseValue_Cases(t *testing.T) {
	for _, c := range []string{
		`{}`, `[]`, `""`, `0`, `-0`, `1.5e3`, `-12.25E-2`, `true`, `false`, `null`, ` {"a" : [1, 2, {"b": null}] } `,
		`"caf\u00e9 \ud83d\udc4d \ud83d x \udc4d \/ \" \\ \b\f\n\r\t"`, "\"raw UTF-8 é 👍\"", "\"bad \xff byte\"",
		`{"a":1,"a":2}`, `01`, `1.`, `.5`, `-`, `1e`, `1e999`, `"\x"`, `"\u12"`, "\"ctl \x01\"", `[1,]`, `{"a":1,}`,
		`{"a"}`, `{1:2}`, `[1 2]`, `tru`, `nul`, `"unterminated`, `[`, `{`, `1 2`, ``,
	} {
		sameAsEncodingJSON(t, []byte(c))
	}
}

// TestParseValue_Corpus compares every change value of the decode corpus.
func TestParseValue_Corpus(t *testing.T) {
	inputs, _ := filepath.Glob(filepath.Join("testdata", "decode", "*", "input.json"))
	if len(inputs) == 0 {
		t.Fatal("no corpus")
	}
	n := 0
	for _, in := range inputs {
		body, _ := os.ReadFile(in)
		events, err := Decode(body, "a", time.Now(), Limits{})
		if err != nil {
			continue
		}
		for _, ev := range events {
			if len(ev.Value) > 0 {
				sameAsEncodingJSON(t, ev.Value)
				n++
			}
		}
		sameAsEncodingJSON(t, body)
	}
	if n < 100 {
		t.Errorf("compared only %d values", n)
	}
}

func FuzzParseValue(f *testing.F) {
	for _, s := range []string{`{"a":[1,"x",null,true]}`, `"\ud83d\udc4d"`, `-1.5e-3`, `[{}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { sameAsEncodingJSON(t, b) })
}

// BenchmarkParseValue compares parseValue with json.Unmarshal into any on a WhatsApp value.
func BenchmarkParseValue(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("testdata", "decode", "whatsapp_text_message", "input.json"))
	if err != nil {
		b.Fatal(err)
	}
	events, err := Decode(body, "a", time.Now(), Limits{})
	if err != nil {
		b.Fatal(err)
	}
	v := events[0].Value
	b.Run("parseValue", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := parseValue(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var x any
			if err := json.Unmarshal(v, &x); err != nil {
				b.Fatal(err)
			}
		}
	})
}
