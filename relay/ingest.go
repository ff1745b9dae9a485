package relay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// App is one Meta app as the receiver sees it.
type App struct {
	Name        string
	Path        string
	VerifyToken string
	Verifier    *Verifier
}

// Outcome is the result of one request, as logged and counted.
type Outcome string

// Request outcomes.
const (
	OutcomeAccepted     Outcome = "accepted"      // at least one new change stored
	OutcomeDuplicate    Outcome = "duplicate"     // every change was a repeat
	OutcomeEmpty        Outcome = "empty"         // a valid envelope with no changes
	OutcomeVerified     Outcome = "verified"      // GET subscribe answered
	OutcomeBadToken     Outcome = "bad_token"     // GET with a wrong mode or token
	OutcomeBadSignature Outcome = "bad_signature" // missing or wrong signature
	OutcomeMalformed    Outcome = "malformed"     // signed, but not a Meta envelope
	OutcomeTooLarge     Outcome = "too_large"     // body over max_body_bytes
	OutcomeTooMany      Outcome = "too_many"      // more changes than allowed
	OutcomeSpoolError   Outcome = "spool_error"   // could not commit: 503
	OutcomeBadMethod    Outcome = "bad_method"    // neither GET nor POST
	OutcomeNotFound     Outcome = "not_found"     // no app on this path
	OutcomeReadError    Outcome = "read_error"    // the client's body could not be read
	OutcomeStale        Outcome = "stale"         // every entry.time older than max_event_age: 400
)

// Outcomes of requests the front door (relay/front) refuses before they reach the Receiver.
// They are declared here, with the others, so that metrics know every outcome from one list.
const (
	OutcomeOverloaded  Outcome = "overloaded"       // over the global concurrency limit: 503
	OutcomeRateLimited Outcome = "rate_limited"     // over the per-address concurrency limit: 429
	OutcomeForbidden   Outcome = "forbidden_client" // no, or not Meta's, client certificate: 403
	OutcomeTooSlow     Outcome = "too_slow"         // body slower than the minimum rate: 408
	OutcomeBodyBudget  Outcome = "body_budget"      // bodies in flight over their byte budget: 503
)

// Observer receives what the receiver does, for metrics. Every method must be cheap and safe
// for concurrent use. A nil Observer in ReceiverConfig means none.
type Observer interface {
	Request(app string, o Outcome, d time.Duration)
	Change(ev *Event, rt *Route, dup bool)
	RuleError(rule string)
}

// ReceiverConfig is the part of the configuration the receiver uses; it can be replaced at run
// time with Configure.
type ReceiverConfig struct {
	Apps         []App
	MaxBodyBytes int64
	Limits       Limits
	// LogPayloads allows logging change values; off, logs carry identifiers only.
	LogPayloads bool
	// MaxEventAge refuses notifications whose every entry.time is older (0 = off): replays of
	// captured old notifications.
	MaxEventAge time.Duration
}

type receiverState struct {
	cfg    ReceiverConfig
	byPath map[string][]*App
	logs   map[*App]*slog.Logger // each app's logger, built once instead of per request
}

// Receiver is the HTTP endpoint Meta talks to: it answers the subscription challenge and accepts
// notifications: verify, decode, key, route, spool, and only then 200.
type Receiver struct {
	state  atomic.Pointer[receiverState]
	spool  Spooler
	router *Router
	notify func(sinks []string)
	log    *slog.Logger
	obs    Observer
	now    func() time.Time
	bufs   sync.Pool
	// sample thins the per-request lines of refusals and storage failures, by kind.
	sample *LogSampler
}

// NewReceiver returns a Receiver. notify is called with the sinks that got new deliveries after
// each commit (it must not block, nor keep or modify the slice); obs may be nil.
func NewReceiver(cfg ReceiverConfig, sp Spooler, router *Router, notify func(sinks []string), obs Observer, log *slog.Logger) *Receiver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if notify == nil {
		notify = func([]string) {}
	}
	rc := &Receiver{spool: sp, router: router, notify: notify, obs: obs, log: log.With("component", "ingest"), now: time.Now,
		sample: NewLogSampler(DefaultLogEvery)}
	rc.Configure(cfg)
	return rc
}

// Configure swaps the receiver's configuration; requests in flight finish with the old one.
func (rc *Receiver) Configure(cfg ReceiverConfig) {
	st := &receiverState{cfg: cfg, byPath: map[string][]*App{}, logs: map[*App]*slog.Logger{}}
	for i := range cfg.Apps {
		a := &st.cfg.Apps[i]
		st.byPath[a.Path] = append(st.byPath[a.Path], a)
		st.logs[a] = rc.log.With("app", a.Name)
	}
	rc.state.Store(st)
}

