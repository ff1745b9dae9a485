package webhook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/hubrelay/hubrelay/relay"
)

// TestDo_FailuresKeepTheConnection: deliveries answered 503 (a sink that is down) and retried
// in process reuse one keep-alive connection; a failed call does not close the client's idle
// connections (go-retryablehttp did, so every delivery during an outage dialled anew).
func TestDo_FailuresKeepTheConnection(t *testing.T) {
	var conns, reqs atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c, err := New(Config{Name: "down", URL: srv.URL, Retries: 1, MinBackoff: 1, MaxBackoff: 1})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		err := c.Do(context.Background(), nil, []byte(`{"x":1}`))
		se, ok := errors.AsType[*relay.StatusError](err)
		if !ok || se.Status != http.StatusServiceUnavailable || se.Perm {
			t.Fatalf("Do = %v, want a temporary 503 StatusError", err)
		}
		if want := "down: POST " + c.Redacted() + ": status 503 after 2 attempts"; se.Msg != want {
			t.Fatalf("message %q, want %q", se.Msg, want)
		}
	}
	if n := reqs.Load(); n != 20 {
		t.Errorf("%d requests, want 20 (10 calls, 2 attempts each)", n)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 20 sequential requests, want 1 (kept alive across failures)", n)
	}
}
