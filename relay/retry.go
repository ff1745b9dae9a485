package relay

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// This file is the retry policy, in one place: how long to wait after a failed attempt (the
// engine's retries through storage, and a sink's quick retries inside one attempt), and when
// to give up (Decide). config/defaults.go holds the default values; everything else asks
// this file.

// RetryPolicy is a sink's retry budget across attempts (each attempt may itself make a few
// quick in-process retries inside the sink, bounded by Quick).
type RetryPolicy struct {
	MaxAttempts int           // attempts before the delivery is dead-lettered (0 = no limit)
	MinBackoff  time.Duration // delay before the second attempt; doubles each attempt
	MaxBackoff  time.Duration // cap of that delay
	// MaxAge dead-letters a change once it would be older than this at its next attempt
	// (0 = no limit). Its age counts from the later of its acceptance and its sink's last
	// resume, and while an operator has the sink paused nothing is dead-lettered for age.
	MaxAge time.Duration
}

// Bounds of the quick retries a sink makes inside one attempt (Quick): one attempt never holds
// a worker long; longer waits are the engine's, through storage.
const (
	quickMinCap = time.Second
	quickMaxCap = 30 * time.Second
)

// Quick returns the bounds of the waits between a sink's quick retries inside one attempt:
// the policy's backoffs, capped at 1s and 30s.
func (p RetryPolicy) Quick() (minWait, maxWait time.Duration) {
	return min(p.MinBackoff, quickMinCap), min(p.MaxBackoff, quickMaxCap)
}

// Rand returns a random number in [0, n); Backoff and Decide take one so tests can fix it.
type Rand func(n int64) int64

// DefaultRand is the Rand the engine and the sinks use.
func DefaultRand(n int64) int64 { return rand.Int64N(n) }

// Backoff is the wait after the given attempt (1-based): lo doubled per attempt, capped at hi,
// with ±10% jitter (rnd; nil means none) so that retries of deliveries that failed together
// do not arrive together. lo <= 0 means 1s; hi below lo means lo. It is at least 1ms.
func Backoff(lo, hi time.Duration, attempt int, rnd Rand) time.Duration {
	d := doubled(lo, hi, attempt)
	if rnd != nil {
		d += time.Duration(rnd(int64(d)/5+1)) - d/10
	}
	return max(d, time.Millisecond)
}

// QuickBackoff is the wait before a sink's quick retry inside one attempt, after the given
// attempt (1-based): lo doubled per attempt, capped at hi, with "equal jitter" (between half
// and all of it, rnd; nil means all). The quick retries are a tight loop that many deliveries
// failing against one endpoint run at the same moment, so they spread wider than the engine's
// retries through storage (Backoff, ±10%), which keep to the documented schedule.
func QuickBackoff(lo, hi time.Duration, attempt int, rnd Rand) time.Duration {
	d := doubled(lo, hi, attempt)
	if half := d / 2; half > 0 && rnd != nil {
		d = half + time.Duration(rnd(int64(half)+1))
	}
	return d
}

// doubled is lo doubled per attempt after the first, capped at hi (lo <= 0 means 1s; hi below
// lo means lo).
func doubled(lo, hi time.Duration, attempt int) time.Duration {
	if lo <= 0 {
		lo = time.Second
	}
	if hi < lo {
		hi = lo
	}
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// Backoff is the policy's wait after the given attempt (1-based); see the function Backoff.
func (p RetryPolicy) Backoff(attempt int, rnd Rand) time.Duration {
	return Backoff(p.MinBackoff, p.MaxBackoff, attempt, rnd)
}

// letterRetry is how long a delivery waits when its dead letter could not be written.
func (p RetryPolicy) letterRetry() time.Duration { return max(p.MaxBackoff, time.Second) }

// Failure is a failed attempt of one delivery, as Decide judges it.
type Failure struct {
	Attempt int       // the attempt that failed, 1-based
	FirstAt time.Time // when the change was accepted
	Now     time.Time
	Err     error // the attempt's error; wrapping ErrPermanent means retrying cannot help
	// ResumedAt is when an operator last resumed the sink (zero if never): the change's age
	// counts from the later of FirstAt and ResumedAt.
	ResumedAt time.Time
	// Paused reports that an operator has the sink paused now (the attempt was in flight when
	// the pause came): the change is not dead-lettered for its age.
	Paused bool
}

// Decision is what to do with a failed delivery.
type Decision struct {
	// DeadLetter is true when the delivery is abandoned, with Reason for the letter.
	DeadLetter bool
	Reason     string
	// RetryAt is when to try again, when not DeadLetter.
	RetryAt time.Time
}

// Decide judges a failed attempt: a permanent error dead-letters at once; an attempt that
// spends MaxAttempts dead-letters; so does one whose retry would come after the change's
// MaxAge (counted from the later of its acceptance and the sink's last resume, and not while
// the sink is paused); otherwise it retries after Backoff.
func (p RetryPolicy) Decide(f Failure, rnd Rand) Decision {
	if errors.Is(f.Err, ErrPermanent) {
		return Decision{DeadLetter: true, Reason: "permanent: " + f.Err.Error()}
	}
	next := f.Now.Add(p.Backoff(f.Attempt, rnd))
	if p.MaxAttempts > 0 && f.Attempt >= p.MaxAttempts {
		return Decision{DeadLetter: true, Reason: fmt.Sprintf("giving up after %d attempt(s): %v", f.Attempt, f.Err)}
	}
	from := f.FirstAt
	if f.ResumedAt.After(from) {
		from = f.ResumedAt
	}
	if p.MaxAge > 0 && !f.Paused && next.Sub(from) > p.MaxAge {
		return Decision{DeadLetter: true, Reason: fmt.Sprintf("max age %s exceeded after %d attempt(s): %v", p.MaxAge, f.Attempt, f.Err)}
	}
	return Decision{RetryAt: next}
}

// failurePause is how long a sink's dispatcher waits before its next attempt after failures
// consecutive failed attempts with the given concurrency; 0 means no wait. While a sink keeps
// failing this spares the budget of every queued change (see runner.sinkFailed).
func (p RetryPolicy) failurePause(failures, concurrency int, rnd Rand) time.Duration {
	if failures < concurrency {
		return 0
	}
	return p.Backoff(failures-concurrency+1, rnd)
}