// Paths lists the URL paths the receiver answers on.
func (rc *Receiver) Paths() []string {
	st := rc.state.Load()
	out := make([]string, 0, len(st.byPath))
	for p := range st.byPath {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// ServeHTTP answers GET verification and POST notifications on the configured app paths.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	st := rc.state.Load()
	apps := st.byPath[r.URL.Path]
	if len(apps) == 0 {
		rc.sample.Log(rc.log, slog.LevelWarn, "request/not_found", "request refused", "reason", "no app on this path",
			"status", http.StatusNotFound, "method", r.Method, "path", clip(r.URL.Path), "valid_paths", rc.Paths(), "remote", RemoteAddr(r))
		rc.finish(w, "", OutcomeNotFound, http.StatusNotFound, rc.now())
		return
	}
	switch r.Method {
	case http.MethodPost:
		rc.receive(w, r, st, apps)
	case http.MethodGet, http.MethodHead:
		rc.verify(w, r, apps)
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		rc.sample.Log(rc.log, slog.LevelWarn, "request/bad_method", "request refused", "reason", "method not allowed: use GET (verification) or POST (notifications)",
			"status", http.StatusMethodNotAllowed, "method", clip(r.Method), "path", r.URL.Path, "remote", RemoteAddr(r))
		rc.finish(w, "", OutcomeBadMethod, http.StatusMethodNotAllowed, rc.now())
	}
}

// verify answers Meta's subscription challenge. The query string holds the verify token, so it
// is never logged.
func (rc *Receiver) verify(w http.ResponseWriter, r *http.Request, apps []*App) {
	start := rc.now()
	q := r.URL.Query()
	token := []byte(q.Get("hub.verify_token"))
	matched := ""
	for _, a := range apps { // no early exit: the time taken does not tell which app matched
		if subtle.ConstantTimeCompare(token, []byte(a.VerifyToken)) == 1 && matched == "" {
			matched = a.Name
		}
	}
	if q.Get("hub.mode") != "subscribe" || matched == "" {
		reason := verifyReason(q.Get("hub.mode"), matched)
		rc.sample.Log(rc.log, slog.LevelWarn, "verify/"+reason, "verification refused", "reason", reason, "remote", RemoteAddr(r))
		rc.finish(w, "", OutcomeBadToken, http.StatusForbidden, start)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, q.Get("hub.challenge"))
	rc.log.Info("verification answered", "app", matched, "remote", RemoteAddr(r))
	rc.observe(matched, OutcomeVerified, start)
}

func verifyReason(mode, matched string) string {
	if mode != "subscribe" {
		return "hub.mode is not subscribe"
	}
	return "verify token matches no app"
}

// request is one POST as it goes through the receiver's stages.
type request struct {
	w     http.ResponseWriter
	r     *http.Request
	st    *receiverState
	start time.Time
	log   *slog.Logger // the app's, once verify has found the app
	body  []byte
	app   *App
	// sig is the signature header the body was verified with, forwarded to body: raw sinks.
	sig    string
	events []Event
	routes []Route
	items  []Item
}

// receive runs a POST through the stages relay/doc.go names: read the body (ingest), verify
// it, decode it (refusing stale notifications), key and route every change, and commit them
// to the spool; only then does Meta get its 200. A stage that refuses the request answers it
// and returns false.
func (rc *Receiver) receive(w http.ResponseWriter, r *http.Request, st *receiverState, apps []*App) {
	q := &request{w: w, r: r, st: st, start: rc.now(), log: rc.log}
	buf := rc.getBuf()
	defer rc.putBuf(buf)
	if !rc.read(q, buf) || !rc.verifyBody(q, apps) || !rc.decode(q) {
		return
	}
	if len(q.events) == 0 {
		q.log.Info("notification empty", "bytes", len(q.body))
		rc.finish(w, q.app.Name, OutcomeEmpty, http.StatusOK, q.start)
		return
	}
	rc.route(q)
	dup, err := rc.spool.Accept(r.Context(), q.items, q.start)
	if err != nil {
		rc.sample.Log(q.log, slog.LevelError, "spool", "spool commit failed", "err", err, "changes", len(q.events))
		rc.finish(w, q.app.Name, OutcomeSpoolError, http.StatusServiceUnavailable, q.start)
		return
	}
	rc.accepted(q, dup)
}

// read is the ingest stage: the whole body, refused over max_body_bytes (413) or when it
// cannot be read (400).
func (rc *Receiver) read(q *request, buf *bytes.Buffer) bool {
	r, max := q.r, q.st.cfg.MaxBodyBytes
	if max > 0 && r.ContentLength > max {
		rc.refused(q.log, "", OutcomeTooLarge, "reason", "body too large", "content_length", r.ContentLength, "max_body_bytes", max, "remote", RemoteAddr(r))
		rc.finish(q.w, "", OutcomeTooLarge, http.StatusRequestEntityTooLarge, q.start)
		return false
	}
	body, err := readBody(buf, r, max)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			rc.refused(q.log, "", OutcomeTooLarge, "reason", "body too large", "max_body_bytes", max, "remote", RemoteAddr(r))
			rc.finish(q.w, "", OutcomeTooLarge, http.StatusRequestEntityTooLarge, q.start)
			return false
		}
		rc.refused(q.log, "", OutcomeReadError, "reason", "read body", "err", err, "remote", RemoteAddr(r))
		rc.finish(q.w, "", OutcomeReadError, http.StatusBadRequest, q.start)
		return false
	}
	q.body = body
	return true
}

