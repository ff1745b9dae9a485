package config

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/hubrelay/hubrelay/rules"
	"gopkg.in/yaml.v3"
)

// Expression errors (rules' `when`, Slack text and blocks, any other value compiled with the
// rules package) are reported at the line and column of the file where the problem is, not
// at the start of the value with a column counted inside the expression: exprProblem maps
// the rune offset expr gives to the file through the YAML scalar as written (plain, quoted or
// block). Where the mapping cannot be checked against the value (a ${VAR} on the value's
// lines, an indentation indicator), the problem stays at the value's start and says where
// in the expression it is. Common mistakes get a hint saying what to write instead.

// exprProblem records err, returned by the rules package for the expression src held by
// node n, at its position in the file.
func (d *decoder) exprProblem(n *yaml.Node, path, src string, err error) {
	var ee *rules.ExprError
	if !errors.As(err, &ee) {
		d.problem(n, path, "%v", err)
		return
	}
	msg, hint, off := explainExpr(src, ee)
	if hint != "" {
		msg += ": " + hint
	}
	if off < 0 {
		d.problem(n, path, "%s", msg)
		return
	}
	if line, col, ok := d.exprPosition(resolve(n), src, off); ok {
		d.problemAt(line, col, path, "%s", msg)
		return
	}
	line, col := exprLineCol(src, off)
	if line > 1 {
		d.problem(n, path, "%s (line %d, column %d of the expression)", msg, line, col)
	} else {
		d.problem(n, path, "%s (column %d of the expression)", msg, col)
	}
}

// exprLineCol returns the 1-based line and column of rune offset off in src.
func exprLineCol(src string, off int) (line, col int) {
	line, col = 1, 1
	i := 0
	for _, r := range src {
		if i == off {
			break
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i++
	}
	return line, col
}

var (
	unknownNameRE = regexp.MustCompile(`^unknown name (\S+)$`)
	noMemberRE    = regexp.MustCompile(`^type rules\.Entry has no field (\S+)$`)
	tokenRE       = regexp.MustCompile(`^unexpected token (Operator|Identifier)\("(.*)"\)$`)
)

// explainExpr returns the message for ee, a hint for a common mistake ("" when none is
// known) and the rune offset in src to report it at (-1 when unknown).
func explainExpr(src string, ee *rules.ExprError) (msg, hint string, off int) {
	msg, off = ee.Msg, -1
	if ee.Column > 0 {
		off = ee.Offset
	}
	// A single | is expr's pipe: the parser complains at some later token, so point at it.
	if at := lonePipe(src); at >= 0 {
		return "a single | passes the value on its left to the function on its right (the pipe)", "write || or or for either condition", at
	}
	rs := []rune(src)
	next := func(k int) string { // the k runes from off, or fewer
		if off < 0 || off >= len(rs) {
			return ""
		}
		return string(rs[off:min(len(rs), off+k)])
	}
	switch m := tokenRE.FindStringSubmatch(msg); {
	case m != nil && m[2] == "=":
		switch {
		case next(3) == "===":
			hint = "write == to compare (there is no ===)"
		case next(2) == "=!":
			hint = "write != for not equal"
		case next(2) == "=>" || next(2) == "=<":
			hint = "write >= or <="
		default:
			hint = "a single = is not an operator: write == to compare"
		}
	case m != nil && m[2] == "&":
		hint = "write && or and to require both conditions"
	case m != nil && m[1] == "Identifier" && isUpperOperator(m[2]):
		hint = fmt.Sprintf("operators are lowercase: write %s", lowerOperator(m[2]))
	case msg == "unexpected token EOF":
		hint = "the expression is incomplete"
		if trimmed := strings.TrimRight(src, " \t\n"); trimmed != "" {
			fields := strings.Fields(trimmed)
			last := fields[len(fields)-1]
			hint = fmt.Sprintf("the expression ends with %s: complete it, or remove %s", last, last)
			off = utf8.RuneCountInString(trimmed) - utf8.RuneCountInString(last) // at the last word, not past it
		}
	case strings.HasPrefix(msg, "unrecognized character: U+201") || strings.HasPrefix(msg, "unrecognized character: U+00AB") || strings.HasPrefix(msg, "unrecognized character: U+00BB"):
		hint = `write text between straight quotes, "..." or '...' (an editor put typographic quotes here)`
	case msg == "literal not terminated":
		hint = "close the text with the quote it starts with"
	case strings.HasPrefix(msg, "invalid operation: not (") || strings.HasPrefix(msg, "invalid operation: ! ("):
		hint = `not and ! apply to the value right after them: write not (field == "feed"), or field != "feed"`
	default:
		if m := unknownNameRE.FindStringSubmatch(msg); m != nil {
			hint = unknownNameHint(m[1], rs, off)
		} else if m := noMemberRE.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("entry has no member %s", m[1])
			hint = "entry has " + orList(rules.Members())
			if near := nearName(m[1], rules.Members()); near != "" {
				hint = fmt.Sprintf("did you mean entry.%s? (%s)", near, hint)
			}
		}
	}
	return msg, hint, off
}

