package jsonscan

import (
	"encoding/json"
	"errors"
	"testing"
)

// scanCases are JSON texts, valid and not, for the checks against encoding/json.
var scanCases = []string{
	`{}`, `[]`, `""`, `0`, `-0`, `1.5e3`, `-12.25E-2`, `true`, `false`, `null`, ` {"a" : [1, 2, {"b": null}] } `,
	`"caf\u00e9 \ud83d\udc4d \ud83d x \udc4d \/ \" \\ \b\f\n\r\t"`, "\"raw UTF-8 é 👍\"", "\"bad \xff byte\"",
	`{"a":1,"a":2}`, `01`, `1.`, `.5`, `-`, `1e`, `"\x"`, `"\u12"`, "\"ctl \x01\"", `[1,]`, `{"a":1,}`,
	`{"a"}`, `{1:2}`, `[1 2]`, `tru`, `nul`, `"unterminated`, `[`, `{`, `1 2`, ``, `"\`, `"\u`, `[[[]]]`, `{"a":{"b":[{}]}}`,
}

// TestScanner_SkipAsValid: Skip, then the end of input, accepts exactly what json.Valid does.
func TestScanner_SkipAsValid(t *testing.T) {
	for _, c := range scanCases {
		s := New([]byte(c), 0)
		err := s.Skip()
		ok := err == nil && s.AtEnd()
		if want := json.Valid([]byte(c)); ok != want {
			t.Errorf("%q: Skip ok %v (err %v), json.Valid %v", c, ok, err, want)
		}
		var e *Error
		if err != nil && !errors.As(err, &e) {
			t.Errorf("%q: error %T, want *Error", c, err)
		}
	}
}

// TestScanner_Depth: nesting over the limit is refused with the limit named.
func TestScanner_Depth(t *testing.T) {
	s := New([]byte(`[[[1]]]`), 2)
	err := s.Skip()
	var e *Error
	if !errors.As(err, &e) || e.Reason != "nesting deeper than 2 levels" || e.Offset != 2 {
		t.Fatalf("Skip = %v, want nesting deeper than 2 levels at offset 2", err)
	}
	if s := New([]byte(`[[[1]]]`), 3); s.Skip() != nil {
		t.Fatal("three levels refused at a limit of three")
	}
}

// TestScanner_Text: a plain string is interned, an escaped one decoded.
func TestScanner_Text(t *testing.T) {
	interned := 0
	intern := func(b []byte) string { interned++; return string(b) }
	for _, tt := range []struct{ in, want string }{{`"page"`, "page"}, {`"p\u0061ge"`, "page"}, {"\"\xff\"", "\ufffd"}} {
		s := New([]byte(tt.in), 0)
		got, err := s.Text(intern)
		if err != nil || got != tt.want {
			t.Errorf("Text(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if interned != 1 {
		t.Errorf("intern called %d times, want once (for the plain string only)", interned)
	}
}
