package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// maxRouteBody bounds a payload pasted into the route tester.
const maxRouteBody = 8 << 20

// maxListed bounds the dead letters one list answer carries.
const maxListed = 500

func (h *Handler) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET "+Prefix+"{$}", h.page("overview"))
	m.HandleFunc("GET "+Prefix+"tail", h.page("tail"))
	m.HandleFunc("GET "+Prefix+"change", h.page("change"))
	m.HandleFunc("GET "+Prefix+"deadletters", h.page("deadletters"))
	m.HandleFunc("GET "+Prefix+"route", h.page("route"))
	m.Handle("GET "+Prefix+"static/", h.static)
	m.HandleFunc("GET "+Prefix+"api/overview", h.apiOverview)
	m.HandleFunc("GET "+Prefix+"api/tail", h.apiTail)
	m.HandleFunc("GET "+Prefix+"api/changes/{id...}", h.apiChange)
	m.HandleFunc("GET "+Prefix+"api/deadletters", h.apiDeadLetters)
	m.HandleFunc("GET "+Prefix+"api/deadletters/{id}", h.apiDeadLetter)
	m.HandleFunc("POST "+Prefix+"api/deadletters/replay", h.apiReplay)
	m.HandleFunc("POST "+Prefix+"api/route", h.apiRoute)
	m.HandleFunc("POST "+Prefix+"api/sinks/{name}/{action}", h.apiSinkAction)
	m.HandleFunc(Prefix+"api/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, "no such console API endpoint (see console/API.md)")
	})
	h.mux = m
}

// pageData is what every page template sees. It holds nothing secret.
type pageData struct {
	Page     string
	Title    string
	CSRF     string
	Payloads bool
	Apps     []App
	Sinks    []string
	Controls bool
	TailSize int
	Attempts int
}

var titles = map[string]string{
	"overview": "Overview", "tail": "Live tail", "change": "A change's story",
	"deadletters": "Dead letters", "route": "Route tester",
}

func (h *Handler) page(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		st := h.setup.Load()
		d := pageData{Page: name, Title: titles[name], CSRF: h.csrfToken(h.session(w, r)), Payloads: st.Payloads,
			Apps: st.Apps, Sinks: st.Sinks, Controls: h.opt.Sinks != nil, TailSize: TailSize, Attempts: AttemptSize}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := h.pages.ExecuteTemplate(w, name+".html", d); err != nil {
			h.log.Error("render console page", "page", name, "err", err)
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	enc.Encode(v)
}

// apiError is the body of every API error.
type apiError struct {
	Error string `json:"error"`
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{msg})
}

// SinkOverview is one sink's row of the overview.
type SinkOverview struct {
	Name          string    `json:"name"`
	Ready         int       `json:"ready"`
	Scheduled     int       `json:"scheduled"`
	Paused        *bool     `json:"paused"` // null when the relay has no pause/resume
	DeadLetters   int       `json:"dead_letters"`
	OldestWaiting time.Time `json:"oldest_waiting,omitzero"`
	SinkActivity
}

// Overview is the answer of GET api/overview.
type Overview struct {
	Now           time.Time        `json:"now"`
	BucketSeconds int              `json:"bucket_seconds"`
	Apps          []OverviewApp    `json:"apps"`
	Sinks         []SinkOverview   `json:"sinks"`
	RuleErrors    map[string]int64 `json:"rule_errors"`
	Payloads      bool             `json:"payloads"`
	Retention     Retention        `json:"retention"`
	Problems      []string         `json:"problems,omitempty"`
}

// OverviewApp is one app's requests by outcome over the last minutes.
type OverviewApp struct {
	Path string `json:"path"`
	AppActivity
}

