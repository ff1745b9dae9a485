package relay

import "time"

// StaleCutoff reports whether a notification is stale: every one of its changes carries an
// entry.time older than maxAge before now. entry.time is in seconds, or in milliseconds when
// above 1e12 (messaging); a change without one is never stale, nor is any notification when
// maxAge is zero or less. Meta stamps entry.time when it sends, retries included, so a stale
// notification is a replay of an old capture or a badly wrong clock.
func StaleCutoff(events []Event, maxAge time.Duration, now time.Time) (stale bool) {
	if maxAge <= 0 || len(events) == 0 {
		return false
	}
	cutoff := now.Add(-maxAge)
	for i := range events {
		t := events[i].Entry.Time
		if t <= 0 {
			return false
		}
		var at time.Time
		if t > 1e12 {
			at = time.UnixMilli(t)
		} else {
			at = time.Unix(t, 0)
		}
		if !at.Before(cutoff) {
			return false
		}
	}
	return true
}
