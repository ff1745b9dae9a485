package metrics

import (
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// other is the label value that stands for every value past a cardinality cap, and for
// values that are not fit to be a label (invalid UTF-8, too long).
const other = "other"

// maxLabelLen is the longest label value kept as is; a longer value becomes "other".
const maxLabelLen = 128

// Cardinality caps: distinct label values (or value pairs) one metric family may have before
// further ones are counted as "other". Object/field pairs come from Meta (finite), apps, rules
// and sinks from the configuration; the caps only guard against the unexpected.
const (
	maxChangePairs = 200
	maxRequestKeys = 1000
	maxRules       = 1000
	maxSinks       = 500
)

// children caches the pre-curried metric children of one label key, so that the hot path is a
// lock-free, allocation-free map lookup. The map is copy-on-write: readers load it atomically,
// the rare writer (a key seen for the first time) copies it under mu. At most limit keys are
// cached; a key past the limit maps to overflow(key), whose children are cached too (overflow
// must map onto a small, bounded set of keys), while the key itself is not remembered, so
// memory stays bounded whatever the input.
type children[K comparable, V any] struct {
	cur      atomic.Pointer[map[K]V]
	mu       sync.Mutex
	n        int // keys cached under their own name, not counting overflow keys
	limit    int
	create   func(K) V
	overflow func(K) K
	// fit reports whether a key's label values may be used as they are; a key that does
	// not fit is counted under overflow(key) at once.
	fit func(K) bool
}

func newChildren[K comparable, V any](limit int, create func(K) V, overflow func(K) K, fit func(K) bool) *children[K, V] {
	c := &children[K, V]{limit: limit, create: create, overflow: overflow, fit: fit}
	m := map[K]V{}
	c.cur.Store(&m)
	return c
}

// get returns the children of k, creating them on first use.
func (c *children[K, V]) get(k K) V {
	if v, ok := (*c.cur.Load())[k]; ok {
		return v
	}
	return c.slow(k)
}

func (c *children[K, V]) slow(k K) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.cur.Load()
	if v, ok := old[k]; ok {
		return v
	}
	own := c.n < c.limit && c.fit(k)
	if !own {
		k = c.overflow(k)
		if v, ok := old[k]; ok {
			return v
		}
	}
	v := c.create(k)
	m := make(map[K]V, len(old)+1)
	for ok, ov := range old {
		m[ok] = ov
	}
	m[k] = v
	if own {
		c.n++
	}
	c.cur.Store(&m)
	return v
}

// fitLabel reports whether s can be a label value as it is.
func fitLabel(s string) bool {
	return len(s) <= maxLabelLen && utf8.ValidString(s)
}

func fitString(s string) bool { return fitLabel(s) }

func overflowString(string) string { return other }
