package front

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Observer is what the front door reports to, for metrics: every refusal, as
// Request("", outcome, time taken). relay.Observer (metrics.Metrics, the console's feed) has
// it. It must be cheap and safe for concurrent use.
type Observer interface {
	Request(app string, o relay.Outcome, d time.Duration)
}

// refusalLogEvery is how often one kind of refusal is logged at most.
const refusalLogEvery = relay.DefaultLogEvery

// refuser answers, counts and logs refusals. Logs go through a LogSampler keyed by reason:
// under a flood, one line a second says how many refusals of that kind went unlogged, so the
// log cannot become the bottleneck, while one refusal of another kind is still logged at once.
type refuser struct {
	log    *slog.Logger
	obs    Observer
	msg    string
	sample *relay.LogSampler
}

func newRefuser(lg *slog.Logger, obs Observer, msg string) *refuser {
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &refuser{log: lg, obs: obs, msg: msg, sample: relay.NewLogSampler(refusalLogEvery)}
}

// refuse answers status, reports o and logs reason, followed by detail when there is one.
func (f *refuser) refuse(w http.ResponseWriter, r *http.Request, start time.Time, status int, o relay.Outcome, reason, detail string, attrs ...any) {
	http.Error(w, http.StatusText(status), status)
	if f.obs != nil {
		f.obs.Request("", o, time.Since(start))
	}
	kind := reason
	if detail != "" {
		reason += " " + detail
	}
	all := append([]any{"reason", reason, "status", status, "method", r.Method, "path", r.URL.Path, "remote", relay.RemoteAddr(r)}, attrs...)
	f.sample.Log(f.log, slog.LevelWarn, kind, f.msg, all...)
}
