package console

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Sizes of the Feed's rings; the console says them on the pages that rely on them.
const (
	// TailSize is how many recent changes the live tail and the stories remember.
	TailSize = 2000
	// AttemptSize is how many recent delivery attempts the stories remember.
	AttemptSize = 8000
	// BucketWidth is the width of one counter bucket of the overview chart.
	BucketWidth = 10 * time.Second
	// Buckets is how many buckets the overview keeps (BucketWidth each: ten minutes).
	Buckets = 60
	// latencySamples is how many recent acknowledgement times per app the percentiles use.
	latencySamples = 1024
	// maxValue bounds the bytes of a change value the tail keeps (log.payloads on).
	maxValue = 4096
)

// Notice is one change of an answered notification, as the live tail shows it.
type Notice struct {
	Seq        uint64    `json:"seq"`
	At         time.Time `json:"at"`
	App        string    `json:"app"`
	Object     string    `json:"object"`
	Field      string    `json:"field"`
	Verb       string    `json:"verb"`
	EntryID    string    `json:"entry_id"`
	ChangeID   string    `json:"change_id"`
	Rules      []string  `json:"rules"`
	Sinks      []string  `json:"sinks"`
	Duplicate  bool      `json:"duplicate"`
	Value      string    `json:"value,omitempty"` // only with log.payloads
	Truncated  bool      `json:"value_truncated,omitempty"`
	ReceivedAt time.Time `json:"-"`
}

// Attempt is one delivery attempt of one change to one sink.
type Attempt struct {
	Seq        uint64    `json:"seq"`
	Sink       string    `json:"sink"`
	ChangeID   string    `json:"change_id"`
	Attempt    int       `json:"attempt"`
	At         time.Time `json:"at"`
	Status     int       `json:"status,omitempty"`
	Error      string    `json:"error,omitempty"`
	Outcome    string    `json:"outcome"`
	RetryAt    time.Time `json:"retry_at,omitzero"`
	DeadLetter string    `json:"dead_letter,omitempty"`
}

type reqKey struct {
	app     string
	outcome relay.Outcome
}

// bucket counts one BucketWidth of activity. Its maps are cleared, not reallocated, when the
// bucket is reused.
type bucket struct {
	start     int64 // unix seconds of the bucket's start; 0 = unused
	requests  map[reqKey]int
	delivered map[string]int
}

type sinkState struct {
	lastErr   string
	lastErrAt time.Time
	delivered int64
	dead      int64
}

// Feed records what the relay does for the console, in bounded memory. It implements
// relay.Observer, relay.DeliveryObserver and relay.DeliveryTracer; every method is safe for
// concurrent use and does not allocate on its common path.
type Feed struct {
	payloads atomic.Bool
	now      func() time.Time

	mu       sync.Mutex // guards everything below
	seq      uint64
	changes  []Notice // ring of TailSize
	aseq     uint64
	attempts []Attempt // ring of AttemptSize
	buckets  [Buckets]bucket
	acks     map[string]*latencies
	sinks    map[string]*sinkState
	ruleErrs map[string]int64
	started  time.Time
}

type latencies struct {
	n    int
	vals [latencySamples]time.Duration
}

// NewFeed returns an empty Feed. payloads says whether change values may be kept (config
// log.payloads); SetPayloads changes it on reload.
func NewFeed(payloads bool) *Feed {
	f := &Feed{
		now:      time.Now,
		changes:  make([]Notice, TailSize),
		attempts: make([]Attempt, AttemptSize),
		acks:     map[string]*latencies{},
		sinks:    map[string]*sinkState{},
		ruleErrs: map[string]int64{},
	}
	f.started = f.now()
	f.payloads.Store(payloads)
	return f
}

// SetPayloads turns keeping change values on or off (config log.payloads).
func (f *Feed) SetPayloads(on bool) { f.payloads.Store(on) }

// Payloads reports whether change values are kept.
func (f *Feed) Payloads() bool { return f.payloads.Load() }

// bucketFor returns the bucket of t, resetting it when it last held an older period.
// Lock should be held.
func (f *Feed) bucketFor(t time.Time) *bucket {
	start := t.Unix() - t.Unix()%int64(BucketWidth/time.Second)
	b := &f.buckets[(start/int64(BucketWidth/time.Second))%Buckets]
	if b.start != start {
		b.start = start
		if b.requests == nil {
			b.requests = map[reqKey]int{}
			b.delivered = map[string]int{}
		}
		clear(b.requests)
		clear(b.delivered)
	}
	return b
}

// Request implements relay.Observer: one answered webhook request.
func (f *Feed) Request(app string, o relay.Outcome, d time.Duration) {
	now := f.now()
	f.mu.Lock()
	f.bucketFor(now).requests[reqKey{app, o}]++
	if o == relay.OutcomeAccepted || o == relay.OutcomeDuplicate {
		l := f.acks[app]
		if l == nil {
			l = new(latencies)
			f.acks[app] = l
		}
		l.vals[l.n%latencySamples] = d
		l.n++
	}
	f.mu.Unlock()
}

