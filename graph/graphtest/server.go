package graphtest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hubrelay/hubrelay/graph"
)

// PermWABA is the permission a system-user token needs to manage WhatsApp Business Accounts.
const PermWABA = "whatsapp_business_management"

// Request is one request the stand-in received, as a test may inspect it.
type Request struct {
	Method string
	Path   string
	// Query is the raw query string: a token must never be in it.
	Query string
	// Form holds the POST form body's parameters.
	Form url.Values
	// TokenFrom says where the access token came: "header", "form", "query" or "".
	TokenFrom string
}

// Failure is an error answer queued for the next matching requests.
type Failure struct {
	// Method and PathSuffix select the requests (empty = any).
	Method, PathSuffix string
	// Times is how many requests get this answer (0 = 1).
	Times int
	// Status is the HTTP status, 400 when 0.
	Status int
	// Code, Subcode, Type and Message are Graph's error fields; Type defaults to
	// OAuthException.
	Code, Subcode int
	Type, Message string
	// Transient sets is_transient.
	Transient bool
	// RegainMinutes, when set, sends X-Business-Use-Case-Usage with this
	// estimated_time_to_regain_access.
	RegainMinutes int
}

// Server is a running stand-in. Its methods are safe for concurrent use.
type Server struct {
	// URL is the root to use as graph.Options.BaseURL.
	URL string
	// Version is the API version paths must start with.
	Version string

	srv    *httptest.Server
	verify *http.Client

	mu         sync.Mutex
	apps       map[string]*app      // by app ID
	tokens     map[string]userTok   // system-user tokens
	wabas      map[string][]wabaSub // by WABA ID: subscribed apps
	failures   []Failure
	requests   []Request
	traces     int
	insecureOK bool
}

type app struct {
	id, name, secret string
	subs             []graph.Subscription
}

type userTok struct {
	appID string
	perms []string
}

type wabaSub struct {
	appID, override string
}

// NewServer starts a stand-in for version (like "v23.0"); close it with Close.
func NewServer(version string) *Server {
	s := &Server{
		Version: version,
		verify: &http.Client{
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		apps:   map[string]*app{},
		tokens: map[string]userTok{},
		wabas:  map[string][]wabaSub{},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	return s
}

// Close stops the stand-in.
func (s *Server) Close() { s.srv.Close() }

// AllowInsecureCallbacks makes the stand-in accept http:// callbacks (Graph requires https).
func (s *Server) AllowInsecureCallbacks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.insecureOK = true
}

// AddApp registers an app, whose app token is id + "|" + secret.
func (s *Server) AddApp(id, name, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps[id] = &app{id: id, name: name, secret: secret}
}

// AddUserToken registers a system-user token of the app with the given permissions.
func (s *Server) AddUserToken(token, appID string, perms ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = userTok{appID: appID, perms: perms}
}

// AddWABA registers a WhatsApp Business Account.
func (s *Server) AddWABA(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.wabas[id]; !ok {
		s.wabas[id] = []wabaSub{}
	}
}

// SetSubscription stores a subscription as if it had been made, replacing the app's
// subscription of the same object.
func (s *Server) SetSubscription(appID string, sub graph.Subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[appID]
	a.subs = slices.DeleteFunc(a.subs, func(x graph.Subscription) bool { return x.Object == sub.Object })
	a.subs = append(a.subs, sub)
}

// Subscriptions returns the app's subscriptions.
func (s *Server) Subscriptions(appID string) []graph.Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.apps[appID].subs)
}

// WABAApps returns the IDs of the apps subscribed to a WhatsApp Business Account, each
// followed by "|" and its override callback when it has one.
func (s *Server) WABAApps(wabaID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, w := range s.wabas[wabaID] {
		if w.override != "" {
			out = append(out, w.appID+"|"+w.override)
		} else {
			out = append(out, w.appID)
		}
	}
	return out
}

// Fail queues an error answer.
func (s *Server) Fail(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Times == 0 {
		f.Times = 1
	}
	s.failures = append(s.failures, f)
}

