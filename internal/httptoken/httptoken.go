// Package httptoken tells HTTP tokens (RFC 9110 section 5.6.2): what header names and methods
// must be. config checks header names and methods with it, the webhook client methods.
package httptoken

import "strings"

// Valid reports whether s is a token: one or more ASCII letters, digits or any of
// !#$%&'*+-.^_`|~.
func Valid(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