// Change implements relay.Observer: one change of an answered notification.
func (f *Feed) Change(ev *relay.Event, rt *relay.Route, dup bool) {
	var value string
	var trunc bool
	if f.payloads.Load() && len(ev.Value) > 0 {
		v := ev.Value
		if len(v) > maxValue {
			v, trunc = v[:maxValue], true
		}
		value = string(v) // a copy: the receiver reuses its body buffer
	}
	now := f.now()
	f.mu.Lock()
	f.seq++
	n := &f.changes[f.seq%TailSize]
	*n = Notice{Seq: f.seq, At: now, App: ev.App, Object: ev.Object, Field: ev.Field, Verb: ev.Verb,
		EntryID: ev.Entry.ID, ChangeID: ev.ID, Duplicate: dup, Value: value, Truncated: trunc, ReceivedAt: ev.ReceivedAt}
	if rt != nil {
		n.Rules = rt.Rules
		n.Sinks = rt.Sinks
		if len(rt.Raw) > 0 {
			n.Sinks = append(rt.Sinks[:len(rt.Sinks):len(rt.Sinks)], rt.Raw...)
		}
	}
	f.mu.Unlock()
}

// RuleError implements relay.Observer: a rule's expression failed on a change.
func (f *Feed) RuleError(rule string) {
	f.mu.Lock()
	f.ruleErrs[rule]++
	f.mu.Unlock()
}

// Attempt implements relay.DeliveryObserver; the console reads attempts from Trace.
func (f *Feed) Attempt(string, string, time.Duration) {}

// Delivered implements relay.DeliveryObserver: one change delivered to sink.
func (f *Feed) Delivered(sink string, _ int, _ time.Duration) {
	now := f.now()
	f.mu.Lock()
	f.bucketFor(now).delivered[sink]++
	f.sink(sink).delivered++
	f.mu.Unlock()
}

// DeadLettered implements relay.DeliveryObserver.
func (f *Feed) DeadLettered(sink string) {
	f.mu.Lock()
	f.sink(sink).dead++
	f.mu.Unlock()
}

// Trace implements relay.DeliveryTracer: the outcome of one attempt of one change.
func (f *Feed) Trace(t relay.DeliveryTrace) {
	f.mu.Lock()
	f.aseq++
	f.attempts[f.aseq%AttemptSize] = Attempt{Seq: f.aseq, Sink: t.Sink, ChangeID: t.ChangeID, Attempt: t.Attempt,
		At: t.At, Status: t.Status, Error: t.Err, Outcome: t.Outcome, RetryAt: t.RetryAt, DeadLetter: t.DeadLetter}
	if t.Err != "" {
		s := f.sink(t.Sink)
		s.lastErr, s.lastErrAt = t.Err, t.At
	}
	f.mu.Unlock()
}

// sink returns the state of a sink, creating it. Lock should be held.
func (f *Feed) sink(name string) *sinkState {
	s := f.sinks[name]
	if s == nil {
		s = new(sinkState)
		f.sinks[name] = s
	}
	return s
}

// TailFilter selects changes of the live tail; empty fields match anything.
type TailFilter struct {
	After              uint64 // only changes with a larger Seq
	App, Object, Field string
	ChangeID           string
	Limit              int // at most this many, the newest (default and cap TailSize)
}

func (tf *TailFilter) match(n *Notice) bool {
	return n.Seq > tf.After && (tf.App == "" || n.App == tf.App) && (tf.Object == "" || n.Object == tf.Object) &&
		(tf.Field == "" || n.Field == tf.Field) && (tf.ChangeID == "" || n.ChangeID == tf.ChangeID)
}