// Requests returns every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// graphErr is an error answer.
type graphErr struct {
	status        int
	code, subcode int
	typ, msg      string
	transient     bool
}

func (s *Server) writeError(w http.ResponseWriter, e graphErr) {
	s.mu.Lock()
	s.traces++
	trace := fmt.Sprintf("AtRaCe%04d", s.traces)
	s.mu.Unlock()
	body := map[string]any{"message": e.msg, "type": e.typ, "code": e.code, "fbtrace_id": trace}
	if e.typ == "" {
		body["type"] = "OAuthException"
	}
	if e.subcode != 0 {
		body["error_subcode"] = e.subcode
	}
	if e.transient {
		body["is_transient"] = true
	}
	status := e.status
	if status == 0 {
		status = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("WWW-Authenticate", `OAuth "Facebook Platform" "invalid_request"`)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": body})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	json.NewEncoder(w).Encode(v)
}

// caller is who a token belongs to.
type caller struct {
	appID   string
	appTok  bool
	perms   []string
	present bool
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if r.Method == http.MethodPost {
		if err := r.ParseForm(); err != nil {
			s.writeError(w, graphErr{code: 100, msg: "(#100) Invalid form body"})
			return
		}
	}
	params := url.Values{}
	for k, v := range r.URL.Query() {
		params[k] = v
	}
	for k, v := range r.PostForm {
		params[k] = v
	}
	rec := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Form: r.PostForm}
	token := ""
	if h := r.Header.Get("Authorization"); h != "" {
		if t, ok := strings.CutPrefix(h, "Bearer "); ok {
			token, rec.TokenFrom = t, "header"
		} else if t, ok := strings.CutPrefix(h, "OAuth "); ok {
			token, rec.TokenFrom = t, "header"
		}
	}
	if token == "" {
		if t := r.PostForm.Get("access_token"); t != "" {
			token, rec.TokenFrom = t, "form"
		} else if t := r.URL.Query().Get("access_token"); t != "" {
			token, rec.TokenFrom = t, "query"
		}
	}
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	var fail *Failure
	for i := range s.failures {
		f := &s.failures[i]
		if (f.Method == "" || f.Method == r.Method) && strings.HasSuffix(r.URL.Path, f.PathSuffix) {
			cp := *f
			fail = &cp
			if f.Times--; f.Times <= 0 {
				s.failures = slices.Delete(s.failures, i, i+1)
			}
			break
		}
	}
	s.mu.Unlock()
	if fail != nil {
		if fail.RegainMinutes > 0 {
			w.Header().Set("X-Business-Use-Case-Usage", fmt.Sprintf(`{"102290129340398":[{"type":"whatsapp_business_management","call_count":100,"total_cputime":12,"total_time":40,"estimated_time_to_regain_access":%d}]}`, fail.RegainMinutes))
		}
		s.writeError(w, graphErr{status: fail.Status, code: fail.Code, subcode: fail.Subcode, typ: fail.Type, msg: fail.Message, transient: fail.Transient})
		return
	}

	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != s.Version {
		s.writeError(w, graphErr{code: 2500, msg: "Unknown path components: " + r.URL.Path})
		return
	}
	c, gerr := s.auth(token)
	if gerr != nil {
		s.writeError(w, *gerr)
		return
	}
	id, edge := parts[1], parts[2]
	switch edge {
	case "subscriptions":
		s.appSubscriptions(w, r, c, id, params)
	case "subscribed_apps":
		s.subscribedApps(w, r, c, id, params)
	default:
		s.writeError(w, graphErr{code: 2500, msg: "Unknown path components: /" + edge})
	}
}

