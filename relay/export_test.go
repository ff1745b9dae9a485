package relay

import "time"

// SetSweep sets how often an idle dispatcher re-reads its queue from the start (0: never), so
// that tests can prove liveness without the safety net.
func SetSweep(e *Engine, d time.Duration) { e.sweep = d }

// SetFailureLog replaces the sampler of e's failure lines (before Start).
func SetFailureLog(e *Engine, s *LogSampler) { e.failures = s }
