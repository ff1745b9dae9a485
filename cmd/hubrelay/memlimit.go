package main

// The Go runtime's soft memory limit (server.memory_limit).

import (
	"runtime/debug"
	"runtime/metrics"

	"github.com/hubrelay/hubrelay/config"
)

// memoryLimiter sets the runtime's soft memory limit from server.memory_limit. Without one
// it derives the limit (auto): config.DefaultMemoryLimit, or twice the live heap plus
// autoLimitSlack when that is more. GOGC alone lets the heap reach twice the live heap and
// keeps what it freed for a while; a backlog with the sinks down came to 60–95 MiB of Go
// memory around 20–40 MiB of live heap. Under the limit the collector runs earlier and the
// scavenger hands idle memory back, while a relay whose live heap is large (a dedup index of
// many keys) gets a limit above what GOGC lets it use anyway, so it collects no more often.
// A GOMEMLIMIT in the environment is the operator's: auto then leaves the runtime alone.
type memoryLimiter struct {
	auto bool
	set  int64 // the limit last set
}

// autoLimitSlack is the room the derived limit leaves above twice the live heap.
const autoLimitSlack = 16 << 20

// newMemoryLimiter applies cfg's limit (fixed, or auto's first) and returns the limiter that
// adjust keeps up to date.
func newMemoryLimiter(cfg config.Server, getenv func(string) string) *memoryLimiter {
	m := &memoryLimiter{}
	switch {
	case cfg.MemoryLimit > 0:
		m.set = cfg.MemoryLimit
		debug.SetMemoryLimit(m.set)
	case getenv("GOMEMLIMIT") == "":
		m.auto = true
		m.adjust()
	}
	return m
}

// adjust sets the auto limit from the live heap now; a no-op for a fixed limit.
func (m *memoryLimiter) adjust() {
	if !m.auto {
		return
	}
	want := autoLimit(liveHeap())
	if want != m.set {
		m.set = want
		debug.SetMemoryLimit(want)
	}
}

// autoLimit is the limit auto derives from a live heap of live bytes, rounded up to a MiB so
// that a heap moving a little does not move it.
func autoLimit(live uint64) int64 {
	v := max(int64(config.DefaultMemoryLimit), 2*int64(live)+autoLimitSlack)
	return (v + 1<<20 - 1) &^ (1<<20 - 1)
}

// liveHeap returns the heap the last collection found live, in bytes.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