func (h *Handler) apiOverview(w http.ResponseWriter, r *http.Request) {
	st := h.setup.Load()
	names := make([]string, len(st.Apps))
	paths := map[string]string{}
	for i, a := range st.Apps {
		names[i] = a.Name
		paths[a.Name] = a.Path
	}
	ov := Overview{Now: time.Now().UTC(), BucketSeconds: int(BucketWidth / time.Second), Payloads: st.Payloads, RuleErrors: map[string]int64{}}
	var sinkAct map[string]SinkActivity
	if f := h.opt.Feed; f != nil {
		var apps []AppActivity
		apps, sinkAct, ov.RuleErrors = f.Activity(names)
		for _, a := range apps {
			ov.Apps = append(ov.Apps, OverviewApp{Path: paths[a.App], AppActivity: a})
		}
		ov.Retention = f.Retention()
	}
	stats := map[string]struct {
		ready, sched int
		oldest       time.Time
	}{}
	if h.opt.Stats != nil {
		s, err := h.opt.Stats()
		if err != nil {
			ov.Problems = append(ov.Problems, h.scrub("spool stats: "+err.Error()))
		}
		for k, v := range s {
			stats[k] = struct {
				ready, sched int
				oldest       time.Time
			}{v.Ready, v.Scheduled, v.Oldest}
		}
	}
	var paused map[string]bool
	if h.opt.Sinks != nil {
		paused = h.opt.Sinks.Paused()
	}
	for _, name := range st.Sinks {
		so := SinkOverview{Name: name, SinkActivity: sinkAct[name]}
		s := stats[name]
		so.Ready, so.Scheduled, so.OldestWaiting = s.ready, s.sched, s.oldest
		if h.opt.DeadLetters != nil {
			n, err := h.opt.DeadLetters.Count(name)
			if err != nil {
				ov.Problems = append(ov.Problems, h.scrub("count dead letters: "+err.Error()))
			}
			so.DeadLetters = n
		}
		if paused != nil {
			p := paused[name]
			so.Paused = &p
		}
		so.LastError = h.scrub(so.LastError)
		ov.Sinks = append(ov.Sinks, so)
	}
	writeJSON(w, http.StatusOK, ov)
}

// Tail is the answer of GET api/tail.
type Tail struct {
	Payloads     bool      `json:"payloads"`
	PayloadsNote string    `json:"payloads_note,omitempty"`
	LastSeq      uint64    `json:"last_seq"`
	Items        []Notice  `json:"items"`
	Retention    Retention `json:"retention"`
}

// hiddenNote says why values are not shown.
const hiddenNote = "change values are hidden because log.payloads is off: they can hold phone numbers and message text; set log.payloads: true to see them here and in the logs"

