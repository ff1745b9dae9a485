// Package hexdigit reads hexadecimal digits: the one helper behind signature headers
// (relay/verify.go), JSON \u escapes (relay/internal/jsonscan) and escaped bytes in
// distinguished names (relay/front).
package hexdigit

// Value returns the value of the hexadecimal digit c, either case; ok is false when c is not
// one.
func Value(c byte) (v byte, ok bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Is reports whether c is a hexadecimal digit.
func Is(c byte) bool {
	_, ok := Value(c)
	return ok
}

// Pair returns the byte the two hexadecimal digits hi and lo spell; ok is false when either
// is not a digit.
func Pair(hi, lo byte) (b byte, ok bool) {
	h, ok1 := Value(hi)
	l, ok2 := Value(lo)
	return h<<4 | l, ok1 && ok2
}