// auth resolves a token.
func (s *Server) auth(token string) (caller, *graphErr) {
	if token == "" {
		return caller{}, &graphErr{code: 2500, msg: "An active access token must be used to query information about the current user."}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, secret, ok := strings.Cut(token, "|"); ok {
		a, known := s.apps[id]
		if !known || a.secret != secret {
			return caller{}, &graphErr{code: 190, msg: "Invalid OAuth access token signature."}
		}
		return caller{appID: id, appTok: true, present: true}, nil
	}
	t, ok := s.tokens[token]
	if !ok {
		return caller{}, &graphErr{code: 190, msg: "Invalid OAuth access token - Cannot parse access token"}
	}
	return caller{appID: t.appID, perms: t.perms, present: true}, nil
}

func (s *Server) appSubscriptions(w http.ResponseWriter, r *http.Request, c caller, appID string, p url.Values) {
	s.mu.Lock()
	a, ok := s.apps[appID]
	s.mu.Unlock()
	if !ok {
		s.writeError(w, graphErr{code: 100, subcode: 33, typ: "GraphMethodException",
			msg: fmt.Sprintf("Unsupported %s request. Object with ID '%s' does not exist, cannot be loaded due to missing permissions, or does not support this operation.", strings.ToLower(r.Method), appID)})
		return
	}
	if !c.appTok {
		s.writeError(w, graphErr{code: 15, msg: "(#15) This method must be called with an app access_token."})
		return
	}
	if c.appID != appID {
		s.writeError(w, graphErr{code: 10, msg: "(#10) Application does not have permission for this action"})
		return
	}
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		data := slices.Clone(a.subs)
		s.mu.Unlock()
		if data == nil {
			data = []graph.Subscription{}
		}
		writeJSON(w, map[string]any{"data": data})
	case http.MethodPost:
		object, callback, token := p.Get("object"), p.Get("callback_url"), p.Get("verify_token")
		fields := splitFields(p.Get("fields"))
		switch {
		case object == "":
			s.writeError(w, graphErr{code: 100, msg: "(#100) The parameter object is required"})
			return
		case len(fields) == 0:
			s.writeError(w, graphErr{code: 100, msg: "(#100) The parameter fields is required"})
			return
		case callback == "":
			s.writeError(w, graphErr{code: 100, msg: "(#100) The parameter callback_url is required"})
			return
		}
		if gerr := s.verifyCallback(r.Context(), callback, token); gerr != nil {
			s.writeError(w, *gerr)
			return
		}
		s.mu.Lock()
		sub := graph.Subscription{Object: object, CallbackURL: callback, Active: true}
		if i := slices.IndexFunc(a.subs, func(x graph.Subscription) bool { return x.Object == object }); i >= 0 {
			sub.Fields = a.subs[i].Fields
			a.subs = slices.Delete(a.subs, i, i+1)
		}
		for _, f := range fields {
			if !slices.ContainsFunc(sub.Fields, func(x graph.Field) bool { return x.Name == f }) {
				sub.Fields = append(sub.Fields, graph.Field{Name: f, Version: s.Version})
			}
		}
		a.subs = append(a.subs, sub)
		s.mu.Unlock()
		writeJSON(w, map[string]any{"success": true})
	case http.MethodDelete:
		object := p.Get("object")
		fields := splitFields(p.Get("fields"))
		s.mu.Lock()
		for i := 0; i < len(a.subs); i++ {
			sub := &a.subs[i]
			if object != "" && sub.Object != object {
				continue
			}
			if len(fields) == 0 {
				a.subs = slices.Delete(a.subs, i, i+1)
				i--
				continue
			}
			sub.Fields = slices.DeleteFunc(slices.Clone(sub.Fields), func(f graph.Field) bool { return slices.Contains(fields, f.Name) })
			if len(sub.Fields) == 0 {
				a.subs = slices.Delete(a.subs, i, i+1)
				i--
			}
		}
		s.mu.Unlock()
		writeJSON(w, map[string]any{"success": true})
	default:
		s.writeError(w, graphErr{code: 100, msg: "Unsupported method"})
	}
}

