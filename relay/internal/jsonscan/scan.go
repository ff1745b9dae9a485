package jsonscan

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/hubrelay/hubrelay/relay/internal/hexdigit"
)

// HardMaxDepth caps JSON nesting when no other limit is given. It is encoding/json's own
// limit, so a value deeper than this could not be decoded by a consumer anyway.
const HardMaxDepth = 10000

// Error is invalid JSON, or JSON a caller refused (Scanner.Fail), at a byte offset. Its
// message never quotes the input beyond one byte.
type Error struct {
	// Offset is the byte offset in the input where the problem was found.
	Offset int
	// Reason says what is wrong, in lowercase.
	Reason string
}

// Error returns the reason and the offset.
func (e *Error) Error() string {
	return e.Reason + " (offset " + strconv.Itoa(e.Offset) + ")"
}

// Scanner is a strict, non-recursive JSON reader over a byte slice: it validates everything it
// passes (RFC 8259 grammar, as encoding/json.Valid) and hands out sub-slices instead of copies.
// Its errors are *Error.
type Scanner struct {
	b        []byte
	i        int // next byte to read
	depth    int // open containers
	maxDepth int
}

// New returns a Scanner at the start of b that refuses nesting deeper than maxDepth
// (HardMaxDepth when maxDepth is 0 or more than that).
func New(b []byte, maxDepth int) Scanner {
	if maxDepth <= 0 || maxDepth > HardMaxDepth {
		maxDepth = HardMaxDepth
	}
	return Scanner{b: b, maxDepth: maxDepth}
}

// Pos returns the offset of the next byte to read.
func (s *Scanner) Pos() int { return s.i }

// Len returns the length of the input.
func (s *Scanner) Len() int { return len(s.b) }

// AtEnd reports whether only whitespace is left.
func (s *Scanner) AtEnd() bool {
	s.WS()
	return s.i >= len(s.b)
}

// Since returns the input from offset start up to the current position, its capacity clipped
// so that appending to it copies.
func (s *Scanner) Since(start int) []byte { return s.b[start:s.i:s.i] }

// Fail returns an *Error at the current offset.
func (s *Scanner) Fail(reason string) error {
	return &Error{Offset: s.i, Reason: reason}
}

// Syntax returns an *Error for invalid JSON at the current offset: the byte found there, or
// the end of input, and what was being read.
func (s *Scanner) Syntax(what string) error {
	if s.i >= len(s.b) {
		return s.Fail("invalid JSON: unexpected end of input")
	}
	return s.Fail("invalid JSON: unexpected " + QuoteByte(s.b[s.i]) + " " + what)
}

// WS skips JSON whitespace.
func (s *Scanner) WS() { s.i = skipWS(s.b, s.i) }

