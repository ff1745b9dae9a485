package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// yaml.v3 names the line of the construct it was reading when it failed, not the line of the
// mistake: a misindented key, an unclosed [ or a stray quote are reported one to three lines
// off, without a column. yamlError finds the line itself: the first line after the longest
// beginning of the file that still parses (the parser accepts a document cut after any
// complete line). It then looks on that line for the usual mistakes (a tab in the
// indentation, an unclosed quote or bracket, text after a closing quote, a key indented to
// no level above it) and names the exact column. When none of them is there it says "at or
// near line N" with the parser's words.

// maxSearchLines and maxSearchBytes bound the file size for which the failing line is
// searched (each try parses a beginning of the file, so the cost grows with the square of
// the size); larger files get the parser's own line, "at or near".
const (
	maxSearchLines = 2000
	maxSearchBytes = 256 << 10
)

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError reports a yaml.v3 syntax error.
func (d *decoder) yamlError(err error) {
	msg, line := err.Error(), 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	msg = d.env.restore(msg)
	if l := failingLine(d.lines); l > 0 {
		if col, what, ok := diagnoseLine(d.lines, l-1); ok {
			d.problemAt(l, d.env.column(l, col), "", "%s", what)
			return
		}
		line = l
	}
	d.problemAt(line, 1, "", "invalid YAML at or near line %d: %s; check this line's indentation and quoting and the line above", line, msg)
}

// failingLine returns the 1-based line after the longest beginning of lines that parses as
// YAML, or 0 when the file is too long to search.
func failingLine(lines []string) int {
	if size := len(lines) + len(strings.Join(lines, "")); len(lines) > maxSearchLines || size > maxSearchBytes {
		return 0
	}
	for k := len(lines) - 1; k >= 0; k-- {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(strings.Join(lines[:k], "\n")), &n); err == nil {
			return k + 1
		}
	}
	return 0
}

// diagnoseLine looks for a known mistake on lines[i], returning its 1-based column (in the
// parsed text) and what to fix.
func diagnoseLine(lines []string, i int) (col int, what string, ok bool) {
	line := []rune(lines[i])
	for c, r := range line {
		if r == '\t' {
			return c + 1, "a tab indents this line; YAML indents with spaces", true
		}
		if r != ' ' {
			break
		}
	}
	if col, what, ok := diagnoseQuotes(line); ok {
		return col, what, true
	}
	return diagnoseIndent(lines, i)
}

// diagnoseQuotes scans a line for an unclosed quote or bracket, or text after a closing
// quote.
func diagnoseQuotes(line []rune) (col int, what string, ok bool) {
	type open struct {
		r   rune
		col int
	}
	var stack []open
	valueStart := true // at a place where a value may begin
	for c := 0; c < len(line); c++ {
		r := line[c]
		switch {
		case r == '#' && (c == 0 || line[c-1] == ' '):
			c = len(line)
			continue
		case (r == '"' || r == '\'') && valueStart:
			end := closingQuote(line, c)
			if end < 0 {
				return c + 1, fmt.Sprintf("this %c starts a quoted value that is never closed: end the value with %c", r, r), true
			}
			rest := strings.TrimLeft(string(line[end+1:]), " ")
			if rest != "" && !strings.HasPrefix(rest, "#") && !strings.ContainsRune(",]}:", []rune(rest)[0]) {
				fix := `write '' for a ' inside '...', or quote the value with "..." instead`
				if r == '"' {
					fix = `write \" for a " inside "...", or quote the value with '...' instead`
				}
				return end + 1, fmt.Sprintf("this %c ends the quoted value that starts at column %d, and text follows: %s", r, c+1, fix), true
			}
			c = end
			valueStart = false
			continue
		case r == '[' || r == '{':
			if valueStart {
				stack = append(stack, open{r, c + 1})
			}
		case r == ']' || r == '}':
			if len(stack) > 0 {
				top := stack[len(stack)-1]
				if want := map[rune]rune{'[': ']', '{': '}'}[top.r]; want != r {
					return c + 1, fmt.Sprintf("this %c closes the %c at column %d: use %c", r, top.r, top.col, want), true
				}
				stack = stack[:len(stack)-1]
			}
		}
		switch {
		case r == ' ' || r == '[' || r == '{' || r == ',':
			valueStart = true
		case r == ':' || r == '-':
			valueStart = c+1 == len(line) || line[c+1] == ' '
			if r == '-' && !valueStart {
				valueStart = false
			}
		default:
			valueStart = false
		}
	}
	if len(stack) > 0 {
		var closers strings.Builder
		for k := len(stack) - 1; k >= 0; k-- {
			closers.WriteRune(map[rune]rune{'[': ']', '{': '}'}[stack[k].r])
		}
		first := stack[0]
		what := fmt.Sprintf("this %c is never closed", first.r)
		for _, o := range stack[1:] {
			what += fmt.Sprintf(", nor the %c at column %d", o.r, o.col)
		}
		return first.col, fmt.Sprintf("%s: end the value with %s (a list or mapping in brackets ends on its line or continues after a comma)", what, closers.String()), true
	}
	return 0, "", false
}

