package jsonscan

import (
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// errValue reports a value that is not valid JSON.
var errValue = errors.New("invalid JSON value")

// maxValueDepth bounds recursion; relay.Decode already refuses deeper notifications.
const maxValueDepth = HardMaxDepth

// Parse decodes one JSON value into the types encoding/json uses for an interface{}:
// map[string]any, []any, string, float64, bool and nil — so expressions see exactly what they
// would see with json.Unmarshal, at a fraction of the cost (no reflection, no separate
// validation pass). Rules evaluate `when` against every routed change, so this is hot.
func Parse(b []byte) (any, error) {
	p := valueParser{Scanner{b: b}}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, errValue
	}
	return v, nil
}

// valueParser is a Scanner (its input and position, its string scan) that builds values; its
// own methods, which shadow the Scanner's of the same names, report errors as errValue.
type valueParser struct {
	Scanner
}

// next consumes what follows an element of an object or array: a comma (more is true) or
// the closing byte (more is false); anything else is an error.
func (p *valueParser) next(closing byte) (more bool, err error) {
	p.ws()
	if p.i < len(p.b) {
		switch p.b[p.i] {
		case ',':
			p.i++
			return true, nil
		case closing:
			p.i++
			return false, nil
		}
	}
	return false, errValue
}

// keyStart skips whitespace up to an object key's opening quote, which it requires.
func (p *valueParser) keyStart() error {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return errValue
	}
	return nil
}

// colon consumes the whitespace and the ':' that follow an object key.
func (p *valueParser) colon() error {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != ':' {
		return errValue
	}
	p.i++
	return nil
}

func (p *valueParser) ws() { p.i = skipWS(p.b, p.i) }

func (p *valueParser) value(depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, errValue
	}
	p.ws()
	if p.i >= len(p.b) {
		return nil, errValue
	}
	switch c := p.b[p.i]; {
	case c == '{':
		p.i++
		m := make(map[string]any, 8)
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == '}' {
			p.i++
			return m, nil
		}
		for {
			if err := p.keyStart(); err != nil {
				return nil, err
			}
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			if err := p.colon(); err != nil {
				return nil, err
			}
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			m[k] = v
			if more, err := p.next('}'); !more {
				if err != nil {
					return nil, err
				}
				return m, nil
			}
		}
	case c == '[':
		p.i++
		a := make([]any, 0, 4)
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == ']' {
			p.i++
			return a, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
			if more, err := p.next(']'); !more {
				if err != nil {
					return nil, err
				}
				return a, nil
			}
		}
	case c == '"':
		return p.str()
	case c == 't':
		return true, p.lit("true")
	case c == 'f':
		return false, p.lit("false")
	case c == 'n':
		return nil, p.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return nil, errValue
}

func (p *valueParser) lit(word string) error {
	end, ok := hasLiteral(p.b, p.i, word)
	if !ok {
		return errValue
	}
	p.i = end
	return nil
}

// number accepts exactly JSON's number grammar and converts it as encoding/json does.
func (p *valueParser) number() (any, error) {
	start := p.i
	end, _, bad := ScanNumber(p.b, start)
	if bad != "" {
		return nil, errValue
	}
	p.i = end
	f, err := strconv.ParseFloat(string(p.b[start:end]), 64)
	if err != nil {
		return nil, errValue // out of range, as encoding/json refuses it
	}
	return f, nil
}

// str reads a string at p.i (which holds '"'), unescaping as encoding/json does: invalid UTF-8
// and lone surrogates become U+FFFD.
func (p *valueParser) str() (string, error) {
	b := p.b
	start := p.i + 1
	i := start
	for i < len(b) {
		c := b[i]
		if c == '"' {
			p.i = i + 1
			return string(b[start:i]), nil
		}
		if c == '\\' || c >= utf8.RuneSelf || c < 0x20 {
			break
		}
		i++
	}
	// Slow path: escapes, non-ASCII or an error.
	out := make([]byte, 0, i-start+16)
	out = append(out, b[start:i]...)
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			p.i = i + 1
			return string(out), nil
		case c < 0x20:
			return "", errValue
		case c == '\\':
			if i+1 >= len(b) {
				return "", errValue
			}
			switch b[i+1] {
			case '"', '\\', '/':
				out = append(out, b[i+1])
				i += 2
			case 'b':
				out, i = append(out, '\b'), i+2
			case 'f':
				out, i = append(out, '\f'), i+2
			case 'n':
				out, i = append(out, '\n'), i+2
			case 'r':
				out, i = append(out, '\r'), i+2
			case 't':
				out, i = append(out, '\t'), i+2
			case 'u':
				r, ok := hex4(b, i+2)
				if !ok {
					return "", errValue
				}
				i += 6
				if utf16.IsSurrogate(r) {
					r2, ok2 := rune(-1), false
					if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
						r2, ok2 = hex4(b, i+2)
					}
					if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				}
				out = utf8.AppendRune(out, r)
			default:
				return "", errValue
			}
		case c < utf8.RuneSelf:
			out, i = append(out, c), i+1
		default:
			r, size := utf8.DecodeRune(b[i:])
			out, i = utf8.AppendRune(out, r), i+size // invalid bytes become U+FFFD
		}
	}
	return "", errValue
}