// Peek skips whitespace and returns the next byte, 0 at the end.
func (s *Scanner) Peek() byte {
	s.WS()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// Enter consumes the '{' or '[' at the current position and enforces the depth limit.
func (s *Scanner) Enter() error {
	s.depth++
	if s.depth > s.maxDepth {
		return s.Fail("nesting deeper than " + strconv.Itoa(s.maxDepth) + " levels")
	}
	s.i++
	return nil
}

// More advances to the next element of the open container closed by end. It consumes the
// separating comma (not before the first element, tracked in *first) or the closing byte, in
// which case it returns false.
func (s *Scanner) More(end byte, first *bool) (bool, error) {
	c := s.Peek()
	if c == end {
		s.i++
		s.depth--
		return false, nil
	}
	if *first {
		*first = false
		return true, nil
	}
	if c != ',' {
		return false, s.Syntax("after a value, want ',' or " + QuoteByte(end))
	}
	s.i++
	s.WS()
	return true, nil
}

// Each calls fn for each element of the array just entered (Enter), with its index and the
// scanner at the element; fn must consume it. It returns at the closing ']' or fn's error.
func (s *Scanner) Each(fn func(i int) error) error {
	for i, first := 0, true; ; i++ {
		more, err := s.More(']', &first)
		if err != nil || !more {
			return err
		}
		if err := fn(i); err != nil {
			return err
		}
	}
}

// Key reads an object member name and its colon. The name is a sub-slice of the input unless
// it holds escapes, in which case it is decoded.
func (s *Scanner) Key() ([]byte, error) {
	if s.Peek() != '"' {
		return nil, s.Syntax("looking for the beginning of an object key")
	}
	start, end, plain, err := s.str()
	if err != nil {
		return nil, err
	}
	key := s.b[start:end]
	if !plain {
		var k string
		if err := json.Unmarshal(s.b[start-1:end+1], &k); err != nil {
			return nil, s.Fail("invalid JSON: bad object key")
		}
		key = []byte(k)
	}
	if s.Peek() != ':' {
		return nil, s.Syntax("after an object key, want ':'")
	}
	s.i++
	s.WS()
	return key, nil
}

// Text reads a JSON string value (the scanner at its quote) and returns it decoded. A string
// without escapes goes through intern when intern is not nil, so that names a caller sees
// often cost no allocation.
func (s *Scanner) Text(intern func([]byte) string) (string, error) {
	start, end, plain, err := s.str()
	if err != nil {
		return "", err
	}
	if plain {
		if intern != nil {
			return intern(s.b[start:end]), nil
		}
		return string(s.b[start:end]), nil
	}
	var v string
	if err := json.Unmarshal(s.b[start-1:end+1], &v); err != nil {
		return "", s.Fail("invalid JSON: bad string")
	}
	return v, nil
}

// Str scans the string at the current position (its opening quote) and returns its contents
// as they are in the input, escapes undecoded.
func (s *Scanner) Str() ([]byte, error) {
	start, end, _, err := s.str()
	if err != nil {
		return nil, err
	}
	return s.b[start:end], nil
}

// str scans the string whose opening quote is at s.i and returns the bounds of its contents.
// plain reports that the contents hold no escapes and are valid UTF-8, so they can be used as
// they are. Invalid UTF-8 is not an error (encoding/json turns it into U+FFFD). It is the one
// string scanner of the package: the value parser's skipStr uses it too.
func (s *Scanner) str() (start, end int, plain bool, err error) {
	b := s.b
	start = s.i + 1
	plain = true
	ascii := true
	for i := start; i < len(b); {
		c := b[i]
		if strPlain[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			s.i = i + 1
			if !ascii && !utf8.Valid(b[start:i]) {
				plain = false
			}
			return start, i, plain, nil
		case c == '\\':
			plain = false
			if i+1 >= len(b) {
				s.i = len(b)
				return 0, 0, false, s.Syntax("")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := i + 2; k < i+6; k++ {
					if k >= len(b) || !hexdigit.Is(b[k]) {
						s.i = min(k, len(b))
						return 0, 0, false, s.Syntax("in \\u escape")
					}
				}
				i += 6
			default:
				s.i = i + 1
				return 0, 0, false, s.Syntax("in string escape")
			}
		case c < 0x20:
			s.i = i
			return 0, 0, false, s.Syntax("in string literal")
		default:
			if c >= utf8.RuneSelf {
				ascii = false
			}
			i++
		}
	}
	s.i = len(b)
	return 0, 0, false, s.Syntax("")
}

// Number scans a JSON number at the current position and returns its bytes.
func (s *Scanner) Number() ([]byte, error) {
	start := s.i
	end, _, bad := ScanNumber(s.b, start)
	s.i = end
	if bad != "" {
		return nil, s.Syntax(bad)
	}
	return s.b[start:end], nil
}

// Literal consumes the literal word (true, false, null) at the current position.
func (s *Scanner) Literal(word string) error {
	end, ok := hasLiteral(s.b, s.i, word)
	s.i = end
	if !ok {
		return s.Syntax("in literal " + word)
	}
	return nil
}

// Skip validates and passes the value at the current position, whatever it is, without
// recursion: the container kinds of the open levels are kept on a small stack.
func (s *Scanner) Skip() error {
	var stackBuf [32]byte
	stack := stackBuf[:0]
	for {
		// A value is expected at s.i.
		s.WS()
		if s.i >= len(s.b) {
			return s.Syntax("")
		}
		switch c := s.b[s.i]; {
		case c == '{' || c == '[':
			if err := s.Enter(); err != nil {
				return err
			}
			stack = append(stack, c)
			s.WS()
			if c == '[' {
				if s.i < len(s.b) && s.b[s.i] == ']' {
					s.i++
					s.depth--
					stack = stack[:len(stack)-1]
					break // to the end of a value
				}
				continue // the first element
			}
			if s.i < len(s.b) && s.b[s.i] == '}' {
				s.i++
				s.depth--
				stack = stack[:len(stack)-1]
				break
			}
			if err := s.skipKey(); err != nil {
				return err
			}
			continue // the first member's value
		case c == '"':
			if _, _, _, err := s.str(); err != nil {
				return err
			}
		case c == '-' || IsDigit(c):
			if _, err := s.Number(); err != nil {
				return err
			}
		case c == 't':
			if err := s.Literal("true"); err != nil {
				return err
			}
		case c == 'f':
			if err := s.Literal("false"); err != nil {
				return err
			}
		case c == 'n':
			if err := s.Literal("null"); err != nil {
				return err
			}
		default:
			return s.Syntax("looking for the beginning of a value")
		}
		// A value ended: close finished containers, then expect the next element.
		for {
			if len(stack) == 0 {
				return nil
			}
			s.WS()
			if s.i >= len(s.b) {
				return s.Syntax("")
			}
			top, c := stack[len(stack)-1], s.b[s.i]
			if c == ',' {
				s.i++
				if top == '{' {
					s.WS()
					if err := s.skipKey(); err != nil {
						return err
					}
				}
				break
			}
			if (top == '{' && c == '}') || (top == '[' && c == ']') {
				s.i++
				s.depth--
				stack = stack[:len(stack)-1]
				continue
			}
			return s.Syntax("after a value, want ',' or a closing bracket")
		}
	}
}

// skipKey passes an object member name and its colon.
func (s *Scanner) skipKey() error {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return s.Syntax("looking for the beginning of an object key")
	}
	if _, _, _, err := s.str(); err != nil {
		return err
	}
	s.WS()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return s.Syntax("after an object key, want ':'")
	}
	s.i++
	return nil
}