// closingQuote returns the index of the quote closing the one at line[start], or -1.
func closingQuote(line []rune, start int) int {
	q := line[start]
	for c := start + 1; c < len(line); c++ {
		switch {
		case q == '"' && line[c] == '\\':
			c++
		case q == '\'' && line[c] == '\'' && c+1 < len(line) && line[c+1] == '\'':
			c++
		case line[c] == q:
			return c
		}
	}
	return -1
}

// diagnoseIndent reports a key or list item on lines[i] indented to no level of the lines
// above it, or nested under a key whose value is already given.
func diagnoseIndent(lines []string, i int) (col int, what string, ok bool) {
	indent, text := indentOf(lines[i])
	if text == "" {
		return 0, "", false
	}
	type level struct {
		indent, line int
		key          string
	}
	var levels []level // the lines this one could belong to, innermost first
	prev, limit := -1, math.MaxInt
	for k := i - 1; k >= 0 && limit > 0; k-- {
		ind, t := indentOf(lines[k])
		if t == "" || t[0] == '#' {
			continue
		}
		if prev < 0 {
			prev = k
		}
		if ind >= limit {
			continue
		}
		if strings.HasPrefix(t, "- ") { // the item's first key sits after the dash
			inner, rest := indentOf(t[2:])
			levels = append(levels, level{ind + 2 + inner, k + 1, keyOf(rest)})
			levels = append(levels, level{ind, k + 1, ""}) // another item
		} else {
			levels = append(levels, level{ind, k + 1, keyOf(t)})
		}
		limit = ind
	}
	if prev < 0 {
		return 0, "", false
	}
	prevIndent, pt := indentOf(lines[prev])
	prevKey := keyOf(strings.TrimPrefix(pt, "- "))
	_, val, _ := strings.Cut(strings.TrimPrefix(pt, "- "), ":")
	val = strings.TrimSpace(val)
	prevValue := prevKey != "" && val != "" && !strings.ContainsRune("#|>&", []rune(val)[0])
	if indent > prevIndent && !prevValue && (prevKey != "" || strings.HasPrefix(pt, "-")) {
		return diagnoseColon(lines[i], indent) // the first line of a nested mapping or list
	}
	if indent > prevIndent && prevValue {
		return indent + 1, fmt.Sprintf("indented under %s (line %d), which already has a value: line it up with %s (%s), or move the value of %s to lines of its own", prevKey, prev+1, prevKey, spaces(prevIndent), prevKey), true
	}
	for _, l := range levels {
		if l.indent == indent {
			return diagnoseColon(lines[i], indent) // lines up with a level above
		}
	}
	var fits []string
	seen := map[int]bool{}
	for _, l := range levels {
		if l.key != "" && !seen[l.indent] && len(fits) < 3 {
			seen[l.indent] = true
			fits = append(fits, fmt.Sprintf("%d to line up with %s (line %d)", l.indent, l.key, l.line))
		}
	}
	if len(fits) == 0 {
		return 0, "", false
	}
	return indent + 1, fmt.Sprintf("indented by %s, which lines up with no key above: use %s", spaces(indent), orList(fits)), true
}

// diagnoseColon reports a plain value holding ": ", which YAML reads as a nested key.
func diagnoseColon(line string, indent int) (col int, what string, ok bool) {
	t := strings.TrimPrefix(line[indent:], "- ")
	key, val, found := strings.Cut(t, ": ")
	v := strings.TrimLeft(val, " ")
	if !found || keyOf(t) == "" || v == "" || strings.ContainsRune("\"'[{|>&*!#", []rune(v)[0]) {
		return 0, "", false
	}
	at := strings.Index(v, ": ")
	if at < 0 && !strings.HasSuffix(strings.TrimRight(v, " "), ":") {
		return 0, "", false
	}
	if at < 0 {
		at = len(strings.TrimRight(v, " ")) - 1
	}
	start := len(line) - len(v)
	return len([]rune(line[:start+at])) + 1, fmt.Sprintf("this : inside the value of %s makes YAML read a key: quote the value, like %s: '%s'", key, key, strings.TrimRight(v, " ")), true
}

// spaces returns "1 space" or "N spaces".
func spaces(n int) string {
	if n == 1 {
		return "1 space"
	}
	return fmt.Sprintf("%d spaces", n)
}

// indentOf returns the number of leading spaces of s and the rest, trimmed.
func indentOf(s string) (int, string) {
	t := strings.TrimLeft(s, " ")
	return len(s) - len(t), strings.TrimRight(t, " \r")
}

// keyOf returns the key a line starts with, or "".
func keyOf(t string) string {
	k, _, found := strings.Cut(t, ":")
	if !found || strings.ContainsAny(k, " \"'[{") {
		return ""
	}
	return k
}
