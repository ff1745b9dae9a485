package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// Prefix is the path the console is served under.
const Prefix = "/console/"

//go:embed web
var webFS embed.FS

// App is one configured app as the console shows it: its name and callback path, nothing
// secret.
type App struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

// Setup is the part of the configuration the console shows; it is replaced on reload.
type Setup struct {
	Apps   []App
	Sinks  []string
	Limits relay.Limits
	// Secrets are every secret value of the config (app secrets, verify tokens, sink
	// headers, Slack URLs, signing secrets). The console never shows them; it scrubs them out
	// of any error text it passes on, as a second line of defence.
	Secrets []string
	// Payloads mirrors log.payloads: change values are shown only when it is on.
	Payloads bool
}

// SinkControl pauses and resumes sinks (the delivery engine's, as the admin API's). A nil
// SinkControl hides the controls.
type SinkControl interface {
	// Paused returns the sinks paused now.
	Paused() map[string]bool
	// Pause and Resume change a sink's state durably; by says who did it and from where
	// ("console: operator from 127.0.0.1:50412"), for the relay's log and the stored state.
	Pause(ctx context.Context, sink, by string) error
	Resume(ctx context.Context, sink, by string) error
}

// Letters is what the console reads of the dead letters (a deadletter.Dir, or the Postgres
// engine's dead letters).
type Letters interface {
	List(f deadletter.Filter) ([]*deadletter.Letter, error)
	Get(id string) (*deadletter.Letter, error)
	Count(sink string) (int, error)
}

// Options configures a Handler.
type Options struct {
	// Token, when set, is required on every request (bearer or basic-auth password).
	Token string
	Feed  *Feed
	// Router is the relay's router: the route tester uses the same rules as the relay.
	Router *relay.Router
	// Stats returns the pending deliveries of every sink (the store's counters).
	Stats func() (map[string]relay.SinkStats, error)
	// DeadLetters is where the dead letters are: the directory, or the database.
	DeadLetters Letters
	// LettersAt says where DeadLetters keeps them, for the page ("" = not said).
	LettersAt string
	// Replay puts the named letters back on the delivery queue of the running relay and
	// returns how many it replayed.
	Replay func(ctx context.Context, ids []string) (int, error)
	// Sinks may be nil (no pause/resume).
	Sinks SinkControl
	Log   *slog.Logger
}

// Handler serves the console under Prefix.
type Handler struct {
	opt     Options
	setup   atomic.Pointer[Setup]
	key     []byte // signs CSRF tokens; random per process
	pages   *template.Template
	static  http.Handler
	version string // of the static files, for cache busting
	mux     *http.ServeMux
	log     *slog.Logger
}

// New returns a console Handler; call Configure before serving and on each reload.
func New(opt Options) (*Handler, error) {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{opt: opt, log: opt.Log.With("component", "console"), key: make([]byte, 32)}
	if _, err := rand.Read(h.key); err != nil {
		return nil, err
	}
	h.setup.Store(&Setup{})
	var err error
	if h.pages, err = template.New("").Funcs(template.FuncMap{"asset": h.asset}).ParseFS(webFS, "web/*.html"); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(webFS, "web/static")
	if err != nil {
		return nil, err
	}
	h.version = staticVersion()
	fileServer := http.StripPrefix(Prefix+"static/", http.FileServerFS(sub))
	h.static = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable") // names carry the version
		fileServer.ServeHTTP(w, r)
	})
	h.routes()
	return h, nil
}

