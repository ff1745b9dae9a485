package dedupindex

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

// TestBloom: no false negatives, and about 1 % false positives at 10 bits a key.
func TestBloom(t *testing.T) {
	hash := func(i int) []byte {
		h := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
		return h[:16]
	}
	const n = 20000
	f := newBloom(n)
	for i := range n {
		f.add(hash(i))
	}
	for i := range n {
		if !f.has(hash(i)) {
			t.Fatalf("key %d added but not found", i)
		}
	}
	fp := 0
	for i := n; i < 11*n; i++ {
		if f.has(hash(i)) {
			fp++
		}
	}
	if rate := float64(fp) / (10 * n); rate > 0.03 {
		t.Fatalf("false positive rate %.4f, want about 0.01", rate)
	}
}
