// Package logsample rate-limits log lines that repeat once per request or per operation
// (refusals, storage failures), counting what it leaves out. relay re-exports it as
// relay.LogSampler; packages under relay that relay does not import (the spool) use it directly.
package logsample

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// DefaultEvery is how often a Sampler logs one kind of line at most.
const DefaultEvery = time.Second

// SuppressedKey is the attribute that counts the lines of the same kind a Sampler left out
// since the previous one it logged.
const SuppressedKey = "suppressed"

// maxSampledKinds bounds the kinds a Sampler tracks; kinds past it share one (overflowKind),
// so a caller that builds kinds from input cannot grow its memory without bound.
const maxSampledKinds = 1024

const overflowKind = "\x00other"

// Sampler rate-limits log lines that a client can cause once per request — refusals and
// storage failures — so that a flood of forged requests or a full disk cannot flood the log or
// make logging the bottleneck. Lines are grouped by a kind the caller names (a refusal reason,
// an outcome, a rule); of each kind at most one line per interval is written, and the next line
// written carries SuppressedKey with the number left out meanwhile. Lines left out at the end
// of a burst are not lost without trace: when an interval ends with some left out, the last of
// them is written then, with the count of the others, so every refusal is either logged or
// counted in a line that follows it within an interval.
//
// Metrics still count every request; the sampler only thins the log. A Sampler is safe for
// concurrent use; the zero value is not usable, use New.
type Sampler struct {
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex // guards kinds and every kindState
	kinds map[string]*kindState
}

type kindState struct {
	last       time.Time // when the last line of the kind was written
	suppressed int64     // lines left out since
	timer      *time.Timer
	// pending is the latest line left out, written when the interval ends.
	pending sampledLine
}

type sampledLine struct {
	log   *slog.Logger
	level slog.Level
	msg   string
	attrs []any
}

// New returns a sampler that writes at most one line of each kind per every
// (DefaultEvery when every <= 0).
func New(every time.Duration) *Sampler {
	if every <= 0 {
		every = DefaultEvery
	}
	return NewClock(every, time.Now)
}

// NewClock is New with the clock now, for tests that move time by hand.
func NewClock(every time.Duration, now func() time.Time) *Sampler {
	if every <= 0 {
		every = DefaultEvery
	}
	return &Sampler{every: every, now: now, kinds: map[string]*kindState{}}
}

// Log writes msg with attrs to lg at level, unless a line of the same kind was written less
// than the sampler's interval ago; then it only counts it. A line that is written carries
// SuppressedKey when lines of its kind were left out before it. Levels lg does not log are
// neither written nor counted.
func (s *Sampler) Log(lg *slog.Logger, level slog.Level, kind, msg string, attrs ...any) {
	if lg == nil || !lg.Enabled(context.Background(), level) {
		return
	}
	now := s.now()
	s.mu.Lock()
	k := s.kinds[kind]
	if k == nil {
		if len(s.kinds) >= maxSampledKinds {
			kind = overflowKind
			k = s.kinds[kind]
		}
		if k == nil {
			k = &kindState{}
			s.kinds[kind] = k
		}
	}
	if !k.last.IsZero() && now.Sub(k.last) < s.every {
		k.suppressed++
		k.pending = sampledLine{log: lg, level: level, msg: msg, attrs: attrs}
		if k.timer == nil {
			k.timer = time.AfterFunc(k.last.Add(s.every).Sub(now), func() { s.flush(kind) })
		}
		s.mu.Unlock()
		return
	}
	n := k.suppressed
	k.suppressed, k.last, k.pending = 0, now, sampledLine{}
	s.mu.Unlock()
	write(sampledLine{lg, level, msg, attrs}, n)
}

// flush writes the latest line of kind left out during the interval that just ended, counting
// the others.
func (s *Sampler) flush(kind string) {
	s.mu.Lock()
	k := s.kinds[kind]
	k.timer = nil
	if k.suppressed == 0 {
		s.mu.Unlock()
		return
	}
	line, n := k.pending, k.suppressed-1
	k.suppressed, k.last, k.pending = 0, s.now(), sampledLine{}
	s.mu.Unlock()
	write(line, n)
}

func write(l sampledLine, suppressed int64) {
	attrs := l.attrs
	if suppressed > 0 {
		attrs = append(attrs[:len(attrs):len(attrs)], SuppressedKey, suppressed)
	}
	l.log.Log(context.Background(), l.level, l.msg, attrs...)
}

// Flush writes now, for every kind with lines left out, the latest of them with the count of
// the others, and cancels the end-of-interval timers. Call it when the source of the lines
// stops (an engine closing), so the count of the last burst is not lost with the process.
func (s *Sampler) Flush() {
	type flushed struct {
		line sampledLine
		n    int64
	}
	var out []flushed
	s.mu.Lock()
	now := s.now()
	for _, k := range s.kinds {
		if k.timer != nil {
			k.timer.Stop()
			k.timer = nil
		}
		if k.suppressed > 0 {
			out = append(out, flushed{k.pending, k.suppressed - 1})
			k.suppressed, k.last, k.pending = 0, now, sampledLine{}
		}
	}
	s.mu.Unlock()
	for _, f := range out {
		write(f.line, f.n)
	}
}

// Stop cancels the pending end-of-interval lines; lines still left out are dropped. Call it
// when the loggers it writes to are about to go away (tests).
func (s *Sampler) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.kinds {
		if k.timer != nil {
			k.timer.Stop()
			k.timer = nil
		}
	}
}
