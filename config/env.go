package config

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Environment references (${NAME} and ${NAME:-default}) are expanded inside scalar values
// only, after YAML parsing, so that an expanded value can never change the structure of the
// document (a secret holding "#" or ": " stays one string) and no expanded value ever shows up
// in a YAML syntax error. Because a plain "${X}" is not valid inside a YAML flow sequence
// ("[${X}]"), each reference is first swapped for a placeholder made of letters and digits;
// the YAML is parsed; node columns are corrected for the length difference; and placeholders
// are replaced by their values when a scalar is read. "$$" stands for a literal "$".

// envRef is one reference found in the config text.
type envRef struct {
	name   string
	def    string
	hasDef bool
	text   string // as written, e.g. "${PORT:-8080}"
}

// shift records that nodes on a line at or after column after (in the text given to the YAML
// parser) sit delta columns further right than in the original file.
type shift struct {
	after int
	delta int
}

// envRefs holds the references of one config file.
type envRefs struct {
	prefix string
	refs   []envRef
	shifts map[int][]shift // by 1-based line
}

// substitute replaces every well-formed reference in data with a placeholder. References
// that are not well-formed are left as written and reported when a scalar holding them is
// read.
func substitute(data []byte) ([]byte, *envRefs) {
	e := &envRefs{prefix: "hubrelayenv", shifts: make(map[int][]shift)}
	for bytes.Contains(data, []byte(e.prefix)) {
		e.prefix += "x"
	}
	if !bytes.Contains(data, []byte("${")) {
		return data, e
	}
	out := make([]byte, 0, len(data)+64)
	line, col := 1, 1
	for i := 0; i < len(data); {
		c := data[i]
		switch {
		case c == '\n':
			line, col = line+1, 1
			out = append(out, c)
			i++
			continue
		case c == '$' && i+1 < len(data) && data[i+1] == '$':
			out = append(out, "$$"...)
			col += 2
			i += 2
			continue
		case c == '$' && i+1 < len(data) && data[i+1] == '{':
			if ref, n, ok := parseRef(data[i:]); ok {
				ph := e.prefix + "N" + strconv.Itoa(len(e.refs)) + "E"
				e.refs = append(e.refs, ref)
				col += len(ph)
				e.shifts[line] = append(e.shifts[line], shift{after: col, delta: len(ph) - utf8.RuneCount(data[i:i+n])})
				out = append(out, ph...)
				i += n
				continue
			}
		}
		_, size := utf8.DecodeRune(data[i:])
		out = append(out, data[i:i+size]...)
		col++
		i += size
	}
	return out, e
}

// parseRef parses "${NAME}" or "${NAME:-default}" at the start of b and returns its length.
func parseRef(b []byte) (envRef, int, bool) {
	end := bytes.IndexAny(b, "}\n")
	if end < 0 || b[end] != '}' {
		return envRef{}, 0, false
	}
	inner := string(b[2:end])
	name, def, hasDef := strings.Cut(inner, ":-")
	if !validEnvName(name) {
		return envRef{}, 0, false
	}
	return envRef{name: name, def: def, hasDef: hasDef, text: string(b[:end+1])}, end + 1, true
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// column returns the column in the original file of a node at line and col of the
// substituted text.
func (e *envRefs) column(line, col int) int {
	orig := col
	for _, s := range e.shifts[line] {
		if col >= s.after {
			orig -= s.delta
		}
	}
	return orig
}

// expanded is a scalar value after expansion.
type expanded struct {
	val string
	// vars names the variables the value referenced; unset those among them that were
	// empty or undefined and had no default.
	vars, unset []string
	// malformed is set when the value holds a "${" that is not a valid reference.
	malformed bool
}

// expand replaces placeholders in s with the values of their variables and "$$" with "$".
func (e *envRefs) expand(s string, getenv func(string) string) expanded {
	if !strings.Contains(s, "$") && !strings.Contains(s, e.prefix) {
		return expanded{val: s}
	}
	var x expanded
	var b strings.Builder
	for i := 0; i < len(s); {
		switch {
		case strings.HasPrefix(s[i:], "$$"):
			b.WriteByte('$')
			i += 2
			continue
		case strings.HasPrefix(s[i:], "${"):
			x.malformed = true
		case strings.HasPrefix(s[i:], e.prefix+"N"):
			if ref, n, ok := e.lookup(s[i+len(e.prefix)+1:]); ok {
				v := getenv(ref.name)
				if v == "" {
					if ref.hasDef {
						v = ref.def
					} else {
						x.unset = append(x.unset, ref.name)
					}
				}
				x.vars = append(x.vars, ref.name)
				b.WriteString(v)
				i += len(e.prefix) + 1 + n
				continue
			}
		}
		b.WriteByte(s[i])
		i++
	}
	x.val = b.String()
	return x
}

// restore replaces placeholders in s with the references as written, for keys and for
// messages that quote the file.
func (e *envRefs) restore(s string) string {
	if !strings.Contains(s, e.prefix) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], e.prefix+"N") {
			if ref, n, ok := e.lookup(s[i+len(e.prefix)+1:]); ok {
				b.WriteString(ref.text)
				i += len(e.prefix) + 1 + n
				continue
			}
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// lookup parses "<index>E" at the start of s.
func (e *envRefs) lookup(s string) (envRef, int, bool) {
	end := strings.IndexByte(s, 'E')
	if end <= 0 {
		return envRef{}, 0, false
	}
	idx, err := strconv.Atoi(s[:end])
	if err != nil || idx < 0 || idx >= len(e.refs) {
		return envRef{}, 0, false
	}
	return e.refs[idx], end + 1, true
}
