package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// The dead-letter endpoints of the console's API: list, show and replay.

// LetterInfo is a dead letter as the console lists it.
type LetterInfo struct {
	ID       string    `json:"id"`
	Sink     string    `json:"sink"`
	ChangeID string    `json:"change_id"`
	Rules    []string  `json:"rules"`
	Reason   string    `json:"reason"`
	FirstAt  time.Time `json:"first_at"`
	DeadAt   time.Time `json:"dead_at"`
	Attempts int       `json:"attempts"`
	Raw      bool      `json:"raw,omitempty"` // the whole notification (a body: raw sink)
}

func (h *Handler) letterInfo(l *deadletter.Letter) LetterInfo {
	return LetterInfo{ID: l.ID, Sink: l.Sink, ChangeID: l.ChangeID, Rules: nonNil(l.Rules), Reason: h.scrub(l.Reason),
		FirstAt: l.FirstAt, DeadAt: l.DeadAt, Attempts: len(l.Attempts), Raw: l.Signature != ""}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// LetterList is the answer of GET api/deadletters.
type LetterList struct {
	Total   int          `json:"total"`
	Letters []LetterInfo `json:"letters"`
	Dir     string       `json:"dir"`
}

// letterFilter reads sink, rule, since (a duration ago or RFC 3339) and change_id.
func letterFilter(r *http.Request) (deadletter.Filter, string, error) {
	q := r.URL.Query()
	f := deadletter.Filter{Sink: q.Get("sink"), Rule: q.Get("rule")}
	if s := q.Get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			f.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, s); err == nil {
			f.Since = t
		} else {
			return f, "", errors.New("since: use a duration (24h) or an RFC 3339 time")
		}
	}
	return f, q.Get("change_id"), nil
}

func (h *Handler) apiDeadLetters(w http.ResponseWriter, r *http.Request) {
	if h.opt.DeadLetters == nil {
		writeJSONError(w, http.StatusNotFound, "no dead-letter directory")
		return
	}
	f, change, err := letterFilter(r)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, err.Error())
		return
	}
	letters, err := h.opt.DeadLetters.List(f)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, h.scrub("list dead letters: "+err.Error()))
		return
	}
	out := LetterList{Letters: []LetterInfo{}, Dir: h.opt.LettersAt}
	for i := len(letters) - 1; i >= 0; i-- { // newest first
		l := letters[i]
		if change != "" && l.ChangeID != change {
			continue
		}
		out.Total++
		if len(out.Letters) < maxListed {
			out.Letters = append(out.Letters, h.letterInfo(l))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// LetterDetail is the answer of GET api/deadletters/{id}.
type LetterDetail struct {
	LetterInfo
	AttemptLog []deadletter.Attempt `json:"attempt_log"`
	// Change is the change as it will be delivered again, its value left out unless
	// log.payloads is on.
	Change      json.RawMessage `json:"change"`
	ValueHidden bool            `json:"value_hidden"`
	Note        string          `json:"note,omitempty"`
}

func (h *Handler) apiDeadLetter(w http.ResponseWriter, r *http.Request) {
	if h.opt.DeadLetters == nil {
		writeJSONError(w, http.StatusNotFound, "no dead-letter directory")
		return
	}
	l, err := h.opt.DeadLetters.Get(r.PathValue("id"))
	if err != nil {
		writeJSONError(w, letterStatus(err), h.scrub(err.Error()))
		return
	}
	d := LetterDetail{LetterInfo: h.letterInfo(l), AttemptLog: l.Attempts, Change: l.Change}
	if d.AttemptLog == nil {
		d.AttemptLog = []deadletter.Attempt{}
	}
	for i := range d.AttemptLog {
		d.AttemptLog[i].Error = h.scrub(d.AttemptLog[i].Error)
	}
	if !h.setup.Load().Payloads {
		d.Change, d.ValueHidden, d.Note = withoutValue(l.Change), true, hiddenNote
	}
	writeJSON(w, http.StatusOK, d)
}

// letterStatus maps an error of reading a dead letter to a status.
func letterStatus(err error) int {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return http.StatusNotFound
	case errors.Is(err, deadletter.ErrInvalidID):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// withoutValue drops the value of a change envelope.
func withoutValue(change json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(change, &m) != nil {
		return json.RawMessage(`{}`)
	}
	delete(m, "value")
	b, _ := json.Marshal(m)
	return b
}

// ReplayRequest is the body of POST api/deadletters/replay: the letters to replay, by id,
// or every letter matching a filter when All is set.
type ReplayRequest struct {
	IDs  []string `json:"ids"`
	All  bool     `json:"all"`
	Sink string   `json:"sink"`
	Rule string   `json:"rule"`
}

// ReplayResult is the answer of POST api/deadletters/replay.
type ReplayResult struct {
	Queued   int    `json:"queued"`
	Replayed int    `json:"replayed"`
	Error    string `json:"error,omitempty"`
}

func (h *Handler) apiReplay(w http.ResponseWriter, r *http.Request) {
	dl := h.opt.DeadLetters
	if dl == nil || h.opt.Replay == nil {
		writeJSONError(w, http.StatusNotFound, "replay is not available")
		return
	}
	var req ReplayRequest
	if !readJSON(w, r, 1<<20, &req) {
		return
	}
	ids := req.IDs
	switch {
	case req.All:
		letters, err := dl.List(deadletter.Filter{Sink: req.Sink, Rule: req.Rule})
		if err != nil {
			writeJSONError(w, http.StatusInternalServerError, h.scrub("list dead letters: "+err.Error()))
			return
		}
		ids = ids[:0]
		for _, l := range letters {
			ids = append(ids, l.ID)
		}
	case len(ids) == 0:
		writeJSONError(w, http.StatusBadRequest, `name the letters to replay in "ids", or set "all": true`)
		return
	}
	for _, id := range ids {
		if _, err := dl.Get(id); err != nil {
			writeJSONError(w, letterStatus(err), h.scrub(err.Error()))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	n, err := h.opt.Replay(ctx, ids)
	res := ReplayResult{Queued: len(ids), Replayed: n}
	if err != nil {
		res.Error = h.scrub(err.Error())
	}
	h.log.Info("dead letters replayed from the console", "queued", len(ids), "replayed", n)
	writeJSON(w, http.StatusOK, res)
}

func readJSON(w http.ResponseWriter, r *http.Request, max int64, v any) bool {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeJSONError(w, http.StatusUnsupportedMediaType, "send Content-Type: application/json")
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, max))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeJSONError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", max))
			return false
		}
		writeJSONError(w, http.StatusBadRequest, "read body: "+err.Error())
		return false
	}
	return true
}
