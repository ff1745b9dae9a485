package relay

import (
	"fmt"
	"maps"
	"time"
)

// This file is the operator's pause of sinks in the engine. The state lives in storage
// (SinkControls), so it survives restarts and reloads and, in a shared store, reaches every
// replica; the engine keeps a copy and hands it to each sink's runner.
//
// A paused sink keeps accepting: its deliveries wait in storage. Its dispatcher reads nothing
// and hands nothing to its workers; a worker that has a job but has not started the attempt
// puts it back. Attempts already under way when the pause comes finish (a failure is then
// rescheduled as usual, never dead-lettered for its age). A resume wakes the dispatcher, which
// delivers the backlog in acceptance order, and restarts the age clock of max_age (see
// RetryPolicy.Decide).

// SetPaused pauses (paused true) or resumes sink, recording by (who, from where) with the
// time, and returns the sink's state afterwards; changed is false when it already was in that
// state. The state is in storage before SetPaused returns. A sink the engine does not run
// (not configured) can be paused too: it is then held when it comes back, or when a stand-in
// would dead-letter its leftover deliveries.
func (e *Engine) SetPaused(sink string, paused bool, by string) (SinkState, bool, error) {
	st, changed, err := e.q.SetPaused(sink, paused, e.now(), by)
	if err != nil {
		return SinkState{}, false, err
	}
	e.applyState(st)
	if changed {
		e.logState(st, "")
	}
	return st, changed, nil
}

// SinkStates returns the engine's copy of every sink's state that was ever paused, by name.
func (e *Engine) SinkStates() map[string]SinkState {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.states)
}

// Paused returns the names of the sinks paused now, as a set.
func (e *Engine) Paused() map[string]bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]bool{}
	for name, st := range e.states {
		if st.Paused {
			out[name] = true
		}
	}
	return out
}

// logState logs a pause or a resume at info; where says how the engine learnt of it.
func (e *Engine) logState(st SinkState, where string) {
	msg := "sink resumed"
	if st.Paused {
		msg = "sink paused"
	}
	attrs := []any{"sink", st.Sink, "by", st.By, "since", st.Since}
	if where != "" {
		attrs = append(attrs, "seen", where)
	}
	e.log.Info(msg, attrs...)
}

// applyState records st in the engine's copy and hands it to the sink's runner.
func (e *Engine) applyState(st SinkState) {
	e.mu.Lock()
	e.states[st.Sink] = st
	r := e.runners[st.Sink]
	e.mu.Unlock()
	if r != nil {
		r.setOperatorState(st)
	}
}

// loadStates reads every sink's state from storage and applies what changed; where names the
// occasion for the log. A state record storage could not read comes back paused, with an
// error that is logged, and is applied so: nothing is delivered against an operator's wish.
// The error returned means nothing could be read.
func (e *Engine) loadStates(where string) error {
	m, err := e.q.SinkStates()
	if m == nil && err != nil {
		return fmt.Errorf("read sink states: %w", err)
	}
	for name, st := range m {
		e.mu.Lock()
		cur, ok := e.states[name]
		e.mu.Unlock()
		if ok && cur == st {
			continue
		}
		e.applyState(st)
		if ok || st.Paused {
			e.logState(st, where)
		}
	}
	e.mu.Lock()
	wasKnown := e.statesKnown
	e.statesKnown = true
	var release []*runner
	if !wasKnown {
		// Every sink was held while the states were unknown: let go of those not paused.
		for name, r := range e.runners {
			if _, ok := m[name]; !ok {
				release = append(release, r)
			}
		}
	}
	e.mu.Unlock()
	for _, r := range release {
		r.setOperatorState(SinkState{Sink: r.name})
	}
	if !wasKnown {
		e.log.Info("sink pause states read", "paused", len(e.Paused()))
	}
	if err != nil {
		// Damaged records only: what could be read is applied, the rest is held paused.
		e.log.Error("sink pause states partly unreadable: holding those sinks paused", "err", err)
	}
	return nil
}

// watchStates re-reads the sinks' states every poll interval, for a store shared with other
// replicas: a pause made on any replica stops this one's deliveries of the sink within one
// interval (plus the attempts already under way).
//
// With a store that is not shared it reads them only while they are unknown (storage could not
// be read when the sinks were set), every second: every sink is held until then.
func (e *Engine) watchStates() {
	defer close(e.watchDone)
	every := e.poll
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		e.mu.Lock()
		known := e.statesKnown
		e.mu.Unlock()
		if e.poll <= 0 && known {
			continue
		}
		if err := e.loadStates("storage poll"); err != nil {
			if !failing {
				e.log.Error("read sink pause states", "err", err)
			}
			failing = true
			continue
		}
		failing = false
	}
}

// setOperatorState hands the runner its sink's state. A change wakes the dispatcher: a pause
// so it lets go of a partial batch, a resume so it delivers the backlog.
func (r *runner) setOperatorState(st SinkState) {
	r.mu.Lock()
	changed := r.opPaused != st.Paused
	r.opPaused = st.Paused
	if !st.Paused {
		r.resumedAt = st.Since
	}
	r.mu.Unlock()
	if changed {
		r.poke()
	}
}

// operatorState returns whether an operator has the sink paused now, and when it was last
// resumed (zero if never).
func (r *runner) operatorState() (paused bool, resumedAt time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.opPaused, r.resumedAt
}

// holdForOperator waits while an operator has the sink paused, after putting back held, the
// deliveries of a partial batch. It reports whether to go on (false: the runner stops).
func (r *runner) holdForOperator(held []Delivery) bool {
	if p, _ := r.operatorState(); !p {
		return true
	}
	if len(held) > 0 {
		seqs := make([]uint64, len(held))
		for i, d := range held {
			seqs[i] = d.Seq
		}
		r.release(true, seqs...)
	}
	for {
		if p, _ := r.operatorState(); !p {
			return true
		}
		select {
		case <-r.wake:
		case <-r.stop:
			return false
		}
	}
}
