package main

import (
	"math"
	"runtime/debug"
	"testing"

	"github.com/hubrelay/hubrelay/config"
)

func TestAutoLimit(t *testing.T) {
	tests := []struct {
		live uint64
		want int64
	}{
		{0, config.DefaultMemoryLimit},
		{20 << 20, config.DefaultMemoryLimit}, // 56 MiB < the floor
		{30 << 20, 76 << 20},
		{120<<20 + 1, 257 << 20}, // rounded up to a MiB
	}
	for _, tt := range tests {
		if got := autoLimit(tt.live); got != tt.want {
			t.Errorf("autoLimit(%d) = %d, want %d", tt.live, got, tt.want)
		}
	}
}

func TestMemoryLimiter(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1)) // the test's own limit, restored
	noEnv := func(string) string { return "" }

	newMemoryLimiter(config.Server{MemoryLimit: 300 << 20}, noEnv)
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("fixed memory_limit: runtime limit %d, want %d", got, 300<<20)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	m := newMemoryLimiter(config.Server{}, noEnv)
	if got := debug.SetMemoryLimit(-1); got < config.DefaultMemoryLimit || got != m.set {
		t.Errorf("auto: runtime limit %d, limiter's %d, want it set, at least %d", got, m.set, config.DefaultMemoryLimit)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	newMemoryLimiter(config.Server{}, func(k string) string {
		if k == "GOMEMLIMIT" {
			return "1GiB"
		}
		return ""
	})
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("auto with GOMEMLIMIT set: runtime limit changed to %d", got)
	}
}
