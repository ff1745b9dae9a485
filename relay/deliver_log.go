package relay

import (
	"log/slog"
	"strconv"
	"strings"
)

// maxReasonClass bounds the part of a dead-letter reason that names its kind of line.
const maxReasonClass = 48

// logFailure writes a line that can repeat once per delivery or per spool operation — a
// storage failure, a failed or dead-lettered delivery — through the engine's failure sampler:
// under a full disk, a failing store or a sink gone permanently 4xx for 100,000 changes, each
// kind of line is written at most once per sink per DefaultLogEvery, and the next one written
// counts those left out (SuppressedKey). The kind is the sink, msg and class (a reason's
// class and an HTTP status, see reasonKind), so every distinct reason still shows up in every
// interval. Metrics and dead letters still count every delivery; only the log is thinned.
func (r *runner) logFailure(lg *slog.Logger, level slog.Level, class, msg string, attrs ...any) {
	r.e.failures.Log(lg, level, r.name+"\x00"+msg+"\x00"+class, msg, attrs...)
}

// reasonKind is the class of a dead-letter reason — its text before the first colon or digit
// ("permanent", "giving up after ", "max age ", "corrupt spool record"), without the counts
// and error text that follow, which vary per change — and the HTTP status of err, if any.
func reasonKind(reason string, err error) string {
	class := reason
	if i := strings.IndexAny(class, ":0123456789"); i >= 0 {
		class = class[:i]
	}
	if len(class) > maxReasonClass {
		class = class[:maxReasonClass]
	}
	return class + "\x00" + statusKind(err)
}

// statusKind is the HTTP status of a failed attempt as a kind of line ("0" when none).
func statusKind(err error) string {
	if err == nil {
		return ""
	}
	return strconv.Itoa(statusOf(err))
}
