package config

import (
	"strings"
	"testing"
)

// TestParse_YAMLErrorPositions covers what the golden files do not: Windows line ends, a
// ${VAR} before the mistake on its line, a file too long to search (the parser's line, "at
// or near"), and a mistake after a valid multi-line flow list.
func TestParse_YAMLErrorPositions(t *testing.T) {
	long := strings.Repeat("x-pad: 1\n", maxSearchLines) + "server:\n  listen: 127.0.0.1:8080\n path: /x\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"crlf", "server:\r\n  listen: 127.0.0.1:8080\r\n path: /x\r\n", "f.yaml:3:2: indented by 1 space"},
		{"env before quote", "server:\n  listen: ${ADDR:-127.0.0.1:8080}\n  path: \"/x\n", "f.yaml:3:9: this \" starts a quoted value that is never closed"},
		{"env on the line", "apps: [{name: ${N:-shop}, verify_token: \"t}]\n", "f.yaml:1:41: this \" starts a quoted value"},
		{"tab after env", "server:\n  path: ${P:-/x}\n\tlisten: a\n", "f.yaml:3:1: a tab indents this line"},
		{"after flow list", "apps: [\n  a,\n  b]\nserver:\n  listen: x\n    path: y\n", "f.yaml:6:5: indented under listen (line 5)"},
		{"too long", long, "invalid YAML at or near line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tc.doc), noEnv)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v\nwant it to hold %q", err, tc.want)
			}
		})
	}
}
