package graph_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/graph"
	"github.com/hubrelay/hubrelay/graph/graphtest"
)

const (
	appID  = "1234567890"
	secret = "app-secret-9f8e7d"
	verify = "verify-token-5c4b"
)

// callback answers Meta's verification GET like the relay does.
func callback(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("hub.mode") != "subscribe" || q.Get("hub.verify_token") != verify {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		fmt.Fprint(w, q.Get("hub.challenge"))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newClient(t *testing.T, base string, logs *bytes.Buffer) *graph.Client {
	t.Helper()
	c, err := graph.New(graph.Options{BaseURL: base, Version: "v23.0", MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClient_SubscribeAndList(t *testing.T) {
	g := graphtest.NewServer("v23.0")
	defer g.Close()
	g.AddApp(appID, "Shop", secret)
	g.AllowInsecureCallbacks()
	cb := callback(t)
	var logs bytes.Buffer
	c := newClient(t, g.URL, &logs)
	tok := graph.AppToken(appID, secret)
	ctx := context.Background()
	sub := graph.Subscribe{Object: "page", CallbackURL: cb.URL + "/webhooks", Fields: []string{"feed"}, IncludeValues: true, VerifyToken: verify}
	if err := c.Subscribe(ctx, tok, appID, sub); err != nil {
		t.Fatal(err)
	}
	sub.Fields = []string{"photos"}
	if err := c.Subscribe(ctx, tok, appID, sub); err != nil {
		t.Fatal(err)
	}
	subs, err := c.Subscriptions(ctx, tok, appID)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 1 || len(subs[0].Fields) != 2 || subs[0].Fields[1] != (graph.Field{Name: "photos", Version: "v23.0"}) || !subs[0].Active {
		t.Fatalf("subscriptions = %+v", subs)
	}
	if err := c.Unsubscribe(ctx, tok, appID, "page", nil); err != nil {
		t.Fatal(err)
	}
	if subs, _ := c.Subscriptions(ctx, tok, appID); len(subs) != 0 {
		t.Fatalf("after unsubscribe: %+v", subs)
	}
	for _, r := range g.Requests() {
		if r.TokenFrom != "header" || strings.Contains(r.Query, secret) {
			t.Errorf("%s %s: token from %q, query %q", r.Method, r.Path, r.TokenFrom, r.Query)
		}
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), verify) {
		t.Errorf("logs hold a secret:\n%s", logs.String())
	}
}

func TestClient_Errors(t *testing.T) {
	g := graphtest.NewServer("v23.0")
	defer g.Close()
	g.AddApp(appID, "Shop", secret)
	g.AllowInsecureCallbacks()
	cb := callback(t)
	ctx := context.Background()
	sub := graph.Subscribe{Object: "page", CallbackURL: cb.URL + "/webhooks", Fields: []string{"feed"}, VerifyToken: verify}
	tests := []struct {
		name      string
		fail      *graphtest.Failure
		tok       graph.Token
		sub       graph.Subscribe
		code      int
		attempts  int
		retryable bool
	}{
		{name: "invalid token", tok: graph.AppToken(appID, "wrong-secret-1234"), sub: sub, code: 190, attempts: 1},
		{name: "callback refuses", tok: graph.AppToken(appID, secret), sub: graph.Subscribe{Object: "page", CallbackURL: cb.URL, Fields: []string{"feed"}, VerifyToken: "other-token"}, code: 2200, attempts: 1},
		{name: "permission", fail: &graphtest.Failure{Code: 10, Status: 403, Message: "(#10) Application does not have permission for this action"}, tok: graph.AppToken(appID, secret), sub: sub, code: 10, attempts: 1},
		{name: "rate limit kept up", fail: &graphtest.Failure{Code: 17, Times: 5, Message: "(#17) User request limit reached"}, tok: graph.AppToken(appID, secret), sub: sub, code: 17, attempts: 3, retryable: true},
		{name: "5xx kept up", fail: &graphtest.Failure{Status: 503, Code: 1, Times: 5, Message: "An unknown error occurred"}, tok: graph.AppToken(appID, secret), sub: sub, code: 1, attempts: 3, retryable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.fail != nil {
				g.Fail(*tt.fail)
			}
			var logs bytes.Buffer
			err := newClient(t, g.URL, &logs).Subscribe(ctx, tt.tok, appID, tt.sub)
			var ge *graph.Error
			if !errors.As(err, &ge) {
				t.Fatalf("err = %v, want *graph.Error", err)
			}
			if ge.Code != tt.code || ge.Attempts != tt.attempts || ge.Retryable() != tt.retryable || ge.FBTraceID == "" || ge.Type != "OAuthException" {
				t.Errorf("err = %+v", ge)
			}
			for _, s := range []string{secret, "wrong-secret-1234", verify, "other-token"} {
				if strings.Contains(err.Error(), s) || strings.Contains(logs.String(), s) {
					t.Errorf("error or log holds %q: %v\n%s", s, err, logs.String())
				}
			}
		})
	}
}

// TestClient_ScrubsEchoedSecrets checks that a token Meta quotes back never reaches an error.
func TestClient_ScrubsEchoedSecrets(t *testing.T) {
	tok := graph.UserToken("EAAsystemusertoken42", secret)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":{"message":"Malformed access token %s (proof %s)","type":"OAuthException","code":190,"error_subcode":463,"fbtrace_id":"Abc"}}`,
			auth, r.URL.Query().Get("appsecret_proof"))
	}))
	defer srv.Close()
	var logs bytes.Buffer
	_, err := newClient(t, srv.URL, &logs).Subscriptions(context.Background(), tok, appID)
	var ge *graph.Error
	if !errors.As(err, &ge) || ge.Subcode != 463 {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "EAAsystemusertoken42") || !strings.Contains(err.Error(), "REDACTED") {
		t.Errorf("error = %v", err)
	}
	if strings.Contains(err.Error(), "proof ") && !strings.Contains(err.Error(), "proof REDACTED") {
		t.Errorf("appsecret_proof not scrubbed: %v", err)
	}
	if got := fmt.Sprintf("%v %s %#v %q", tok, tok, tok, tok); strings.Contains(got, "EAA") {
		t.Errorf("Token formats as %s", got)
	}
}

