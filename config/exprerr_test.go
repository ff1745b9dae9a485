package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestScalarPositions parses values in every scalar style and checks that each rune of the
// value was found where the file has it (runes YAML makes from escapes or line breaks sit
// at the escape or the break).
func TestScalarPositions(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		style     yaml.Style
	}{
		{"plain", "when: field == \"feed\" && verb == \"add\"\n", 0},
		{"plain two lines", "when: field == \"feed\" &&\n  verb == \"add\"\nnext: 1\n", 0},
		{"plain blank line", "when: a\n\n  b\n", 0},
		{"plain hash inside", "when: a#b == 1 # comment\n", 0},
		{"single", "when: 'it''s == \"x\"'\n", yaml.SingleQuotedStyle},
		{"single two lines", "when: 'a ==\n   \"x\"'\n", yaml.SingleQuotedStyle},
		{"double escapes", "when: \"a == \\\"x\\\" && b == \\u0022y\\u0022 \\\\ \\t\"\n", yaml.DoubleQuotedStyle},
		{"double escaped break", "when: \"a == \\\n   1\"\n", yaml.DoubleQuotedStyle},
		{"literal", "when: |\n  a == 1\n    && b == 2\n\n  && c\nnext: 1\n", yaml.LiteralStyle},
		{"literal keep", "when: |+\n  a\n\n", yaml.LiteralStyle},
		{"folded", "when: >-\n  a == 1 &&\n  b == 2\n\n  c\nnext: 1\n", yaml.FoldedStyle},
		{"flow mapping", "r: {name: x, when: 'a == \"b\"', sinks: [s]}\n", yaml.SingleQuotedStyle},
		{"unicode", "when: value.t == \"héllo\" && vérb\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte(tc.doc), &doc); err != nil {
				t.Fatal(err)
			}
			n := findScalar(doc.Content[0], "when")
			if n == nil {
				t.Fatal("no when")
			}
			if n.Style&^yaml.FlowStyle != tc.style {
				t.Fatalf("style = %v, want %v", n.Style, tc.style)
			}
			lines := strings.Split(tc.doc, "\n")
			pos := scalarPositions(lines, n)
			val := []rune(n.Value)
			if len(pos) != len(val) {
				t.Fatalf("%d positions for %d runes of %q", len(pos), len(val), n.Value)
			}
			for i, r := range val {
				p := pos[i]
				line := []rune(lines[p.line-1])
				var at rune
				if p.col-1 < len(line) {
					at = line[p.col-1]
				}
				if at != r && at != '\\' && r != ' ' && r != '\n' {
					t.Errorf("rune %d %q of %q at %d:%d, where the file has %q", i, r, n.Value, p.line, p.col, at)
				}
			}
		})
	}
}

func findScalar(n *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
		if f := findScalar(n.Content[i+1], key); f != nil {
			return f
		}
	}
	return nil
}

// TestExprProblem_Fallback: where the value is not the text (a ${VAR} in it), the problem
// stays at the value and says where in the expression it is.
func TestExprProblem_Fallback(t *testing.T) {
	doc := "apps: [{name: shop, verify_token: t, app_secrets: [s]}]\n" +
		"sinks: [{name: a, type: file, path: a.jsonl}]\n" +
		"rules:\n  - name: r\n    when: 'field == \"${F:-feed}\" && vrb = \"x\"'\n    sinks: [a]\n"
	_, err := Parse("f.yaml", []byte(doc), noEnv)
	want := `f.yaml:5:11: rules[0].when: unexpected token Operator("="): a single = is not an operator: write == to compare (column 24 of the expression)`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

// compileCall matches a call compiling one expression (rules.CompileWhen, CompileText…), not
// rules.Compile of a whole rule set.
var compileCall = regexp.MustCompile(`rules\.Compile[A-Z]\w*\(`)

// TestExpressionProblemsGoThroughExprProblem: every value compiled with the rules package
// (when, Slack text and blocks, order_by, any later one) reports its error with
// exprProblem, so its position is the file's and its hints are the same everywhere.
func TestExpressionProblemsGoThroughExprProblem(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			if !compileCall.MatchString(l) || strings.HasPrefix(strings.TrimSpace(l), "//") {
				continue
			}
			for _, next := range lines[i+1 : min(len(lines), i+5)] {
				if strings.Contains(next, "d.exprProblem(") {
					break
				}
				if strings.Contains(next, "d.problem(") {
					t.Errorf("%s:%d: the error of %s is reported with d.problem: use d.exprProblem (file columns, hints)", f, i+1, strings.TrimSpace(l))
					break
				}
			}
		}
	}
}