// ParseProjected decodes only the top-level keys of a JSON object value that keys lists (as
// rules.Projection.Keys does): a key mapped to true whole, one mapped to false as true when
// it is present and not null (only its presence matters). The rest is checked as strictly as
// Parse checks it, so an invalid value fails here too, but nothing of it is allocated. A
// value that is not an object is decoded whole.
func ParseProjected(b []byte, keys map[string]bool) (any, error) {
	p := valueParser{Scanner{b: b}}
	p.ws()
	if p.i >= len(b) || b[p.i] != '{' {
		return Parse(b)
	}
	p.i++
	m := make(map[string]any, len(keys))
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
	} else {
		for {
			if err := p.keyStart(); err != nil {
				return nil, err
			}
			whole, wanted, k, err := p.key(keys)
			if err != nil {
				return nil, err
			}
			if err := p.colon(); err != nil {
				return nil, err
			}
			switch {
			case wanted && whole:
				v, err := p.value(1)
				if err != nil {
					return nil, err
				}
				m[k] = v
			case wanted:
				p.ws()
				null := p.i < len(p.b) && p.b[p.i] == 'n'
				if err := p.skip(1); err != nil {
					return nil, err
				}
				if null {
					m[k] = nil
				} else {
					m[k] = true
				}
			default:
				if err := p.skip(1); err != nil {
					return nil, err
				}
			}
			if more, err := p.next('}'); !more {
				if err != nil {
					return nil, err
				}
				break
			}
		}
	}
	p.ws()
	if p.i != len(p.b) {
		return nil, errValue
	}
	return m, nil
}

// key reads an object key at p.i and looks it up in keys without allocating unless it is
// wanted (or escaped).
func (p *valueParser) key(keys map[string]bool) (whole, wanted bool, k string, err error) {
	start := p.i + 1
	i := start
	for i < len(p.b) {
		c := p.b[i]
		if c == '"' {
			p.i = i + 1
			raw := p.b[start:i]
			if whole, wanted = keys[string(raw)]; wanted {
				k = string(raw)
			}
			return whole, wanted, k, nil
		}
		if c == '\\' || c >= utf8.RuneSelf || c < 0x20 {
			break
		}
		i++
	}
	k, err = p.str()
	if err != nil {
		return false, false, "", err
	}
	whole, wanted = keys[k]
	return whole, wanted, k, nil
}

// skip checks the JSON value at p.i exactly as value would, without building it.
func (p *valueParser) skip(depth int) error {
	if depth > maxValueDepth {
		return errValue
	}
	p.ws()
	if p.i >= len(p.b) {
		return errValue
	}
	switch c := p.b[p.i]; {
	case c == '{':
		p.i++
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == '}' {
			p.i++
			return nil
		}
		for {
			if err := p.keyStart(); err != nil {
				return err
			}
			if err := p.skipStr(); err != nil {
				return err
			}
			if err := p.colon(); err != nil {
				return err
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			if more, err := p.next('}'); !more {
				return err
			}
		}
	case c == '[':
		p.i++
		p.ws()
		if p.i < len(p.b) && p.b[p.i] == ']' {
			p.i++
			return nil
		}
		for {
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			if more, err := p.next(']'); !more {
				return err
			}
		}
	case c == '"':
		return p.skipStr()
	case c == 't':
		return p.lit("true")
	case c == 'f':
		return p.lit("false")
	case c == 'n':
		return p.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.skipNumber()
	}
	return errValue
}

// skipStr checks a string at p.i (which holds '"') as str would: control characters and
// malformed escapes are errors, invalid UTF-8 is not. It is the Scanner's string scan.
func (p *valueParser) skipStr() error {
	if _, _, _, err := p.Scanner.str(); err != nil {
		return errValue
	}
	return nil
}

// skipNumber checks a number as number would. Only a number with an exponent or of more than
// 300 bytes can be out of float64's range, so only those are converted.
func (p *valueParser) skipNumber() error {
	start := p.i
	end, exp, bad := ScanNumber(p.b, start)
	if bad != "" {
		return errValue
	}
	p.i = end
	if exp || end-start > 300 {
		if _, err := strconv.ParseFloat(string(p.b[start:end]), 64); err != nil {
			return errValue
		}
	}
	return nil
}
