package metrics

import (
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Request counts one answered webhook request and observes its acknowledgement time. app is
// empty when the request was refused before an app was known (not_found, bad_signature…).
func (m *Metrics) Request(app string, o relay.Outcome, d time.Duration) {
	c := m.requestC.get(requestKey{app, o})
	c.count.Inc()
	c.ack.Observe(d.Seconds())
}

// Change counts one decoded change of an answered notification: as a duplicate, or as
// accepted together with the rules it matched (or as unmatched). rt may be nil for a change
// that was not routed.
func (m *Metrics) Change(ev *relay.Event, rt *relay.Route, dup bool) {
	c := m.changeC.get(changeKey{ev.Object, ev.Field})
	if dup {
		c.duplicate.Inc()
		return
	}
	c.accepted.Inc()
	if ev.Source == relay.SourceUnknown {
		m.unrecC.get(ev.Object).Inc()
	}
	if rt == nil || len(rt.Rules) == 0 {
		c.unmatched.Inc()
		return
	}
	for _, r := range rt.Rules {
		m.ruleC.get(r).Inc()
	}
}

// RuleError counts one failed evaluation of rule's expression.
func (m *Metrics) RuleError(rule string) {
	m.ruleErrC.get(rule).Inc()
}

// Attempt counts one delivery attempt to sink and observes its duration. outcome is "ok",
// "retry" or "permanent"; anything else is counted as "other".
func (m *Metrics) Attempt(sink, outcome string, d time.Duration) {
	c := m.sinkC.get(sink)
	switch outcome {
	case "ok":
		c.attemptOK.Inc()
	case "retry":
		c.attemptRetry.Inc()
	case "permanent":
		c.attemptPerm.Inc()
	default:
		m.attempts.WithLabelValues(c.label, other).Inc()
	}
	c.attemptDuration.Observe(d.Seconds())
}

// Delivered counts one change delivered to sink, with the attempts it took and the time from
// its acceptance to its delivery.
func (m *Metrics) Delivered(sink string, attempts int, sinceAccept time.Duration) {
	c := m.sinkC.get(sink)
	c.delivered.Inc()
	c.attempts.Observe(float64(attempts))
	c.latency.Observe(sinceAccept.Seconds())
}

// RateLimitWait adds the time a worker of sink waited for the sink's rate limiter.
func (m *Metrics) RateLimitWait(sink string, d time.Duration) {
	m.sinkC.get(sink).rateWait.Add(max(d, 0).Seconds())
}

// DeadLettered counts one delivery to sink abandoned to the dead-letter directory.
func (m *Metrics) DeadLettered(sink string) {
	m.sinkC.get(sink).deadLettered.Inc()
}

// newRequest, newChange and newSink create the children of a key seen for the first time
// (the slow path of children.get).

func (m *Metrics) newRequest(k requestKey) requestChildren {
	return requestChildren{
		count: m.requests.WithLabelValues(k.app, string(k.outcome)),
		ack:   m.ackDuration.WithLabelValues(string(k.outcome)),
	}
}

func fitRequest(k requestKey) bool { return fitLabel(k.app) && fitLabel(string(k.outcome)) }

// overflowRequest keeps a known outcome and folds the app, so that the overflow keys are at
// most one per outcome.
func overflowRequest(k requestKey) requestKey {
	o := k.outcome
	if !knownOutcomes[o] {
		o = other
	}
	return requestKey{other, o}
}

func (m *Metrics) newChange(k changeKey) *changeChildren {
	return &changeChildren{
		accepted:  m.changes.WithLabelValues(k.object, k.field, "accepted"),
		duplicate: m.changes.WithLabelValues(k.object, k.field, "duplicate"),
		unmatched: m.unmatched.WithLabelValues(k.object, k.field),
	}
}

func fitChange(k changeKey) bool { return fitLabel(k.object) && fitLabel(k.field) }

func overflowChange(changeKey) changeKey { return changeKey{other, other} }

func (m *Metrics) newSink(sink string) *sinkChildren {
	return &sinkChildren{
		label:           sink,
		attemptOK:       m.attempts.WithLabelValues(sink, "ok"),
		attemptRetry:    m.attempts.WithLabelValues(sink, "retry"),
		attemptPerm:     m.attempts.WithLabelValues(sink, "permanent"),
		attemptDuration: m.attemptDuration.WithLabelValues(sink),
		delivered:       m.deliveries.WithLabelValues(sink, "delivered"),
		deadLettered:    m.deliveries.WithLabelValues(sink, "dead_lettered"),
		latency:         m.latency.WithLabelValues(sink),
		attempts:        m.attemptsPerDelivery.WithLabelValues(sink),
		rateWait:        m.rateWait.WithLabelValues(sink),
	}
}