func (h *Handler) apiTail(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	tf := TailFilter{App: q.Get("app"), Object: q.Get("object"), Field: q.Get("field"), ChangeID: q.Get("change_id"), Limit: 200}
	if v := q.Get("after"); v != "" {
		if _, err := fmt.Sscan(v, &tf.After); err != nil {
			writeJSONError(w, http.StatusBadRequest, "after: not a number")
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		if _, err := fmt.Sscan(v, &tf.Limit); err != nil || tf.Limit < 1 {
			writeJSONError(w, http.StatusBadRequest, "limit: not a positive number")
			return
		}
	}
	t := Tail{Items: []Notice{}}
	if f := h.opt.Feed; f != nil {
		t.Items, t.LastSeq = f.Tail(tf)
		t.Retention = f.Retention()
		if t.Items == nil {
			t.Items = []Notice{}
		}
	}
	t.Payloads = h.setup.Load().Payloads
	if !t.Payloads {
		t.PayloadsNote = hiddenNote
		for i := range t.Items {
			t.Items[i].Value, t.Items[i].Truncated = "", false
		}
	}
	writeJSON(w, http.StatusOK, t)
}

// Story is the answer of GET api/changes/{id}: what the console knows of one change.
type Story struct {
	ChangeID string `json:"change_id"`
	// Accepted lists each time the change arrived (a repeat is marked duplicate).
	Accepted    []Notice     `json:"accepted"`
	Attempts    []Attempt    `json:"attempts"`
	DeadLetters []LetterInfo `json:"dead_letters"`
	Sinks       []SinkNow    `json:"sinks"`
	Retention   Retention    `json:"retention"`
	Sources     []string     `json:"sources"`
	Note        string       `json:"note,omitempty"`
}

// SinkNow is where a change is now for one sink.
type SinkNow struct {
	Sink  string    `json:"sink"`
	State string    `json:"state"` // delivered | retrying | dead_letter | replayed | pending | unknown
	At    time.Time `json:"at,omitzero"`
	Note  string    `json:"note,omitempty"`
}

func (h *Handler) apiChange(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" {
		writeJSONError(w, http.StatusBadRequest, "a change id is required")
		return
	}
	s := Story{ChangeID: id, Accepted: []Notice{}, Attempts: []Attempt{}, DeadLetters: []LetterInfo{}, Sinks: []SinkNow{},
		Sources: []string{"in-memory history of this relay process", "dead-letter directory"}}
	payloads := h.setup.Load().Payloads
	if f := h.opt.Feed; f != nil {
		s.Accepted, _ = f.Tail(TailFilter{ChangeID: id})
		for i, j := 0, len(s.Accepted)-1; i < j; i, j = i+1, j-1 {
			s.Accepted[i], s.Accepted[j] = s.Accepted[j], s.Accepted[i]
		}
		for i := range s.Accepted {
			if !payloads {
				s.Accepted[i].Value, s.Accepted[i].Truncated = "", false
			}
		}
		s.Attempts = f.Attempts(id)
		s.Retention = f.Retention()
	}
	for i := range s.Attempts {
		s.Attempts[i].Error = h.scrub(s.Attempts[i].Error)
	}
	if dl := h.opt.DeadLetters; dl != nil {
		letters, err := dl.List(deadletter.Filter{})
		if err != nil {
			writeJSONError(w, http.StatusInternalServerError, h.scrub("list dead letters: "+err.Error()))
			return
		}
		for _, l := range letters {
			if l.ChangeID == id {
				s.DeadLetters = append(s.DeadLetters, h.letterInfo(l))
			}
		}
	}
	// Where it is now, per sink: the last attempt we saw decides, a dead letter on disk
	// overrides a retry; sinks the change was routed to without an attempt yet are pending.
	now := map[string]*SinkNow{}
	var order []string
	at := func(sink string) *SinkNow {
		if now[sink] == nil {
			now[sink] = &SinkNow{Sink: sink}
			order = append(order, sink)
		}
		return now[sink]
	}
	for _, n := range s.Accepted {
		if n.Duplicate {
			continue
		}
		for _, sk := range n.Sinks {
			sn := at(sk)
			sn.State, sn.At, sn.Note = "pending", n.At, "in the spool, waiting for its first attempt (or in flight)"
		}
	}
	onDisk := map[string]bool{}
	for _, l := range s.DeadLetters {
		onDisk[l.ID] = true
	}
	for _, a := range s.Attempts {
		sn := at(a.Sink)
		switch a.Outcome {
		case "delivered":
			sn.State, sn.At, sn.Note = "delivered", a.At, fmt.Sprintf("attempt %d", a.Attempt)
		case "retrying":
			sn.State, sn.At, sn.Note = "retrying", a.RetryAt, fmt.Sprintf("in the spool, attempt %d due at %s", a.Attempt+1, a.RetryAt.UTC().Format(time.RFC3339))
		case "dead_letter":
			if onDisk[a.DeadLetter] {
				sn.State, sn.At, sn.Note = "dead_letter", a.At, "dead letter "+a.DeadLetter
			} else {
				sn.State, sn.At, sn.Note = "replayed", a.At, "dead letter "+a.DeadLetter+" is no longer in the directory (replayed or removed)"
			}
		}
	}
	for _, l := range s.DeadLetters {
		sn := at(l.Sink)
		if sn.State != "delivered" || sn.At.Before(l.DeadAt) {
			sn.State, sn.At, sn.Note = "dead_letter", l.DeadAt, "dead letter "+l.ID
		}
	}
	for _, sk := range order {
		s.Sinks = append(s.Sinks, *now[sk])
	}
	if len(s.Accepted) == 0 && len(s.Attempts) == 0 && len(s.DeadLetters) == 0 {
		s.Note = fmt.Sprintf("nothing known of this change: the console remembers the last %d changes and %d delivery attempts since the relay started (%s); older changes are only in the spool (while pending) and the dead-letter directory",
			TailSize, AttemptSize, s.Retention.Since.UTC().Format(time.RFC3339))
		writeJSON(w, http.StatusNotFound, s)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// RouteRequest is the body of POST api/route.
type RouteRequest struct {
	App     string          `json:"app"` // default: the first app
	Payload json.RawMessage `json:"payload"`
}

// RouteResult is the answer of POST api/route: each change and what the rules do with it.
type RouteResult struct {
	App     string         `json:"app"`
	Changes []RoutedChange `json:"changes"`
	Error   string         `json:"error,omitempty"`
}

// RoutedChange is one change of a routed payload, as `hubrelay route -json` prints it, plus
// the rule errors met while matching it.
type RoutedChange struct {
	ID         string      `json:"id"`
	Object     string      `json:"object"`
	Field      string      `json:"field"`
	Verb       *string     `json:"verb"`
	EntryID    string      `json:"entry_id"`
	Rules      []string    `json:"rules"`
	Sinks      []string    `json:"sinks"`
	RuleErrors []RuleError `json:"rule_errors"`
}

// RuleError is one rule whose expression failed on a change.
type RuleError struct {
	Rule  string `json:"rule"`
	Error string `json:"error"`
	Hint  string `json:"hint"`
}

const ruleErrorHint = "the rule did not match this change; a failing `when` usually reads a field this change does not have (guard it with `value.x != nil`) or compares values of different types"

func (h *Handler) apiRoute(w http.ResponseWriter, r *http.Request) {
	if h.opt.Router == nil {
		writeJSONError(w, http.StatusNotFound, "no router")
		return
	}
	var req RouteRequest
	if !readJSON(w, r, maxRouteBody, &req) {
		return
	}
	st := h.setup.Load()
	res := RouteResult{App: req.App, Changes: []RoutedChange{}}
	if res.App == "" && len(st.Apps) > 0 {
		res.App = st.Apps[0].Name
	}
	known := false
	for _, a := range st.Apps {
		known = known || a.Name == res.App
	}
	if !known {
		writeJSONError(w, http.StatusBadRequest, fmt.Sprintf("no app named %q", res.App))
		return
	}
	if len(req.Payload) == 0 {
		writeJSONError(w, http.StatusBadRequest, `paste a Meta notification as "payload"`)
		return
	}
	events, err := relay.Decode(req.Payload, res.App, time.Now(), st.Limits)
	if err != nil {
		res.Error = "decode: " + err.Error()
		writeJSON(w, http.StatusUnprocessableEntity, res)
		return
	}
	for i := range events {
		ev := &events[i]
		ev.ID = relay.Key(ev)
		rc := RoutedChange{ID: ev.ID, Object: ev.Object, Field: ev.Field, EntryID: ev.Entry.ID, RuleErrors: []RuleError{}}
		if ev.Verb != "" {
			v := ev.Verb
			rc.Verb = &v
		}
		rt := h.opt.Router.Route(ev, func(rule string, err error) {
			rc.RuleErrors = append(rc.RuleErrors, RuleError{Rule: rule, Error: h.scrub(err.Error()), Hint: ruleErrorHint})
		})
		rc.Rules = nonNil(rt.Rules)
		rc.Sinks = nonNil(append(append([]string{}, rt.Sinks...), rt.Raw...))
		sort.Strings(rc.Sinks)
		res.Changes = append(res.Changes, rc)
	}
	writeJSON(w, http.StatusOK, res)
}

func (h *Handler) apiSinkAction(w http.ResponseWriter, r *http.Request) {
	if h.opt.Sinks == nil {
		writeJSONError(w, http.StatusNotFound, "this relay has no pause/resume")
		return
	}
	name, action := r.PathValue("name"), r.PathValue("action")
	known := false
	for _, s := range h.setup.Load().Sinks {
		known = known || s == name
	}
	if !known {
		writeJSONError(w, http.StatusNotFound, fmt.Sprintf("no sink named %q", name))
		return
	}
	by := "console from " + r.RemoteAddr
	if user, _, ok := r.BasicAuth(); ok && user != "" {
		by = "console: " + clean(user) + " from " + r.RemoteAddr
	}
	var err error
	switch action {
	case "pause":
		err = h.opt.Sinks.Pause(r.Context(), name, by)
	case "resume":
		err = h.opt.Sinks.Resume(r.Context(), name, by)
	default:
		writeJSONError(w, http.StatusNotFound, "use pause or resume")
		return
	}
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, h.scrub(action+" sink: "+err.Error()))
		return
	}
	h.log.Info("sink "+action+"d from the console", "sink", name, "by", by)
	writeJSON(w, http.StatusOK, map[string]any{"sink": name, "paused": action == "pause"})
}

// clean keeps the printable characters of a basic-auth user name, at most 64 bytes.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}
