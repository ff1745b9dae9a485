package relay_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

func TestRetryPolicy_Decide(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	pol := relay.RetryPolicy{MaxAttempts: 5, MinBackoff: time.Second, MaxBackoff: time.Minute, MaxAge: time.Hour}
	soft := &relay.StatusError{Status: 503, Msg: "status 503"}
	perm := fmt.Errorf("orders: status 400: %w", relay.ErrPermanent)
	cases := []struct {
		name string
		pol  relay.RetryPolicy
		f    relay.Failure
		// want is "" for a retry at wantAt, else a prefix of the dead letter's reason.
		want   string
		wantAt time.Time
	}{
		{"first failure retries after MinBackoff", pol, relay.Failure{Attempt: 1, FirstAt: t0, Now: t0, Err: soft}, "", t0.Add(time.Second)},
		{"backoff doubles", pol, relay.Failure{Attempt: 3, FirstAt: t0, Now: t0, Err: soft}, "", t0.Add(4 * time.Second)},
		{"backoff is capped", pol, relay.Failure{Attempt: 4, FirstAt: t0, Now: t0, Err: soft}, "", t0.Add(8 * time.Second)},
		{"cap reached", relay.RetryPolicy{MinBackoff: time.Second, MaxBackoff: 3 * time.Second}, relay.Failure{Attempt: 30, FirstAt: t0, Now: t0, Err: soft}, "", t0.Add(3 * time.Second)},
		{"permanent dead-letters at once", pol, relay.Failure{Attempt: 1, FirstAt: t0, Now: t0, Err: perm}, "permanent: orders: status 400", time.Time{}},
		{"permanent status error", pol, relay.Failure{Attempt: 1, FirstAt: t0, Now: t0, Err: &relay.StatusError{Status: 404, Msg: "status 404", Perm: true}}, "permanent: status 404", time.Time{}},
		{"last attempt", pol, relay.Failure{Attempt: 5, FirstAt: t0, Now: t0, Err: soft}, "giving up after 5 attempt(s): status 503", time.Time{}},
		{"no attempt limit", relay.RetryPolicy{MinBackoff: time.Second, MaxBackoff: time.Second}, relay.Failure{Attempt: 500, FirstAt: t0, Now: t0, Err: soft}, "", t0.Add(time.Second)},
		{"retry would come after max age", pol, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(time.Hour - time.Second), Err: soft}, "max age 1h0m0s exceeded after 2 attempt(s)", time.Time{}},
		{"retry just within max age", pol, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(time.Hour - 2*time.Second), Err: soft}, "", t0.Add(time.Hour)},
		{"no max age", relay.RetryPolicy{MaxAttempts: 5, MinBackoff: time.Second, MaxBackoff: time.Second}, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(1000 * time.Hour), Err: soft}, "", t0.Add(1000*time.Hour + time.Second)},
		{"max age counts from the resume", pol, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(2 * time.Hour), Err: soft, ResumedAt: t0.Add(90 * time.Minute)}, "", t0.Add(2*time.Hour + 2*time.Second)},
		{"resume before acceptance changes nothing", pol, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(2 * time.Hour), Err: soft, ResumedAt: t0.Add(-time.Hour)}, "max age", time.Time{}},
		{"max age after the resume", pol, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(3 * time.Hour), Err: soft, ResumedAt: t0.Add(90 * time.Minute)}, "max age", time.Time{}},
		{"no max age while paused", pol, relay.Failure{Attempt: 2, FirstAt: t0, Now: t0.Add(2 * time.Hour), Err: soft, Paused: true}, "", t0.Add(2*time.Hour + 2*time.Second)},
		{"attempts still count while paused", pol, relay.Failure{Attempt: 5, FirstAt: t0, Now: t0, Err: soft, Paused: true}, "giving up after 5", time.Time{}},
		{"permanent while paused", pol, relay.Failure{Attempt: 1, FirstAt: t0, Now: t0, Err: perm, Paused: true}, "permanent:", time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := c.pol.Decide(c.f, nil)
			if c.want == "" {
				if d.DeadLetter || !d.RetryAt.Equal(c.wantAt) {
					t.Fatalf("Decide = %+v, want a retry at %v", d, c.wantAt)
				}
				return
			}
			if !d.DeadLetter || !strings.HasPrefix(d.Reason, c.want) {
				t.Fatalf("Decide = %+v, want a dead letter %q...", d, c.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	lo := func(n int64) int64 { return 0 }
	hi := func(n int64) int64 { return n - 1 }
	cases := []struct {
		name     string
		min, max time.Duration
		attempt  int
		rnd      relay.Rand
		want     time.Duration
	}{
		{"no jitter", time.Second, time.Minute, 1, nil, time.Second},
		{"jitter low end", time.Second, time.Minute, 1, lo, 900 * time.Millisecond},
		{"jitter high end", time.Second, time.Minute, 1, hi, 1100 * time.Millisecond},
		{"doubling", 100 * time.Millisecond, time.Minute, 4, nil, 800 * time.Millisecond},
		{"capped", time.Second, 5 * time.Second, 10, nil, 5 * time.Second},
		{"zero min is 1s", 0, 0, 1, nil, time.Second},
		{"max below min is min", 2 * time.Second, time.Second, 3, nil, 2 * time.Second},
		{"at least 1ms", time.Microsecond, time.Microsecond, 1, lo, time.Millisecond},
		{"attempt 0 as 1", time.Second, time.Minute, 0, nil, time.Second},
		{"huge attempt does not overflow", time.Second, time.Hour, 1 << 30, nil, time.Hour},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := relay.Backoff(c.min, c.max, c.attempt, c.rnd); got != c.want {
				t.Fatalf("Backoff(%s, %s, %d) = %s, want %s", c.min, c.max, c.attempt, got, c.want)
			}
		})
	}
	// The default source stays within ±10%.
	for range 1000 {
		if d := relay.Backoff(time.Second, time.Second, 1, relay.DefaultRand); d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("Backoff with DefaultRand = %s, outside 1s ±10%%", d)
		}
	}
}

func TestRetryPolicy_Quick(t *testing.T) {
	cases := []struct {
		pol      relay.RetryPolicy
		min, max time.Duration
	}{
		{relay.RetryPolicy{MinBackoff: time.Second, MaxBackoff: 5 * time.Minute}, time.Second, 30 * time.Second},
		{relay.RetryPolicy{MinBackoff: 10 * time.Second, MaxBackoff: 20 * time.Second}, time.Second, 20 * time.Second},
		{relay.RetryPolicy{MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}, time.Millisecond, 5 * time.Millisecond},
	}
	for _, c := range cases {
		if lo, hi := c.pol.Quick(); lo != c.min || hi != c.max {
			t.Errorf("%+v.Quick() = %s, %s; want %s, %s", c.pol, lo, hi, c.min, c.max)
		}
	}
}
