package main

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/console"
	"github.com/hubrelay/hubrelay/relay"
)

// The admin listener's API: what `hubrelay sinks` uses while the relay runs.
//
//	GET  /api/sinks                 every configured sink (and paused leftovers): state and backlog
//	POST /api/sinks/{name}/pause    pause a sink; body {"by": "who"} (optional)
//	POST /api/sinks/{name}/resume   resume it
//
// It is served on admin.listen only, never on the webhook listener. With admin.token set,
// every request needs it as a bearer token (or the basic-auth password, as the console takes
// it). Without one, only clients on a loopback address reaching a loopback Host are served.
// Browsers are refused either way (a request with an Origin or a cross-site Sec-Fetch-Site),
// and a POST must be application/json: a page in a browser cannot pause a sink, whatever it
// does. The console has its own routes under /console/api/, with its CSRF defence.

// sinkView is one sink in the answers of the API (and `hubrelay sinks list -json`).
type sinkView struct {
	Name       string    `json:"name"`
	Configured bool      `json:"configured"`
	Paused     bool      `json:"paused"`
	Since      time.Time `json:"since,omitzero"` // of the last pause or resume
	By         string    `json:"by,omitempty"`
	Ready      int       `json:"ready"`
	Scheduled  int       `json:"scheduled"`
	// OldestWaiting is when the oldest pending delivery was accepted.
	OldestWaiting time.Time `json:"oldest_waiting,omitzero"`
}

// sinkChange is the answer to a pause or resume.
type sinkChange struct {
	sinkView
	// Changed is false when the sink already was in the state asked for.
	Changed bool `json:"changed"`
}

// sinkViews joins the configured names, the stored states and the backlog, by name.
func sinkViews(configured []string, states map[string]relay.SinkState, stats map[string]relay.SinkStats) []sinkView {
	var out []sinkView
	seen := map[string]bool{}
	add := func(name string, conf bool) {
		if seen[name] {
			return
		}
		seen[name] = true
		st, s := states[name], stats[name]
		out = append(out, sinkView{Name: name, Configured: conf, Paused: st.Paused, Since: st.Since, By: st.By,
			Ready: s.Ready, Scheduled: s.Scheduled, OldestWaiting: s.Oldest})
	}
	for _, n := range configured {
		add(n, true)
	}
	for n, st := range states {
		if st.Paused || stats[n].Ready+stats[n].Scheduled > 0 {
			add(n, false)
		}
	}
	slices.SortFunc(out, func(a, b sinkView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// sinkAPI serves the API over the running engine.
type sinkAPI struct {
	engine *relay.Engine
	stats  func() (map[string]relay.SinkStats, error)
	names  func() []string // the configured sinks
	token  string
	log    *slog.Logger
	// sample thins the refusal lines, one per reason per second with the count of the others.
	sample *relay.LogSampler
}

func (a *sinkAPI) mount(mux *http.ServeMux) {
	mux.Handle("GET /api/sinks", a.guard(a.list))
	mux.Handle("POST /api/sinks/{name}/{action}", a.guard(a.change))
}

// guard checks the credentials and refuses browsers before h runs.
func (a *sinkAPI) guard(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if why := a.refusal(r); why != "" {
			status := http.StatusForbidden
			if strings.HasPrefix(why, "unauthorized") {
				status = http.StatusUnauthorized
				w.Header().Set("WWW-Authenticate", `Bearer realm="hubrelay admin"`)
			}
			a.sample.Log(a.log, slog.LevelWarn, why, "admin api request refused", "reason", why, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			apiError(w, status, why)
			return
		}
		h(w, r)
	})
}

// refusal says why r may not use the API, "" when it may.
func (a *sinkAPI) refusal(r *http.Request) string {
	if r.Header.Get("Origin") != "" {
		return "browsers may not use the admin api (the console is at " + console.Prefix + ")"
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "none" {
		return "browsers may not use the admin api (the console is at " + console.Prefix + ")"
	}
	if r.Method == http.MethodPost {
		if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) != "application/json" {
			return "a POST must be Content-Type: application/json"
		}
	}
	if a.token != "" {
		auth := r.Header.Get("Authorization")
		if t, ok := strings.CutPrefix(auth, "Bearer "); ok && tokenEqual(t, a.token) {
			return ""
		}
		if _, pass, ok := r.BasicAuth(); ok && tokenEqual(pass, a.token) {
			return ""
		}
		return "unauthorized: send admin.token as a bearer token"
	}
	if !loopbackAddr(r.RemoteAddr) || !loopbackHostHeader(r.Host) {
		return "admin.token is not set: the admin api serves loopback clients only"
	}
	return ""
}

func (a *sinkAPI) list(w http.ResponseWriter, _ *http.Request) {
	stats, err := a.stats()
	if err != nil {
		a.log.Warn("admin api: read stats", "err", err)
	}
	apiJSON(w, http.StatusOK, map[string]any{"sinks": nonNilViews(sinkViews(a.names(), a.engine.SinkStates(), stats))})
}

func (a *sinkAPI) change(w http.ResponseWriter, r *http.Request) {
	name, action := r.PathValue("name"), r.PathValue("action")
	if action != "pause" && action != "resume" {
		apiError(w, http.StatusNotFound, fmt.Sprintf("unknown action %q: use pause or resume", action))
		return
	}
	states := a.engine.SinkStates()
	if !slices.Contains(a.names(), name) && !states[name].Paused {
		msg := fmt.Sprintf("no sink named %q", name)
		if s := suggest(name, a.names()); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		apiError(w, http.StatusNotFound, msg)
		return
	}
	var body struct {
		By string `json:"by"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&body); err != nil && err != io.EOF {
		apiError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	by := "admin api from " + r.RemoteAddr
	if b := strings.TrimSpace(body.By); b != "" {
		by = clean(b) + " via " + by
	}
	st, changed, err := a.engine.SetPaused(name, action == "pause", by)
	if err != nil {
		a.log.Error("admin api: "+action+" sink", "sink", name, "err", err)
		apiError(w, http.StatusInternalServerError, action+" sink: storage failed (see the relay's log)")
		return
	}
	stats, _ := a.stats()
	v := sinkViews([]string{name}, map[string]relay.SinkState{name: st}, stats)[0]
	v.Configured = slices.Contains(a.names(), name)
	apiJSON(w, http.StatusOK, sinkChange{sinkView: v, Changed: changed})
}

func nonNilViews(v []sinkView) []sinkView {
	if v == nil {
		return []sinkView{}
	}
	return v
}

// clean keeps printable characters of a client's "by", at most 128 bytes.
func clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 128 {
		s = s[:128]
	}
	return s
}

func apiJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, msg string) {
	apiJSON(w, status, map[string]string{"error": msg})
}

// tokenEqual compares in constant time, after hashing so the length does not leak either.
func tokenEqual(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// loopbackAddr reports whether a host:port is on a loopback address.
func loopbackAddr(hostport string) bool {
	ap, err := netip.ParseAddrPort(hostport)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// loopbackHostHeader reports whether a Host header names localhost or a loopback address (a
// name another site resolves to 127.0.0.1, DNS rebinding, is not).
func loopbackHostHeader(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
