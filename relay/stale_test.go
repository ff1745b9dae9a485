package relay

import (
	"testing"
	"time"
)

func TestStaleCutoff(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ev := func(times ...int64) []Event {
		out := make([]Event, len(times))
		for i, tm := range times {
			out[i].Entry.Time = tm
		}
		return out
	}
	sec := func(d time.Duration) int64 { return now.Add(-d).Unix() }
	ms := func(d time.Duration) int64 { return now.Add(-d).UnixMilli() }
	tests := []struct {
		name   string
		events []Event
		maxAge time.Duration
		want   bool
	}{
		{"off", ev(sec(48 * time.Hour)), 0, false},
		{"no events", nil, time.Hour, false},
		{"seconds, old", ev(sec(2 * time.Hour)), time.Hour, true},
		{"seconds, fresh", ev(sec(time.Minute)), time.Hour, false},
		{"milliseconds, old", ev(ms(2 * time.Hour)), time.Hour, true},
		{"milliseconds, fresh", ev(ms(time.Minute)), time.Hour, false},
		{"exactly maxAge is not stale", ev(sec(time.Hour)), time.Hour, false},
		{"one fresh entry keeps it", ev(sec(3*time.Hour), sec(time.Minute)), time.Hour, false},
		{"all old", ev(sec(3*time.Hour), ms(2*time.Hour)), time.Hour, true},
		{"no time (WhatsApp)", ev(0), time.Hour, false},
		{"one without time keeps it", ev(sec(3*time.Hour), 0), time.Hour, false},
		{"future", ev(sec(-time.Hour)), time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StaleCutoff(tt.events, tt.maxAge, now); got != tt.want {
				t.Fatalf("StaleCutoff = %v, want %v", got, tt.want)
			}
		})
	}
}
