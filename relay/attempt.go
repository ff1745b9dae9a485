package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// handle makes one attempt of a job (one delivery, or a batch for a BatchSink) and records
// the outcome of each delivery.
func (r *runner) handle(job []Delivery) {
	ds := make([]Delivery, 0, len(job))
	evs := make([]*Event, 0, len(job))
	for _, d := range job {
		ev := new(Event)
		if err := UnmarshalBinary(d.Data, ev); err != nil {
			r.deadLetter(d, nil, d.History, fmt.Sprintf("corrupt spool record: %v", err))
			continue
		}
		ds, evs = append(ds, d), append(evs, ev)
	}
	if len(ds) == 0 {
		return
	}
	if r.limiter != nil {
		start := time.Now()
		err := r.limiter.Wait(r.attemptCtx)
		if r.e.rw != nil {
			r.e.rw.RateLimitWait(r.name, time.Since(start))
		}
		if err != nil {
			// Shutting down while waiting for the limiter: nothing was attempted.
			r.putBack(ds)
			return
		}
	}
	if p, _ := r.operatorState(); p {
		// Paused by an operator after the dispatcher handed this job over: not attempted.
		r.putBack(ds)
		return
	}
	start := r.e.now()
	var err error
	if r.batch != nil {
		err = r.batch.DeliverBatch(r.attemptCtx, evs)
	} else {
		err = r.cfg.Sink.Deliver(r.attemptCtx, evs[0])
	}
	took := r.e.now().Sub(start)
	switch {
	case err == nil:
		r.succeeded()
		if r.e.obs != nil {
			r.e.obs.Attempt(r.name, "ok", took)
		}
		for i, d := range ds {
			if r.e.obs != nil {
				r.e.obs.Delivered(r.name, d.Attempt+1, r.e.now().Sub(d.FirstAt))
			}
			if r.e.tr != nil {
				r.e.tr.Trace(DeliveryTrace{Sink: r.name, ChangeID: evs[i].ID, Attempt: d.Attempt + 1, At: start, Outcome: "delivered"})
			}
			r.logDelivered(evs[i].ID, d, took, len(ds))
			r.dones <- d.Seq
		}
	case r.attemptCtx.Err() != nil:
		// Shutting down: the attempt did not count; the deliveries stay ready in the spool.
		r.putBack(ds)
	case len(ds) > 1 && errors.Is(err, ErrPermanent):
		// One bad change must not dead-letter its neighbours: try each alone.
		r.logFailure(r.log, slog.LevelWarn, statusKind(err), "batch rejected permanently, retrying its changes one by one", "err", err, "batch", len(ds))
		if r.e.obs != nil {
			r.e.obs.Attempt(r.name, "permanent", took)
		}
		for _, d := range ds {
			r.handle([]Delivery{d})
		}
	default:
		if !errors.Is(err, ErrPermanent) {
			r.sinkFailed() // once per attempt, however many changes it carried
		}
		for i, d := range ds {
			r.failed(d, evs[i], err, start, took)
		}
	}
}

// putBack ends the flight of deliveries not attempted: they stay ready in storage.
func (r *runner) putBack(ds []Delivery) {
	for _, d := range ds {
		r.release(true, d.Seq)
	}
}

// logDelivered logs a successful delivery: each one at debug, else at most one line per sink
// per interval at info, counting the others.
func (r *runner) logDelivered(id string, d Delivery, took time.Duration, batch int) {
	debug := r.log.Enabled(context.Background(), slog.LevelDebug)
	if !debug && !r.log.Enabled(context.Background(), slog.LevelInfo) {
		return // the sampler neither writes nor counts it: no need to build the line
	}
	attrs := []any{"change_id", id, "seq", d.Seq, "attempt", d.Attempt + 1, "duration", took.String(), "batch", batch}
	if debug {
		r.log.Debug("change delivered", attrs...)
		return
	}
	r.e.delivered.Log(r.log, slog.LevelInfo, r.name, "change delivered", attrs...)
}

// failed records a failed attempt of one delivery: dead letter when permanent or out of
// budget, else a reschedule with backoff.
func (r *runner) failed(d Delivery, ev *Event, err error, start time.Time, took time.Duration) {
	attempt := d.Attempt + 1
	history := appendHistory(d.History, deadletter.Attempt{At: start.UTC(), Status: statusOf(err), Error: err.Error()})
	log := r.log.With("change_id", ev.ID, "seq", d.Seq, "attempt", attempt, "status", statusOf(err))
	perm := errors.Is(err, ErrPermanent)
	if r.e.obs != nil {
		outcome := "retry"
		if perm {
			outcome = "permanent"
		}
		r.e.obs.Attempt(r.name, outcome, took)
	}
	paused, resumed := r.operatorState()
	dec := r.cfg.Retry.Decide(Failure{Attempt: attempt, FirstAt: d.FirstAt, Now: r.e.now(), Err: err,
		ResumedAt: resumed, Paused: paused}, DefaultRand)
	switch {
	case perm:
		r.logFailure(log, slog.LevelWarn, reasonKind(dec.Reason, err), "delivery rejected permanently", "err", err)
	case dec.DeadLetter:
		r.logFailure(log, slog.LevelWarn, reasonKind(dec.Reason, err), "delivery failed, giving up", "err", err, "reason", dec.Reason)
	default:
		r.logFailure(log, slog.LevelInfo, statusKind(err), "delivery failed, rescheduled", "err", err, "retry_at", dec.RetryAt)
		if r.e.tr != nil {
			r.e.tr.Trace(DeliveryTrace{Sink: r.name, ChangeID: ev.ID, Attempt: attempt, At: start, Status: statusOf(err),
				Err: err.Error(), Outcome: "retrying", RetryAt: dec.RetryAt})
		}
		r.reschedule(d.Seq, dec.RetryAt, attempt, history)
		return
	}
	r.deadLetter(d, ev, history, dec.Reason)
}