// Members calls fn for each member of the object at the current position, with the scanner
// at the member's value. fn returns true when it consumed the value, false to have it
// skipped. A value that is not an object is skipped without calls.
func (s *Scanner) Members(fn func(key []byte) (bool, error)) error {
	if s.Peek() != '{' {
		return s.Skip()
	}
	if err := s.Enter(); err != nil {
		return err
	}
	for first := true; ; {
		more, err := s.More('}', &first)
		if err != nil || !more {
			return err
		}
		key, err := s.Key()
		if err != nil {
			return err
		}
		used, err := fn(key)
		if err != nil {
			return err
		}
		if !used {
			if err := s.Skip(); err != nil {
				return err
			}
		}
	}
}

// Elements calls fn for each element of the array at the current position, with the scanner
// at the element; fn returns true when it consumed it. A value that is not an array is
// skipped without calls.
func (s *Scanner) Elements(fn func() (bool, error)) error {
	if s.Peek() != '[' {
		return s.Skip()
	}
	if err := s.Enter(); err != nil {
		return err
	}
	for first := true; ; {
		more, err := s.More(']', &first)
		if err != nil || !more {
			return err
		}
		used, err := fn()
		if err != nil {
			return err
		}
		if !used {
			if err := s.Skip(); err != nil {
				return err
			}
		}
	}
}

// PlainString consumes the value at the current position and returns it decoded when it is
// a string, nil otherwise. Strings without escapes are returned as sub-slices, without a copy.
// Invalid JSON moves the scanner to the end of the input.
func (s *Scanner) PlainString() []byte {
	if s.Peek() != '"' {
		if s.Skip() != nil {
			s.i = len(s.b)
		}
		return nil
	}
	start, end, plain, err := s.str()
	switch {
	case err != nil:
		s.i = len(s.b)
		return nil
	case !plain:
		var v string
		if json.Unmarshal(s.b[start-1:end+1], &v) != nil {
			return nil
		}
		return []byte(v)
	}
	return s.b[start:end]
}

// KindOf names the JSON type a value starting with c has, "" when c cannot start one.
func KindOf(c byte) string {
	switch {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || IsDigit(c):
		return "a number"
	}
	return ""
}

// KindOrInvalid is KindOf, or what c is when it starts no value (0 stands for the end of
// input, as Peek returns it).
func KindOrInvalid(c byte) string {
	if k := KindOf(c); k != "" {
		return k
	}
	if c == 0 {
		return "end of input"
	}
	return "invalid JSON " + QuoteByte(c)
}

// QuoteByte renders c for an error message without echoing arbitrary input bytes.
func QuoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}
