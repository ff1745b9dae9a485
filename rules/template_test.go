package rules

import (
	"reflect"
	"strings"
	"testing"
)

func TestCompileText(t *testing.T) {
	env := &Env{Object: "page", Field: "feed", Verb: "add", Entry: Entry{ID: "517161164821567"}, Value: decode(t, pagePhoto)}
	tests := []struct {
		name, src, want, wantErr string
	}{
		{name: "design", src: `"New " + field + " on page " + entry.id`, want: "New feed on page 517161164821567"},
		{name: "value", src: `"Post by " + value.from.name`, want: "Post by Pituah Coffee"},
		{name: "any typed", src: `value.item`, want: "photo"},
		{name: "format", src: `object + "/" + field + " " + verb + " entry " + entry.id`, want: "page/feed add entry 517161164821567"},
		{name: "string()", src: `field + " x" + string(value.published)`, want: "feed x1"},
		{name: "not a string", src: `1 + 2`, wantErr: "must be a string expression, got int"},
		{name: "bool", src: `field == "x"`, wantErr: "must be a string expression, got bool"},
		{name: "typo", src: `"x" + feild`, wantErr: "unknown name feild"},
		{name: "run time not string", src: `value.published`, wantErr: "expected string, got float64"},
		{name: "run time error", src: `value.nope.deeper`, wantErr: "cannot fetch deeper from <nil>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := CompileText(tt.src)
			var got string
			if err == nil {
				if tpl.Source() != tt.src {
					t.Errorf("Source() = %q", tpl.Source())
				}
				got, err = tpl.String(env)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCompileAny(t *testing.T) {
	tpl, err := CompileAny(`[{"type": "section", "text": {"type": "mrkdwn", "text": "*" + field + "* " + value.item}}]`)
	if err != nil {
		t.Fatal(err)
	}
	if !tpl.NeedsValue() {
		t.Error("NeedsValue() = false")
	}
	got, err := tpl.Eval(&Env{Field: "feed", Value: decode(t, pagePhoto)})
	if err != nil {
		t.Fatal(err)
	}
	want := []any{map[string]any{"type": "section", "text": map[string]any{"type": "mrkdwn", "text": "*feed* photo"}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Eval() = %#v, want %#v", got, want)
	}
	if _, err := CompileAny(`[1, `); err == nil {
		t.Error("CompileAny of a syntax error: no error")
	}
	if tpl, _ := CompileText(`field`); tpl.NeedsValue() {
		t.Error("NeedsValue() of `field` = true")
	}
}
