package jsonscan_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
	"github.com/hubrelay/hubrelay/rules"
)

// sameAsEncodingJSON checks parseValue against encoding/json on b: the same verdict on
// validity, and the same value when valid.
func sameAsEncodingJSON(t *testing.T, b []byte) {
	t.Helper()
	var want any
	wantErr := json.Unmarshal(b, &want)
	got, err := jsonscan.Parse(b)
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

// corpusValues returns every change value of the decode corpus, and every body.
func corpusValues(t *testing.T) [][]byte {
	t.Helper()
	inputs, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "decode", "*", "input.json"))
	var values [][]byte
	for _, in := range inputs {
		body, _ := os.ReadFile(in)
		events, err := relay.Decode(body, "a", time.Now(), relay.Limits{})
		if err != nil {
			continue
		}
		for _, ev := range events {
			if len(ev.Value) > 0 {
				values = append(values, ev.Value)
			}
		}
		values = append(values, body)
	}
	if len(values) < 100 {
		t.Fatalf("only %d values in the corpus", len(values))
	}
	return values
}

// TestParseValue_Corpus compares every change value (and body) of the decode corpus.
func TestParseValue_Corpus(t *testing.T) {
	for _, v := range corpusValues(t) {
		sameAsEncodingJSON(t, v)
	}
}

// testProjections are the projections parseProjected is checked with: keys kept whole, keys
// only tested against nil, a key no value has, and everything.
var testProjections = []rules.Projection{
	{Keys: map[string]bool{"messages": false, "statuses": true, "item": true}},
	{Keys: map[string]bool{"a": false, "b": true, "é": false, "missing": true}},
	{Keys: map[string]bool{"messages": true, "metadata": false, "a": true}},
	{All: true},
}

// sameAsProjected checks parseProjected against parseValue on b for every test projection:
// the same verdict on validity, and, when valid, what the projection keeps of the whole value.
func sameAsProjected(t *testing.T, b []byte) {
	t.Helper()
	whole, wholeErr := jsonscan.Parse(b)
	for _, proj := range testProjections {
		got, err := parseProjected(b, proj)
		if (err != nil) != (wholeErr != nil) {
			t.Fatalf("%q with %v: parseProjected error %v, parseValue error %v", b, proj, err, wholeErr)
		}
		if want := proj.Apply(whole); err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%q with %v:\n got %#v\nwant %#v", b, proj, got, want)
		}
	}
}

func TestParseProjected_Cases(t *testing.T) {
	for _, c := range []string{
		`{}`, ` { } `, `{"a":null}`, `{"a":false,"b":[1,{"c":"d"}],"z":{"y":[]}}`, `{"a":1,"a":null}`, `{"a":null,"a":1}`,
		`{"\u00e9":1,"\u0061":[2]}`, `{"é":{"x":1}}`, `{"x":"\ud83d\udc4d \n","a":-1.5e3}`, "{\"x\":\"bad \xff\",\"b\":2}",
		`{"x":1e999}`, `{"x":-1e-999}`, `{"x":01}`, `{"x":1.}`, `{"x":"\q"}`, `{"x":"\u12"}`, "{\"x\":\"\x01\"}",
		`{"x":[1,]}`, `{"x":{"y":1,}}`, `{"x":tru}`, `{"x" 1}`, `{"a":1,}`, `{"a":1} x`, `{"a":1`, `{"a"`, `{`, `{1:2}`,
		`[1,2]`, `"s"`, `null`, ``, `  `,
	} {
		sameAsProjected(t, []byte(c))
	}
	long := `{"x":` + strings.Repeat("9", 400) + `,"a":1}`
	sameAsProjected(t, []byte(long))
}

// TestParseProjected_Corpus compares every change value (and body) of the decode corpus.
func TestParseProjected_Corpus(t *testing.T) {
	for _, v := range corpusValues(t) {
		sameAsProjected(t, v)
	}
}

func FuzzParseProjected(f *testing.F) {
	for _, s := range []string{`{"a":[1,"x",null,true],"b":{"c":1e5}}`, `{"messages":null}`, `{"\u0061":"\ud83d"}`, `[{}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { sameAsProjected(t, b) })
}

func FuzzParseValue(f *testing.F) {
	for _, s := range []string{`{"a":[1,"x",null,true]}`, `"\ud83d\udc4d"`, `-1.5e-3`, `[{}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { sameAsEncodingJSON(t, b) })
}

// BenchmarkParseValue compares parseValue with json.Unmarshal into any on a WhatsApp value.
func BenchmarkParseValue(b *testing.B) {
	body, err := os.ReadFile(filepath.Join("..", "..", "testdata", "decode", "whatsapp_text_message", "input.json"))
	if err != nil {
		b.Fatal(err)
	}
	events, err := relay.Decode(body, "a", time.Now(), relay.Limits{})
	if err != nil {
		b.Fatal(err)
	}
	v := events[0].Value
	b.Run("parseValue", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := jsonscan.Parse(v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parseProjected", func(b *testing.B) {
		proj := rules.Projection{Keys: map[string]bool{"messages": false, "statuses": true}}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := parseProjected(v, proj); err != nil {
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

// parseProjected is how relay/route.go projects a change value for the rules.
func parseProjected(b []byte, proj rules.Projection) (any, error) {
	if proj.All {
		return jsonscan.Parse(b)
	}
	return jsonscan.ParseProjected(b, proj.Keys)
}