// verifyBody is the verify stage: the exact bytes received, before any decoding, against the
// apps on the path; the first whose secret matches is the app (401 when none does).
func (rc *Receiver) verifyBody(q *request, apps []*App) bool {
	sig256 := q.r.Header.Get("X-Hub-Signature-256")
	sig1 := q.r.Header.Get("X-Hub-Signature")
	var sigErr error
	for _, a := range apps {
		if err := a.Verifier.Verify(q.body, sig256, sig1); err == nil {
			q.app = a
			break
		} else {
			sigErr = err
		}
	}
	if q.app == nil {
		rc.refused(q.log, "", OutcomeBadSignature, "reason", sigErr.Error(), "bytes", len(q.body), "remote", RemoteAddr(q.r))
		rc.finish(q.w, "", OutcomeBadSignature, http.StatusUnauthorized, q.start)
		return false
	}
	q.log = q.st.logs[q.app]
	q.sig = sig256
	if q.sig == "" {
		q.sig = sig1 // verified with the legacy header (allow_sha1): forward that one
	}
	return true
}

// decode is the decode stage: the envelope into changes (400 when malformed, 413 over
// max_changes), and the stale cutoff (400 when every entry.time is older than max_event_age).
func (rc *Receiver) decode(q *request) bool {
	cfg, app := &q.st.cfg, q.app.Name
	events, err := Decode(q.body, app, q.start, cfg.Limits)
	if err != nil {
		outcome, status := OutcomeMalformed, http.StatusBadRequest
		if errors.Is(err, ErrTooMany) {
			outcome, status = OutcomeTooMany, http.StatusRequestEntityTooLarge
		}
		rc.refused(q.log, app, outcome, "reason", err.Error(), "bytes", len(q.body), "remote", RemoteAddr(q.r))
		rc.finish(q.w, app, outcome, status, q.start)
		return false
	}
	if cfg.MaxEventAge > 0 && StaleCutoff(events, cfg.MaxEventAge, q.start) {
		rc.refused(q.log, app, OutcomeStale, "reason", "stale", "max_event_age", cfg.MaxEventAge, "remote", RemoteAddr(q.r))
		rc.finish(q.w, app, OutcomeStale, http.StatusBadRequest, q.start)
		return false
	}
	q.events = events
	return true
}

