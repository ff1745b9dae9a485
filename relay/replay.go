package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// LetterEvent rebuilds the change held by a dead letter.
func LetterEvent(l *deadletter.Letter) (Event, error) {
	var ev Event
	if err := json.Unmarshal(l.Change, &ev); err != nil {
		return ev, fmt.Errorf("dead letter %s: read change: %w", l.ID, err)
	}
	if ev.Object == "" {
		return ev, fmt.Errorf("dead letter %s: the change has no object (an unreadable spool record?): not replayable", l.ID)
	}
	var src struct {
		Source string `json:"source"`
	}
	_ = json.Unmarshal(l.Change, &src) // it parsed just above
	ev.Source = SourceChanges
	switch {
	case src.Source == "entry":
		ev.Source = SourceEntry
	case src.Source == "unknown":
		ev.Source = SourceUnknown
	case l.Signature != "":
		ev.Source, ev.Signature = SourceRaw, l.Signature
		if l.Body != "" {
			ev.Value = []byte(l.Body) // byte for byte, so Meta's signature still holds
		}
	case ev.Field == "messaging":
		ev.Source = SourceMessaging
	case ev.Field == "standby":
		ev.Source = SourceStandby
	case len(ev.Value) == 0:
		ev.Source = SourceChangedFields
	}
	if ev.ID == "" {
		ev.ID = l.ChangeID
	}
	return ev, nil
}

// ReplayItem is the spool item that delivers a dead letter's change to its sink again. It has
// no dedup key: a replay is always delivered.
//
// A letter of RuleErrorSink (a rule failed to evaluate for the change) is routed again
// instead, with router's current rules except those that matched it when it was accepted
// (Router.Reroute): once the rule is fixed, the replay reaches the sinks it names. A rule that
// still fails dead-letters it again; sinks with body: raw are left out (the notification's
// bytes are not kept). The item may then have no sinks: nothing matched, or only raw sinks.
// router may be nil for letters of other sinks.
func ReplayItem(l *deadletter.Letter, router *Router) (Item, error) {
	ev, err := LetterEvent(l)
	if err != nil {
		return Item{}, err
	}
	if l.Sink != RuleErrorSink {
		if l.OrderKey != "" {
			// Behind the changes of its key accepted since (they were delivered after it).
			ev.Order = []OrderKey{{Sink: l.Sink, Key: l.OrderKey}}
		}
		return Item{Data: AppendBinary(nil, &ev), Sinks: []string{l.Sink}}, nil
	}
	if router == nil {
		return Item{}, fmt.Errorf("dead letter %s: a rule error is replayed by routing it again, and no rules are loaded", l.ID)
	}
	ev.Rules = l.Rules
	rt := router.Reroute(&ev, nil)
	ev.Rules = append(slices.Clip(ev.Rules), rt.Rules...)
	ev.RuleErrors = rt.Errors
	ev.Order = rt.Order
	return Item{Data: AppendBinary(nil, &ev), Sinks: rt.Sinks}, nil
}

// Replayer hands dead letters queued with `hubrelay deadletter replay` (in the dead-letter
// directory's replay/ folder) back to the spool of the running relay. A letter's file is
// removed only after its new delivery is committed.
type Replayer struct {
	DL    *deadletter.Dir
	Spool Spooler
	// Router routes letters of RuleErrorSink again (see ReplayItem).
	Router *Router
	Notify func(sinks []string)
	Log    *slog.Logger

	mu sync.Mutex // one Once at a time: Run's and an admin request's would replay a letter twice
}

// replayErrorEvery is how often Run logs a replay error at most: a file in the replay folder
// that cannot be read (a named pipe, a corrupt letter) stays there, and is found again at
// every poll, until someone removes it.
const replayErrorEvery = time.Minute

// Run polls the replay folder every interval until ctx is done.
func (rp *Replayer) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	sample := NewLogSampler(replayErrorEvery)
	defer sample.Stop()
	for {
		if _, err := rp.Once(ctx); err != nil {
			sample.Log(rp.Log, slog.LevelError, "replay", "replay dead letters", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once replays every queued letter and returns how many it put back.
func (rp *Replayer) Once(ctx context.Context) (int, error) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	letters, err := rp.DL.Pending()
	if len(letters) == 0 {
		return 0, err
	}
	n := 0
	for _, l := range letters {
		it, ierr := ReplayItem(l, rp.Router)
		if ierr != nil {
			rp.Log.Error("replay dead letter", "dead_letter", l.ID, "err", ierr)
			continue
		}
		if _, aerr := rp.Spool.Accept(ctx, []Item{it}, time.Now()); aerr != nil {
			return n, fmt.Errorf("spool replayed letter %s: %w", l.ID, aerr)
		}
		if aerr := rp.DL.Ack(l.ID); aerr != nil {
			return n, fmt.Errorf("remove replayed letter %s: %w", l.ID, aerr)
		}
		rp.Log.Info("dead letter replayed", "dead_letter", l.ID, "sink", l.Sink, "change_id", l.ChangeID, "sinks", it.Sinks)
		if rp.Notify != nil {
			rp.Notify(it.Sinks)
		}
		n++
	}
	return n, err
}