// Tail returns the remembered changes matching tf, newest first, and the newest Seq of all.
func (f *Feed) Tail(tf TailFilter) ([]Notice, uint64) {
	limit := tf.Limit
	if limit <= 0 || limit > TailSize {
		limit = TailSize
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Notice
	for s := f.seq; s > 0 && s+TailSize > f.seq && len(out) < limit; s-- {
		n := &f.changes[s%TailSize]
		if tf.match(n) {
			out = append(out, *n)
		}
	}
	return out, f.seq
}

// Attempts returns the remembered attempts of a change, oldest first.
func (f *Feed) Attempts(changeID string) []Attempt {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Attempt
	for s := f.aseq; s > 0 && s+AttemptSize > f.aseq; s-- {
		if a := &f.attempts[s%AttemptSize]; a.ChangeID == changeID {
			out = append(out, *a)
		}
	}
	slices.Reverse(out)
	return out
}

// Retention says how far back the rings reach now.
type Retention struct {
	Since          time.Time `json:"since"` // when the feed started (relay start)
	Changes        int       `json:"changes"`
	ChangesMax     int       `json:"changes_max"`
	OldestChangeAt time.Time `json:"oldest_change_at,omitzero"`
	Attempts       int       `json:"attempts"`
	AttemptsMax    int       `json:"attempts_max"`
}

// Retention reports what the feed remembers.
func (f *Feed) Retention() Retention {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := Retention{Since: f.started, Changes: int(min(f.seq, TailSize)), ChangesMax: TailSize,
		Attempts: int(min(f.aseq, AttemptSize)), AttemptsMax: AttemptSize}
	if f.seq > 0 {
		r.OldestChangeAt = f.changes[(f.seq-uint64(r.Changes)+1)%TailSize].At
	}
	return r
}

// Point is one bucket of the overview chart.
type Point struct {
	At       time.Time      `json:"at"`
	Outcomes map[string]int `json:"outcomes"`
}

// AppActivity is one app's requests over the last minutes.
type AppActivity struct {
	App    string         `json:"app"` // "" for requests refused before an app was known
	Points []Point        `json:"points"`
	Totals map[string]int `json:"totals"`
	AckP50 float64        `json:"ack_p50_ms"`
	AckP99 float64        `json:"ack_p99_ms"`
	AckN   int            `json:"ack_samples"`
}

// SinkActivity is one sink's recent delivery activity.
type SinkActivity struct {
	DeliveredPerSecond float64   `json:"delivered_per_second"`
	Delivered          int64     `json:"delivered_total"`
	DeadLettered       int64     `json:"dead_lettered_total"`
	LastError          string    `json:"last_error,omitempty"`
	LastErrorAt        time.Time `json:"last_error_at,omitzero"`
}

// Activity returns per-app request activity for apps (plus any other app seen), oldest
// bucket first, and per-sink delivery activity over the last minute.
func (f *Feed) Activity(apps []string) ([]AppActivity, map[string]SinkActivity, map[string]int64) {
	now := f.now()
	w := int64(BucketWidth / time.Second)
	cur := now.Unix() - now.Unix()%w
	f.mu.Lock()
	defer f.mu.Unlock()
	byApp := map[string]*AppActivity{}
	order := append([]string(nil), apps...)
	get := func(app string) *AppActivity {
		a := byApp[app]
		if a == nil {
			a = &AppActivity{App: app, Totals: map[string]int{}, Points: make([]Point, Buckets)}
			for i := range a.Points {
				a.Points[i] = Point{At: time.Unix(cur-int64(Buckets-1-i)*w, 0).UTC(), Outcomes: map[string]int{}}
			}
			byApp[app] = a
			if !slices.Contains(order, app) {
				order = append(order, app)
			}
		}
		return a
	}
	for _, a := range apps {
		get(a)
	}
	sinks := map[string]SinkActivity{}
	for i := range f.buckets {
		b := &f.buckets[i]
		age := (cur - b.start) / w
		if b.start == 0 || age < 0 || age >= Buckets {
			continue
		}
		for k, n := range b.requests {
			a := get(k.app)
			a.Points[Buckets-1-age].Outcomes[string(k.outcome)] += n
			a.Totals[string(k.outcome)] += n
		}
		if age < 6 { // the last minute (the current bucket partly)
			for s, n := range b.delivered {
				sa := sinks[s]
				sa.DeliveredPerSecond += float64(n)
				sinks[s] = sa
			}
		}
	}
	for s, sa := range sinks {
		// The current bucket has run for part of its width only.
		span := 5*BucketWidth.Seconds() + float64(now.Unix()-cur+1)
		sa.DeliveredPerSecond /= span
		sinks[s] = sa
	}
	for name, st := range f.sinks {
		sa := sinks[name]
		sa.Delivered, sa.DeadLettered, sa.LastError, sa.LastErrorAt = st.delivered, st.dead, st.lastErr, st.lastErrAt
		sinks[name] = sa
	}
	out := make([]AppActivity, 0, len(order))
	for _, app := range order {
		a := byApp[app]
		if l := f.acks[app]; l != nil {
			n := min(l.n, latencySamples)
			vals := slices.Clone(l.vals[:n])
			sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
			a.AckN = n
			a.AckP50 = ms(vals[quantile(n, 0.50)])
			a.AckP99 = ms(vals[quantile(n, 0.99)])
		}
		out = append(out, *a)
	}
	ruleErrs := make(map[string]int64, len(f.ruleErrs))
	for k, v := range f.ruleErrs {
		ruleErrs[k] = v
	}
	return out, sinks, ruleErrs
}

// quantile is the index of the q-quantile of n sorted values (nearest rank).
func quantile(n int, q float64) int {
	i := int(q*float64(n)+0.999999) - 1
	return max(0, min(i, n-1))
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