// route is the key and route stage: each change gets its dedup key and its sinks, and is
// encoded for the spool, every item of the request in one buffer; body: raw sinks get one
// more item, the whole notification.
func (rc *Receiver) route(q *request) {
	table := rc.router.snapshot()
	log, app, logPayloads := q.log, q.app.Name, q.st.cfg.LogPayloads
	onErr := func(rule string, err error) {
		// An evaluation error can quote the payload: its text only with log.payloads.
		if logPayloads {
			rc.sample.Log(log, slog.LevelWarn, "rule/"+app+"/"+rule, "rule evaluation failed", "rule", rule, "err", err)
		} else {
			rc.sample.Log(log, slog.LevelWarn, "rule/"+app+"/"+rule, "rule evaluation failed", "rule", rule)
		}
		if rc.obs != nil {
			rc.obs.RuleError(rule)
		}
	}
	events := q.events
	routes := make([]Route, len(events))
	var raw []string
	size := 0
	for i := range events {
		ev := &events[i]
		ev.ID = Key(ev)
		routes[i] = table.route(ev, nil, onErr)
		ev.Rules = routes[i].Rules
		ev.RuleErrors = routes[i].Errors
		ev.Order = routes[i].Order
		for _, oe := range routes[i].OrderErrors {
			rc.sample.Log(log, slog.LevelWarn, "order/"+app+"/"+oe.Sink, "order_by failed to evaluate: the change is delivered unordered",
				"sink", oe.Sink, "class", oe.Class, "change_id", ev.ID)
		}
		raw = appendMissing(raw, routes[i].Raw...)
		size += binarySizeMax(ev)
	}
	// Every item in one buffer sized once, not grown by doubling as the items are appended.
	// (Were it to grow, the items before would keep the bytes of the old array: still theirs.)
	data := make([]byte, 0, size)
	items := make([]Item, len(events), len(events)+1)
	for i := range events {
		start := len(data)
		data = AppendBinary(data, &events[i])
		items[i] = Item{Key: events[i].ID, Data: data[start:len(data):len(data)], Sinks: routes[i].Sinks}
	}
	if len(raw) > 0 {
		rawEv := rawEvent(events, q.body, q.sig, q.start)
		items = append(items, Item{Key: rawEv.ID, Data: AppendBinary(nil, &rawEv), Sinks: raw})
	}
	q.routes, q.items = routes, items
}

// accepted answers 200 once the spool has committed: it wakes the sinks that got new
// deliveries, and logs and counts every change (dup[i] tells a repeat).
func (rc *Receiver) accepted(q *request, dup []bool) {
	log, events, routes := q.log, q.events, q.routes
	// The sinks to wake: the first new item's own list (notify only reads it), copied only
	// when another item adds a sink to it.
	var wake []string
	for i := range q.items {
		switch {
		case dup[i]:
		case wake == nil:
			wake = q.items[i].Sinks
		default:
			wake = appendMissing(wake[:len(wake):len(wake)], q.items[i].Sinks...)
		}
	}
	// The per-change and per-request lines are built only when their level is on: their
	// attributes alone were ~12 allocations a request at the default level (warn).
	ctx := q.r.Context()
	info, debug := log.Enabled(ctx, slog.LevelInfo), log.Enabled(ctx, slog.LevelDebug)
	var fresh int
	for i := range events {
		ev := &events[i]
		if rc.obs != nil {
			rc.obs.Change(ev, &routes[i], dup[i])
		}
		if dup[i] {
			if debug {
				log.Debug("change duplicate", "change_id", ev.ID, "object", ev.Object, "field", ev.Field)
			}
			continue
		}
		fresh++
		rc.logChange(q, ev, &routes[i], info)
	}
	if len(wake) > 0 {
		rc.notify(wake)
	}
	outcome := OutcomeAccepted
	if fresh == 0 {
		outcome = OutcomeDuplicate
	}
	if info {
		log.Info("notification accepted", "object", events[0].Object, "changes", len(events), "new", fresh,
			"duplicates", len(events)-fresh, "bytes", len(q.body), "duration", rc.now().Sub(q.start))
	}
	q.w.Header()["Content-Type"] = contentTypeJSON
	q.w.WriteHeader(http.StatusOK)
	var ack [160]byte
	q.w.Write(appendAck(ack[:0], len(events), fresh))
	rc.observe(q.app.Name, outcome, q.start)
}

// contentTypeJSON is the Content-Type of every 200 to a notification, one slice shared by all
// the answers (net/http only reads it) instead of one allocated by Header.Set per request.
var contentTypeJSON = []string{"application/json"}

// logChange logs a new change: routed, unmatched, or kept as a dead letter because a rule
// failed to evaluate (that one at warn, sampled). info says whether info lines are on.
func (rc *Receiver) logChange(q *request, ev *Event, rt *Route, info bool) {
	ruleDL := len(rt.Errors) > 0 && slices.Contains(rt.Sinks, RuleErrorSink)
	if !info && !ruleDL {
		return
	}
	log := q.log
	attrs := []any{"change_id", ev.ID, "object", ev.Object, "field", ev.Field, "verb", ev.Verb, "entry_id", ev.Entry.ID}
	if q.st.cfg.LogPayloads {
		attrs = append(attrs, "value", string(ev.Value))
	}
	if ruleDL {
		rc.sample.Log(log, slog.LevelWarn, "ruledl/"+ev.App, "change kept as a dead letter: a rule failed to evaluate", append(attrs, "reason", DescribeRuleErrors(rt.Errors), "rules", rt.Rules)...)
	}
	if !info {
		return
	}
	if len(rt.Rules) == 0 {
		if rt.CatchAll {
			attrs = append(attrs, "sinks", append(rt.Sinks[:len(rt.Sinks):len(rt.Sinks)], rt.Raw...))
		}
		log.Info("change unmatched", attrs...)
		return
	}
	log.Info("change routed", append(attrs, "rules", rt.Rules, "sinks", append(rt.Sinks[:len(rt.Sinks):len(rt.Sinks)], rt.Raw...))...)
}

