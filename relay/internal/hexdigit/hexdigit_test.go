package hexdigit

import "testing"

func TestValue(t *testing.T) {
	for c := 0; c < 256; c++ {
		want, wantOK := byte(0), false
		switch {
		case c >= '0' && c <= '9':
			want, wantOK = byte(c-'0'), true
		case c >= 'a' && c <= 'f':
			want, wantOK = byte(c-'a'+10), true
		case c >= 'A' && c <= 'F':
			want, wantOK = byte(c-'A'+10), true
		}
		got, ok := Value(byte(c))
		if ok != wantOK || got != want || Is(byte(c)) != wantOK {
			t.Fatalf("Value(%q) = %d, %v; want %d, %v", byte(c), got, ok, want, wantOK)
		}
	}
}

func TestPair(t *testing.T) {
	tests := []struct {
		hi, lo byte
		want   byte
		ok     bool
	}{
		{'2', 'C', 0x2c, true},
		{'f', 'F', 0xff, true},
		{'0', '0', 0, true},
		{'g', '0', 0, false},
		{'0', 'x', 0, false},
	}
	for _, tt := range tests {
		got, ok := Pair(tt.hi, tt.lo)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("Pair(%q, %q) = %#x, %v; want %#x, %v", tt.hi, tt.lo, got, ok, tt.want, tt.ok)
		}
	}
}
