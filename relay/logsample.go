package relay

import (
	"time"

	"github.com/hubrelay/hubrelay/relay/internal/logsample"
)

// DefaultLogEvery is how often a LogSampler logs one kind of line at most.
const DefaultLogEvery = logsample.DefaultEvery

// SuppressedKey is the attribute that counts the lines of the same kind a LogSampler left out
// since the previous one it logged.
const SuppressedKey = logsample.SuppressedKey

// LogSampler rate-limits log lines that a client can cause once per request — refusals and
// storage failures — writing at most one line of each kind per interval and counting, in the
// next line written, the ones it left out (see logsample.Sampler). It lives in an internal
// package so that the spool, which relay does not import, shares it.
type LogSampler = logsample.Sampler

// NewLogSampler returns a sampler that writes at most one line of each kind per every
// (DefaultLogEvery when every <= 0).
func NewLogSampler(every time.Duration) *LogSampler { return logsample.New(every) }

// NewLogSamplerClock is NewLogSampler with the clock now, for tests that move time by hand.
func NewLogSamplerClock(every time.Duration, now func() time.Time) *LogSampler {
	return logsample.NewClock(every, now)
}