// clip shortens a client-chosen string for a log line.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// rawEvent is the whole notification as one change, for body: raw sinks. Its key is derived
// from the keys of the changes it carries, so an identical retry is dropped as a repeat.
func rawEvent(events []Event, body []byte, sig string, at time.Time) Event {
	h := sha256.New()
	keys := make([]string, len(events))
	for i := range events {
		keys[i] = events[i].ID
	}
	sort.Strings(keys)
	for _, k := range keys {
		h.Write([]byte(k))
		h.Write([]byte{0})
	}
	first := &events[0]
	return Event{
		ID:         "raw:" + first.App + ":" + hex.EncodeToString(h.Sum(nil)[:16]),
		App:        first.App,
		Object:     first.Object,
		Entry:      first.Entry,
		Source:     SourceRaw,
		Value:      body,
		Signature:  sig,
		ReceivedAt: at,
	}
}

func appendMissing(dst []string, names ...string) []string {
next:
	for _, n := range names {
		for _, d := range dst {
			if d == n {
				continue next
			}
		}
		dst = append(dst, n)
	}
	return dst
}

// refused logs, sampled by app and outcome, the refusal of one notification.
func (rc *Receiver) refused(log *slog.Logger, app string, o Outcome, attrs ...any) {
	rc.sample.Log(log, slog.LevelWarn, "refused/"+app+"/"+string(o), "notification refused", attrs...)
}

func (rc *Receiver) finish(w http.ResponseWriter, app string, o Outcome, status int, start time.Time) {
	if status != http.StatusOK {
		http.Error(w, http.StatusText(status), status)
	} else {
		w.WriteHeader(status)
	}
	rc.observe(app, o, start)
}

func (rc *Receiver) observe(app string, o Outcome, start time.Time) {
	if rc.obs != nil {
		rc.obs.Request(app, o, rc.now().Sub(start))
	}
}

// putBuf returns buf to the pool unless it grew past 1 MiB, so one huge body does not pin
// memory for ever.
func (rc *Receiver) putBuf(buf *bytes.Buffer) {
	if buf.Cap() <= 1<<20 {
		rc.bufs.Put(buf)
	}
}

func (rc *Receiver) getBuf() *bytes.Buffer {
	if b, ok := rc.bufs.Get().(*bytes.Buffer); ok {
		b.Reset()
		return b
	}
	return new(bytes.Buffer)
}

// HeldBody is a request body already read into memory, as the front door's ReadBodies
// (relay/front) hands it on: the Receiver takes its bytes as they are instead of copying them.
type HeldBody interface {
	io.ReadCloser
	// HeldBytes returns the whole body; the caller must not modify it.
	HeldBytes() []byte
}

// readBody reads the whole body, refusing more than max bytes (max <= 0: no limit). The body
// is never cut short: a body over the limit is an error, not a truncated body.
func readBody(buf *bytes.Buffer, r *http.Request, max int64) ([]byte, error) {
	if hb, ok := r.Body.(HeldBody); ok { // read by front.ReadBodies already
		b := hb.HeldBytes()
		if max > 0 && int64(len(b)) > max {
			return nil, &http.MaxBytesError{Limit: max}
		}
		return b, nil
	}
	var src io.Reader = r.Body
	if max > 0 {
		src = http.MaxBytesReader(nil, r.Body, max)
		if r.ContentLength > 0 && r.ContentLength <= max {
			buf.Grow(int(r.ContentLength) + 1)
		}
	}
	if _, err := buf.ReadFrom(src); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// clientAddrKey is the context key of the client address WithRemoteAddr records.
type clientAddrKey struct{}

// WithRemoteAddr returns r with addr recorded as its client's address. The front door
// (front.WithClientIP) records there the address a trusted proxy forwarded, so that log lines
// name the real caller, not the load balancer.
func WithRemoteAddr(r *http.Request, addr string) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), clientAddrKey{}, addr))
}

// RemoteAddr returns the client address WithRemoteAddr recorded for r, else r.RemoteAddr.
func RemoteAddr(r *http.Request) string {
	if ip, ok := r.Context().Value(clientAddrKey{}).(string); ok && ip != "" {
		return ip
	}
	return r.RemoteAddr
}