// TestClient_AnswersGraphShapes checks {"success":"true"}, a non-JSON 502 retried then
// reported, and a context cancelled while waiting to retry.
func TestClient_AnswersGraphShapes(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch r.URL.Path {
		case "/v23.0/1/subscriptions":
			fmt.Fprint(w, `{"success":"true"}`)
		case "/v23.0/2/subscriptions":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprint(w, "<html>bad gateway</html>")
		case "/v23.0/3/subscriptions":
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":{"message":"(#4) Application request limit reached","type":"OAuthException","code":4,"fbtrace_id":"T%d"}}`, n)
		}
	}))
	defer srv.Close()
	var logs bytes.Buffer
	c := newClient(t, srv.URL, &logs)
	tok := graph.AppToken("1", secret)
	if err := c.Unsubscribe(context.Background(), tok, "1", "page", nil); err != nil {
		t.Errorf(`{"success":"true"}: %v`, err)
	}
	err := c.Unsubscribe(context.Background(), tok, "2", "page", nil)
	var ge *graph.Error
	if !errors.As(err, &ge) || ge.Status != 502 || ge.Attempts != 3 || !strings.Contains(err.Error(), "not a Graph API error (text/html)") {
		t.Errorf("502: %v", err)
	}
	slow, err := graph.New(graph.Options{BaseURL: srv.URL, MaxAttempts: 5, MinBackoff: time.Hour, MaxBackoff: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	before := calls.Load()
	go func() { done <- slow.Unsubscribe(ctx, tok, "3", "page", nil) }()
	for calls.Load() == before {
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the call did not stop when its context was cancelled")
	}
}

// TestClient_Paging follows Graph's "after" cursor, never the "next" URL (it holds the token).
func TestClient_Paging(t *testing.T) {
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.String())
		if r.URL.Query().Get("after") == "" {
			fmt.Fprintf(w, `{"data":[{"object":"page","callback_url":"https://x/webhooks","active":true,"fields":[{"name":"feed","version":"v23.0"}]}],
				"paging":{"cursors":{"before":"QVFIUmx","after":"QVFIUm2"},"next":"http://%s/v23.0/1/subscriptions?access_token=1%%7Csecret&after=QVFIUm2"}}`, r.Host)
			return
		}
		fmt.Fprint(w, `{"data":[{"object":"user","callback_url":"https://x/webhooks","active":true,"fields":[]}],"paging":{"cursors":{"before":"QVFIUm2","after":"QVFIUm3"}}}`)
	}))
	defer srv.Close()
	var logs bytes.Buffer
	subs, err := newClient(t, srv.URL, &logs).Subscriptions(context.Background(), graph.AppToken("1", secret), "1")
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 2 || subs[1].Object != "user" {
		t.Fatalf("subscriptions = %+v", subs)
	}
	if len(paths) != 2 || paths[1] != "/v23.0/1/subscriptions?after=QVFIUm2" {
		t.Errorf("requests = %v", paths)
	}
}

// TestClient_Timeout gives up on a Graph that never answers, after every attempt timed out.
func TestClient_Timeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	c, err := graph.New(graph.Options{BaseURL: srv.URL, Timeout: 20 * time.Millisecond, MaxAttempts: 2, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Unsubscribe(context.Background(), graph.AppToken("1", secret), "1", "page", nil)
	var ge *graph.Error
	if !errors.As(err, &ge) || ge.Status != 0 || ge.Attempts != 2 || !strings.Contains(err.Error(), "Timeout") {
		t.Errorf("err = %v", err)
	}
	if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), srv.URL) {
		t.Errorf("error names the secret or the URL: %v", err)
	}
}
