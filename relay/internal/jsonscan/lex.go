package jsonscan

import (
	"unicode/utf8"

	"github.com/hubrelay/hubrelay/relay/internal/hexdigit"
)

// skipWS returns the index of the first byte at or after i that is not JSON whitespace.
func skipWS(b []byte, i int) int {
	for i < len(b) && b[i] <= ' ' && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// strPlain marks the bytes a string scan passes without a second look: printable ASCII other
// than the quote and the backslash.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// hex4 reads the four hexadecimal digits of a \u escape at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		v, ok := hexdigit.Value(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

// ScanNumber reads the JSON number at b[i:] and returns where it ends and whether it has an
// exponent; if it breaks JSON's number grammar, end is where and bad says how (as
// encoding/json words it).
func ScanNumber(b []byte, i int) (end int, exp bool, bad string) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && IsDigit(b[i]); i++ {
		}
	default:
		return i, false, "in numeric literal"
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !IsDigit(b[i]) {
			return i, false, "after decimal point in numeric literal"
		}
		for ; i < len(b) && IsDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		exp = true
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !IsDigit(b[i]) {
			return i, true, "in exponent of numeric literal"
		}
		for ; i < len(b) && IsDigit(b[i]); i++ {
		}
	}
	return i, exp, ""
}

// hasLiteral reports whether b[i:] starts with word (true, false, null); when it does not,
// end is the first byte that differs.
func hasLiteral(b []byte, i int, word string) (end int, ok bool) {
	for k := 0; k < len(word); k++ {
		if i >= len(b) || b[i] != word[k] {
			return i, false
		}
		i++
	}
	return i, true
}

// IsDigit reports whether c is an ASCII decimal digit.
func IsDigit(c byte) bool { return c >= '0' && c <= '9' }

// Empty reports whether v is null, [] or {} (whitespace aside): JSON that holds nothing.
func Empty(v []byte) bool {
	switch string(v) {
	case "null", "[]", "{}":
		return true
	}
	if len(v) < 2 || (v[0] != '[' && v[0] != '{') {
		return false
	}
	for _, c := range v[1 : len(v)-1] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}
