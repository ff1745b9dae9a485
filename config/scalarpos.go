package config

import (
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// A scalar's value is not its text in the file: quotes, escapes, line folding and block
// indentation come between them. scalarPositions walks the text the way YAML reads it and
// finds, for every rune of the value, where it was written, checking each rune against the
// value as it goes; any disagreement (a form it does not follow) gives up rather than
// guess.

// filePos is a 1-based line and column of the file.
type filePos struct{ line, col int }

// exprPosition returns the file line and column of rune offset off of src, the value of
// scalar n; ok is false when the position cannot be found exactly.
func (d *decoder) exprPosition(n *yaml.Node, src string, off int) (line, col int, ok bool) {
	if n == nil || n.Kind != yaml.ScalarNode || n.Value != src || n.Line < 1 {
		return 0, 0, false // a ${VAR} changed the value, or not a scalar
	}
	pos := scalarPositions(d.lines, n)
	if pos == nil {
		return 0, 0, false
	}
	switch {
	case off >= 0 && off < len(pos):
		p := pos[off]
		if len(d.env.shifts[p.line]) > 0 {
			return 0, 0, false // columns moved by a ${VAR} placeholder on the line
		}
		return p.line, p.col, true
	case off == len(pos) && off > 0: // just past the end
		p := pos[off-1]
		if len(d.env.shifts[p.line]) > 0 {
			return 0, 0, false
		}
		return p.line, p.col + 1, true
	}
	return 0, 0, false
}

// scalarPositions returns the position of every rune of n.Value in lines (the text given
// to the YAML parser), or nil when it cannot be followed.
func scalarPositions(lines []string, n *yaml.Node) []filePos {
	w := &scalarWalk{lines: lines, style: n.Style &^ (yaml.TaggedStyle | yaml.FlowStyle), l: n.Line - 1, c: n.Column - 1}
	if w.l >= len(lines) {
		return nil
	}
	switch w.style {
	case 0:
	case yaml.SingleQuotedStyle, yaml.DoubleQuotedStyle:
		w.c++ // past the opening quote
	case yaml.LiteralStyle, yaml.FoldedStyle:
		if !w.blockStart() {
			return nil
		}
	default:
		return nil
	}
	val := []rune(n.Value)
	out := make([]filePos, 0, len(val))
	for i := 0; i < len(val); {
		if w.l >= len(w.lines) {
			return nil
		}
		line := w.line()
		if w.c < len(line) && !w.atBreak(line) {
			r, width := line[w.c], 1
			switch {
			case w.style == yaml.DoubleQuotedStyle && r == '\\':
				if w.c+1 >= len(line) { // an escaped line break: nothing in the value
					w.nextLine(0)
					continue
				}
				var ok bool
				if r, width, ok = unescape(line[w.c+1:]); !ok {
					return nil
				}
				width++
			case w.style == yaml.SingleQuotedStyle && r == '\'' && w.c+1 < len(line) && line[w.c+1] == '\'':
				width = 2
			}
			if r != val[i] {
				return nil
			}
			out = append(out, filePos{w.l + 1, w.c + 1})
			w.c += width
			i++
			continue
		}
		// A line break: in a literal block it is kept; elsewhere one break folds into a
		// space and each blank line after it is a newline.
		if w.style == yaml.LiteralStyle {
			if val[i] != '\n' {
				return nil
			}
			out = append(out, filePos{w.l + 1, w.c + 1})
			w.nextLine(w.indent)
			i++
			continue
		}
		at := filePos{w.l + 1, w.c + 1}
		blank := w.nextLine(w.indent)
		for k := 0; k <= blank && i < len(val) && (val[i] == ' ' || val[i] == '\n'); k++ {
			out = append(out, at)
			i++
		}
	}
	return out
}

// scalarWalk is a cursor in the text of one scalar.
type scalarWalk struct {
	lines  []string
	style  yaml.Style
	l, c   int // 0-based line and rune column
	indent int // of a block scalar's content
	cache  []rune
	cached int
}

// line returns the runes of the current line.
func (w *scalarWalk) line() []rune {
	if w.cache == nil || w.cached != w.l {
		w.cache, w.cached = []rune(w.lines[w.l]), w.l
	}
	return w.cache
}

// atBreak reports whether only the line break (and the whitespace or comment YAML drops
// before it) is left on the line from the cursor.
func (w *scalarWalk) atBreak(line []rune) bool {
	if w.style == yaml.LiteralStyle {
		return false
	}
	rest := strings.TrimLeft(string(line[w.c:]), " \t")
	spaced := w.c == 0 || len(rest) < len(string(line[w.c:])) // # starts a comment after a space
	return rest == "" || (w.style == 0 && spaced && strings.HasPrefix(rest, "#"))
}

// nextLine moves to the first line after the current one that is not blank and returns the
// number of blank lines skipped; the cursor goes past its indentation (at most indent
// columns of it in a block scalar, all of it elsewhere).
func (w *scalarWalk) nextLine(indent int) int {
	blank := 0
	for w.l++; w.l < len(w.lines) && strings.TrimSpace(w.lines[w.l]) == "" && w.style != yaml.LiteralStyle; w.l++ {
		blank++
	}
	w.c = 0
	if w.l >= len(w.lines) {
		return blank
	}
	line := w.line()
	for w.c < len(line) && (line[w.c] == ' ' || line[w.c] == '\t' && w.style != yaml.LiteralStyle && w.style != yaml.FoldedStyle) {
		if (w.style == yaml.LiteralStyle || w.style == yaml.FoldedStyle) && w.c >= indent {
			break
		}
		w.c++
	}
	return blank
}

// blockStart reads a block scalar's header (| or > with an optional chomping indicator) and
// moves to its first content line. An indentation indicator is not followed.
func (w *scalarWalk) blockStart() bool {
	line := w.line()
	if w.c >= len(line) {
		return false
	}
	for k := w.c + 1; k < len(line) && line[k] != ' ' && line[k] != '#'; k++ {
		if line[k] != '+' && line[k] != '-' {
			return false // an indentation indicator
		}
	}
	w.indent = -1
	for k := w.l + 1; k < len(w.lines); k++ {
		if t := strings.TrimLeft(w.lines[k], " "); t != "" {
			w.indent = len(w.lines[k]) - len(t)
			break
		}
	}
	if w.indent < 0 {
		return false
	}
	w.l++
	w.c = 0
	if w.l < len(w.lines) {
		w.c = min(w.indent, len(w.line()))
	}
	return true
}

// unescape decodes the double-quoted escape after a backslash at the start of s, returning
// the rune, the runes it takes and whether it is valid.
func unescape(s []rune) (rune, int, bool) {
	if len(s) == 0 {
		return 0, 0, false
	}
	simple := map[rune]rune{'0': 0, 'a': '\a', 'b': '\b', 't': '\t', '\t': '\t', 'n': '\n', 'v': '\v', 'f': '\f',
		'r': '\r', 'e': 0x1b, ' ': ' ', '"': '"', '/': '/', '\\': '\\', 'N': 0x85, '_': 0xa0, 'L': 0x2028, 'P': 0x2029}
	if r, ok := simple[s[0]]; ok {
		return r, 1, true
	}
	digits := map[rune]int{'x': 2, 'u': 4, 'U': 8}[s[0]]
	if digits == 0 || len(s) < 1+digits {
		return 0, 0, false
	}
	v, err := strconv.ParseUint(string(s[1:1+digits]), 16, 32)
	if err != nil {
		return 0, 0, false
	}
	return rune(v), 1 + digits, true
}