// reschedule hands a failed attempt to the rescheduler; the delivery stays in flight until
// the spool has recorded it.
func (r *runner) reschedule(seq uint64, at time.Time, attempt int, history []byte) {
	r.retries <- Retry{Seq: seq, At: at, Attempt: attempt, History: history}
}

// deadLetter writes the letter first and removes the delivery from the spool only after the
// letter is on disk; if the letter cannot be written the delivery is retried later instead.
func (r *runner) deadLetter(d Delivery, ev *Event, history []byte, reason string) {
	l := &deadletter.Letter{
		Sink:    r.name,
		Seq:     d.Seq,
		Reason:  reason,
		FirstAt: d.FirstAt.UTC(),
		DeadAt:  r.e.now().UTC(),
	}
	if err := json.Unmarshal(history, &l.Attempts); len(history) > 0 && err != nil {
		r.logFailure(r.log, slog.LevelWarn, "", "unreadable attempt history", "seq", d.Seq, "err", err)
	}
	if ev != nil {
		l.ChangeID = ev.ID
		l.Rules = ev.Rules
		l.Change = AppendEnvelope(nil, ev)
		if ev.Source == SourceRaw {
			l.Signature = ev.Signature
			l.Body = string(ev.Value) // the exact bytes Meta signed
		}
	} else {
		b, _ := json.Marshal(d.Data) // unreadable record: keep its bytes (base64) so nothing is lost
		l.Change = json.RawMessage(`{"corrupt_record_base64":` + string(b) + `}`)
	}
	r.deliveredAfter(l, d)
	if err := r.e.dl.Write(l); err != nil {
		r.logFailure(r.log, slog.LevelError, "", "write dead letter, will retry the delivery", "seq", d.Seq, "err", err)
		r.reschedule(d.Seq, r.e.now().Add(r.cfg.Retry.letterRetry()), d.Attempt, history)
		return
	}
	if r.e.obs != nil {
		r.e.obs.DeadLettered(r.name)
	}
	if r.e.tr != nil {
		t := DeliveryTrace{Sink: r.name, ChangeID: l.ChangeID, Attempt: d.Attempt + 1, Outcome: "dead_letter", DeadLetter: l.ID, At: l.DeadAt}
		if n := len(l.Attempts); n > 0 {
			a := l.Attempts[n-1]
			t.At, t.Status, t.Err = a.At, a.Status, a.Error
		}
		r.e.tr.Trace(t)
	}
	r.logFailure(r.log, slog.LevelWarn, reasonKind(reason, nil), "delivery dead-lettered", "change_id", l.ChangeID, "seq", d.Seq, "reason", reason, "dead_letter", l.ID)
	r.dones <- d.Seq
}

// succeeded and sinkFailed track consecutive failures: while a sink keeps failing, its dispatcher
// pauses between deliveries (exponentially, up to MaxBackoff) instead of burning every queued
// change's retry budget against a sink that is down.
func (r *runner) succeeded() {
	r.mu.Lock()
	r.failures = 0
	r.pauseTill = time.Time{}
	r.mu.Unlock()
}

func (r *runner) sinkFailed() {
	r.mu.Lock()
	r.failures++
	if d := r.cfg.Retry.failurePause(r.failures, r.cfg.Concurrency, DefaultRand); d > 0 {
		r.pauseTill = r.e.now().Add(d)
	}
	r.mu.Unlock()
}

// statusOf returns the HTTP status recorded in err, 0 when none.
func statusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// appendHistory appends a to the JSON attempt log, keeping the first attempt and the most
// recent ones.
func appendHistory(history []byte, a deadletter.Attempt) []byte {
	var list []deadletter.Attempt
	if len(history) > 0 {
		_ = json.Unmarshal(history, &list)
	}
	list = append(list, a)
	if len(list) > maxHistory {
		list = append(list[:1], list[len(list)-maxHistory+1:]...)
	}
	b, _ := json.Marshal(list)
	return b
}

// orphanSink stands in for a sink that has spooled deliveries but is no longer configured.
type orphanSink string

func (o orphanSink) Name() string { return string(o) }

func (o orphanSink) Deliver(context.Context, *Event) error {
	return fmt.Errorf("sink %q is not configured: %w", string(o), ErrPermanent)
}