func (s *Server) subscribedApps(w http.ResponseWriter, r *http.Request, c caller, wabaID string, p url.Values) {
	s.mu.Lock()
	_, ok := s.wabas[wabaID]
	s.mu.Unlock()
	if !ok {
		s.writeError(w, graphErr{code: 100, subcode: 33, typ: "GraphMethodException",
			msg: fmt.Sprintf("Unsupported %s request. Object with ID '%s' does not exist, cannot be loaded due to missing permissions, or does not support this operation.", strings.ToLower(r.Method), wabaID)})
		return
	}
	if c.appTok || !slices.Contains(c.perms, PermWABA) {
		s.writeError(w, graphErr{code: 200, msg: "(#200) Permissions error"})
		return
	}
	switch r.Method {
	case http.MethodGet:
		s.mu.Lock()
		var data []map[string]any
		for _, ws := range s.wabas[wabaID] {
			d := map[string]any{"whatsapp_business_api_data": map[string]any{
				"id": ws.appID, "name": s.apps[ws.appID].name, "link": "https://www.facebook.com/games/?app_id=" + ws.appID}}
			if ws.override != "" {
				d["override_callback_uri"] = ws.override
			}
			data = append(data, d)
		}
		s.mu.Unlock()
		if data == nil {
			data = []map[string]any{}
		}
		writeJSON(w, map[string]any{"data": data})
	case http.MethodPost:
		override := p.Get("override_callback_uri")
		if override != "" {
			if gerr := s.verifyCallback(r.Context(), override, p.Get("verify_token")); gerr != nil {
				s.writeError(w, *gerr)
				return
			}
		}
		s.mu.Lock()
		subs := slices.DeleteFunc(s.wabas[wabaID], func(x wabaSub) bool { return x.appID == c.appID })
		s.wabas[wabaID] = append(subs, wabaSub{appID: c.appID, override: override})
		s.mu.Unlock()
		writeJSON(w, map[string]any{"success": true})
	case http.MethodDelete:
		s.mu.Lock()
		s.wabas[wabaID] = slices.DeleteFunc(s.wabas[wabaID], func(x wabaSub) bool { return x.appID == c.appID })
		s.mu.Unlock()
		writeJSON(w, map[string]any{"success": true})
	default:
		s.writeError(w, graphErr{code: 100, msg: "Unsupported method"})
	}
}

// verifyCallback sends the verification GET Meta sends and checks the challenge comes back.
func (s *Server) verifyCallback(ctx context.Context, callback, token string) *graphErr {
	u, err := url.Parse(callback)
	s.mu.Lock()
	insecureOK := s.insecureOK
	s.mu.Unlock()
	if err != nil || u.Host == "" || !(u.Scheme == "https" || (u.Scheme == "http" && insecureOK)) {
		return &graphErr{code: 100, msg: "(#100) Param callback_url must be a valid https URL"}
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<31))
	challenge := n.String()
	q := u.Query()
	q.Set("hub.mode", "subscribe")
	q.Set("hub.challenge", challenge)
	q.Set("hub.verify_token", token)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return &graphErr{code: 100, msg: "(#100) Param callback_url must be a valid https URL"}
	}
	req.Header.Set("User-Agent", "facebookplatform/1.0 (+http://developers.facebook.com)")
	resp, err := s.verify.Do(req)
	if err != nil {
		return &graphErr{code: 2200, msg: "(#2200) Callback verification failed with the following errors: curl_errno = 7; curl_error = Couldn't connect to server; HTTP Status Code = 0; HTTP Message = Unknown Response Code"}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return &graphErr{code: 2200, msg: fmt.Sprintf("(#2200) Callback verification failed with the following errors: HTTP Status Code = %d; HTTP Message = %s", resp.StatusCode, http.StatusText(resp.StatusCode))}
	}
	if string(body) != challenge {
		return &graphErr{code: 2200, msg: "(#2200) Callback verification failed with the following errors: HTTP Status Code = 200; HTTP Message = OK; The URL couldn't be validated. Response does not match challenge"}
	}
	return nil
}

func splitFields(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
