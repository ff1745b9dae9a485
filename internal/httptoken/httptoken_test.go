package httptoken

import (
	"strings"
	"testing"
)

// TestValid: every byte against RFC 9110's tchar (printable ASCII but the delimiters), and
// whole strings.
func TestValid(t *testing.T) {
	for c := 0; c < 256; c++ {
		want := c > ' ' && c < 0x7f && !strings.ContainsRune(`"(),/:;<=>?@[\]{}`, rune(c))
		if got := Valid(string([]byte{byte(c)})); got != want {
			t.Errorf("Valid(%q) = %v, want %v", byte(c), got, want)
		}
	}
	for s, want := range map[string]bool{"": false, "POST": true, "X-Hub-Signature-256": true, "X Hub": false, "Auth:": false, "PURGE~1": true} {
		if got := Valid(s); got != want {
			t.Errorf("Valid(%q) = %v, want %v", s, got, want)
		}
	}
}
