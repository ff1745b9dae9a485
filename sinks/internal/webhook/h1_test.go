package webhook

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// countingServer is an httptest server that counts the connections it accepted.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func newTestClient(t *testing.T, url string, retries int) *Client {
	t.Helper()
	c, err := New(Config{Name: "t", URL: url, Retries: retries, MinBackoff: 1, MaxBackoff: 1, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if c.h1 == nil {
		t.Fatal("a plain-http destination without a proxy does not use the direct client")
	}
	return c
}

// TestH1_IdleConnectionClosedByServer: a delivery on a keep-alive connection the server has
// closed meanwhile goes out again on a new one, without using up an attempt.
func TestH1_IdleConnectionClosedByServer(t *testing.T) {
	var reqs atomic.Int64
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if b, _ := io.ReadAll(r.Body); string(b) != `{"x":1}` {
			t.Errorf("body %q", b)
		}
		reqs.Add(1)
	})
	c := newTestClient(t, srv.URL, 0)
	for i := range 3 {
		if err := c.Do(context.Background(), nil, []byte(`{"x":1}`)); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
		srv.CloseClientConnections()
	}
	if n := reqs.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3 (one per closed one)", n)
	}
}

// TestH1_KeepAlive: sequential deliveries share one connection, whatever the answer's framing
// (length, chunked, empty, informational answers first); an answer the server closes after,
// or one too long to drain, costs a new connection.
func TestH1_KeepAlive(t *testing.T) {
	tests := []struct {
		name      string
		answer    http.HandlerFunc
		wantConns int64
	}{
		{"content length", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, 1},
		{"no content", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }, 1},
		{"chunked", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "part one ")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part two")
		}, 1},
		{"early hints first", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</x>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(http.StatusOK)
		}, 1},
		{"connection close", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Connection", "close") }, 4},
		{"body beyond the drain limit", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, strings.Repeat("x", 2*drainLimit))
		}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, conns := countingServer(t, tt.answer)
			c := newTestClient(t, srv.URL, 0)
			for i := range 4 {
				if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
					t.Fatalf("delivery %d: %v", i, err)
				}
			}
			if n := conns.Load(); n != tt.wantConns {
				t.Errorf("%d connections for 4 deliveries, want %d", n, tt.wantConns)
			}
		})
	}
}

// TestH1_CloseDelimited: an answer without length or chunking ends with the connection, which
// is not reused.
func TestH1_CloseDelimited(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int64
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer nc.Close()
				req, err := http.ReadRequest(bufio.NewReader(nc))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(nc, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
			}()
		}
	}()
	c := newTestClient(t, "http://"+ln.Addr().String()+"/hook", 0)
	for i := range 3 {
		if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

// TestH1_Request: the request carries the method, path and query, Host, the caller's header
// and a Content-Length; a header value that would break the framing is refused before
// anything is sent.
func TestH1_Request(t *testing.T) {
	var got atomic.Pointer[http.Request]
	var body atomic.Value
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body.Store(string(b))
		got.Store(r)
	})
	c, err := New(Config{Name: "t", Method: http.MethodPut, URL: srv.URL + "/a/b?c=d", Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"X-Token": {"v1"}, "Host": {"example.test"}}
	if err := c.Do(context.Background(), h, []byte(`{"n":1}`)); err != nil {
		t.Fatal(err)
	}
	r := got.Load()
	if r.Method != http.MethodPut || r.URL.RequestURI() != "/a/b?c=d" || r.Host != "example.test" ||
		r.Header.Get("X-Token") != "v1" || r.ContentLength != 7 || body.Load() != `{"n":1}` {
		t.Errorf("request %s %s host %q header %v length %d body %q", r.Method, r.URL.RequestURI(), r.Host, r.Header, r.ContentLength, body.Load())
	}
	got.Store(nil)
	err = c.Do(context.Background(), http.Header{"Idempotency-Key": {"a\r\nX-Evil: 1"}}, []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "invalid header field value") {
		t.Errorf("Do with a line break in a header value = %v, want it refused", err)
	}
	if got.Load() != nil {
		t.Error("the server got the request with a line break in a header value")
	}
}

// TestH1_NotUsed: https and a caller's own client keep net/http.
func TestH1_NotUsed(t *testing.T) {
	for _, c := range []Config{
		{Name: "tls", URL: "https://example.test/hook"},
		{Name: "own", URL: "http://127.0.0.1:1/hook", Client: &http.Client{}},
	} {
		wc, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		if wc.h1 != nil {
			t.Errorf("%s: uses the direct client", c.Name)
		}
	}
}

// TestH1_EndlessHeader: an answer whose header never ends fails the attempt once answerLimit
// is read, instead of growing memory.
func TestH1_EndlessHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		if _, err := http.ReadRequest(bufio.NewReader(nc)); err != nil {
			return
		}
		line := []byte("X-Pad: " + strings.Repeat("x", 1000) + "\r\n")
		if _, err := io.WriteString(nc, "HTTP/1.1 200 OK\r\n"); err != nil {
			return
		}
		for {
			if _, err := nc.Write(line); err != nil {
				return
			}
		}
	}()
	c := newTestClient(t, "http://"+ln.Addr().String()+"/hook", 0)
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err == nil {
		t.Fatal("Do = nil for an answer whose header never ends")
	}
}

// TestH1_ContextEndsWhileIdle: a connection watched by a context that ended while it was idle
// is not used again; the next delivery, under another context, goes out on a new one.
func TestH1_ContextEndsWhileIdle(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })
	c := newTestClient(t, srv.URL, 0)
	ctx, cancel := context.WithCancel(context.Background())
	for range 3 {
		if err := c.Do(ctx, nil, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := c.Do(ctx, nil, []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("Do under an ended context = %v, want context canceled", err)
	}
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
		t.Fatalf("Do under a live context after another ended: %v", err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (the first cut when its context ended)", n)
	}
}

// TestH1_CancelRace: deliveries from many goroutines, their contexts ended at random moments,
// each either succeed or report their context's end, and the pool keeps working.
func TestH1_CancelRace(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) })
	c := newTestClient(t, srv.URL, 0)
	done := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 50 {
				ctx, cancel := context.WithCancel(context.Background())
				if (g+i)%3 == 0 {
					time.AfterFunc(time.Duration(i%5)*50*time.Microsecond, cancel)
				}
				err := c.Do(ctx, nil, []byte(`{"n":1}`))
				ended := ctx.Err() != nil
				cancel()
				if err != nil && !ended {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatalf("a delivery under a live context failed: %v", err)
		}
	}
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
}

// TestH1_AnswerBeforeBody: a server that answers 413 after the request's header and closes
// without reading the body fails the write; the answer is read all the same, and is
// permanent.
func TestH1_AnswerBeforeBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				if _, err := http.ReadRequest(bufio.NewReader(nc)); err != nil {
					return
				}
				_, _ = io.WriteString(nc, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			}()
		}
	}()
	c := newTestClient(t, "http://"+ln.Addr().String()+"/hook", 2)
	err = c.Do(context.Background(), nil, make([]byte, 16<<20))
	se, ok := errors.AsType[*relay.StatusError](err)
	if !ok || se.Status != http.StatusRequestEntityTooLarge || !se.Perm {
		t.Fatalf("Do = %v, want a permanent 413", err)
	}
}