// staticVersion is a short hash of the embedded static files.
func staticVersion() string {
	sum := sha256.New()
	fs.WalkDir(webFS, "web/static", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := webFS.ReadFile(p)
			sum.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(sum.Sum(nil)[:6])
}

func (h *Handler) asset(name string) string { return Prefix + "static/" + name + "?v=" + h.version }

// Configure replaces what the console shows of the configuration.
func (h *Handler) Configure(s Setup) {
	s.Secrets = append([]string(nil), s.Secrets...)
	h.setup.Store(&s)
	if h.opt.Feed != nil {
		h.opt.Feed.SetPayloads(s.Payloads)
	}
}

// ServeHTTP checks the credentials, the Host and, for state-changing requests, the CSRF
// defence, then serves the page, the static file or the API call.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	if h.opt.Token == "" && !loopbackHost(r.Host) {
		// Without a token only a loopback Host is served: a page of another site that
		// resolves its own name to 127.0.0.1 (DNS rebinding) is refused.
		http.Error(w, "console without admin.token: only reachable as localhost or a loopback address", http.StatusForbidden)
		return
	}
	bearer, ok := h.authorized(r)
	if !ok {
		hd.Set("WWW-Authenticate", `Basic realm="hubrelay console", charset="UTF-8"`)
		http.Error(w, "unauthorized: send admin.token as a bearer token or as the basic-auth password", http.StatusUnauthorized)
		return
	}
	if unsafeMethod(r.Method) && !bearer {
		if why := h.csrfProblem(r); why != "" {
			h.log.Warn("console request refused", "reason", why, "method", r.Method, "path", r.URL.Path)
			writeJSONError(w, http.StatusForbidden, "csrf: "+why)
			return
		}
	}
	h.mux.ServeHTTP(w, r)
}

func unsafeMethod(m string) bool {
	return m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions
}

// authorized checks the token; bearer reports whether it came as a bearer token (which a
// browser never adds by itself, so such a request needs no CSRF defence).
func (h *Handler) authorized(r *http.Request) (bearer, ok bool) {
	if h.opt.Token == "" {
		return false, true
	}
	auth := r.Header.Get("Authorization")
	if t, found := strings.CutPrefix(auth, "Bearer "); found {
		return true, equal(t, h.opt.Token)
	}
	if _, pass, found := r.BasicAuth(); found {
		return false, equal(pass, h.opt.Token)
	}
	return false, false
}

// equal compares in constant time, after hashing so the length does not leak either.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// sessionCookie holds a random per-browser session id; the CSRF token is bound to it.
const sessionCookie = "hubrelay_console"

// csrfHeader carries the CSRF token on state-changing requests.
const csrfHeader = "X-Console-CSRF"

// session returns the session id of r, setting a new cookie on w when r has none.
func (h *Handler) session(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(sessionCookie); err == nil && len(c.Value) == 32 {
		return c.Value
	}
	b := make([]byte, 16)
	rand.Read(b)
	id := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: Prefix, HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	return id
}

// csrfToken is the token of a session: an HMAC of its id under the process's key.
func (h *Handler) csrfToken(session string) string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte("csrf\x00" + session))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfProblem says why a state-changing request fails the CSRF defence, "" if it passes.
func (h *Handler) csrfProblem(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return "cross-site request (Sec-Fetch-Site: " + site + ")"
	}
	if o := r.Header.Get("Origin"); o != "" {
		host, found := strings.CutPrefix(o, "http://")
		if !found {
			host, found = strings.CutPrefix(o, "https://")
		}
		if !found || host != r.Host {
			return "origin is not the console's own"
		}
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil || len(c.Value) != 32 {
		return "no console session: reload the page"
	}
	if !hmac.Equal([]byte(r.Header.Get(csrfHeader)), []byte(h.csrfToken(c.Value))) {
		return "missing or wrong " + csrfHeader + " header: reload the page"
	}
	return ""
}

// loopbackHost reports whether a Host header names localhost or a loopback address.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// scrub replaces every configured secret in s.
func (h *Handler) scrub(s string) string {
	for _, sec := range h.setup.Load().Secrets {
		if len(sec) >= 4 && strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	if h.opt.Token != "" {
		s = strings.ReplaceAll(s, h.opt.Token, "[redacted]")
	}
	return s
}