// unknownNameHint explains an unknown name at rune offset off of rs: a near name is likely
// a typo, a bare word compared with something is likely unquoted text.
func unknownNameHint(name string, rs []rune, off int) string {
	names := rules.Names()
	near := nearName(name, names)
	right, left := compared(rs, off, utf8.RuneCountInString(name))
	quote := fmt.Sprintf(`to compare with the text %s, quote it: "%s"`, name, name)
	switch {
	case right && near != "":
		return fmt.Sprintf("%s (or did you mean %s?)", quote, near)
	case right:
		return quote
	case near != "":
		return fmt.Sprintf("did you mean %s?", near)
	case left:
		return quote
	}
	return fmt.Sprintf(`expressions see %s; quote text: "%s"`, orList(names), name)
}

// nearName is nearest for names in expressions, where a swap of two letters (valeu) is a
// typo as likely as one wrong letter.
func nearName(s string, names []string) string {
	best, bestDist := "", 0
	for _, c := range names {
		dist := EditDistance(strings.ToLower(s), strings.ToLower(c))
		if best == "" || dist < bestDist {
			best, bestDist = c, dist
		}
	}
	if best == "" || bestDist > max(1, min(2, len(best)/2)) {
		return ""
	}
	return best
}

// compared reports whether the word of n runes at off in rs is the right side of a
// comparison (after ==, != or in) or its left side (before == or !=).
func compared(rs []rune, off, n int) (right, left bool) {
	if off < 0 || off+n > len(rs) {
		return false, false
	}
	before := strings.TrimRight(string(rs[:off]), " \t\n")
	after := strings.TrimLeft(string(rs[off+n:]), " \t\n")
	for _, op := range []string{"==", "!=", " in", " contains", " matches", " startsWith", " endsWith"} {
		if strings.HasSuffix(before, op) || before == strings.TrimSpace(op) {
			right = true
		}
	}
	return right, strings.HasPrefix(after, "==") || strings.HasPrefix(after, "!=")
}

// lonePipe returns the rune offset of the first | in src that is not part of || and not
// inside a string, or -1.
func lonePipe(src string) int {
	rs := []rune(src)
	var quote rune
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0:
			if r == '\\' {
				i++
			} else if r == quote {
				quote = 0
			}
		case r == '"' || r == '\'' || r == '`':
			quote = r
		case r == '|':
			if i+1 < len(rs) && rs[i+1] == '|' {
				i++
				continue
			}
			return i
		}
	}
	return -1
}

func isUpperOperator(s string) bool {
	switch s {
	case "AND", "OR", "NOT", "And", "Or", "Not", "IN", "In":
		return true
	}
	return false
}

func lowerOperator(s string) string {
	switch l := strings.ToLower(s); l {
	case "and":
		return "and (or &&)"
	case "or":
		return "or (or ||)"
	case "not":
		return "not (or !)"
	default:
		return l
	}
}

// nearest returns the choice nearest to s by EditDistance, ignoring case, if it is near
// enough to be a likely typo; "" otherwise.
func nearest(s string, choices []string) string {
	best, bestDist := "", 0
	for _, c := range choices {
		dist := EditDistance(strings.ToLower(s), strings.ToLower(c))
		if best == "" || dist < bestDist {
			best, bestDist = c, dist
		}
	}
	if best == "" || bestDist >= len(best) || bestDist > max(1, min(3, len(best)/3)) {
		return ""
	}
	return best
}
