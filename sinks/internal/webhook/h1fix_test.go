package webhook

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// bothClients runs f with a Client of url through the direct client (h1) and through
// net/http's transport, which the direct one must match.
func bothClients(t *testing.T, url string, f func(t *testing.T, mk func(retries int, timeout time.Duration) *Client)) {
	for _, direct := range []bool{true, false} {
		name := "h1"
		if !direct {
			name = "net-http"
		}
		t.Run(name, func(t *testing.T) {
			f(t, func(retries int, timeout time.Duration) *Client {
				t.Helper()
				c, err := New(Config{Name: "t", URL: url, Retries: retries, MinBackoff: 1, MaxBackoff: 1, Timeout: timeout})
				if err != nil {
					t.Fatal(err)
				}
				if c.h1 == nil {
					t.Fatal("a plain-http destination without a proxy does not use the direct client")
				}
				if !direct {
					c.h1 = nil
				}
				t.Cleanup(c.Close)
				return c
			})
		})
	}
}

// startServer starts an httptest server of h, configured first by configure.
func startServer(t *testing.T, h http.HandlerFunc, configure func(*http.Server)) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	configure(srv.Config)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// rawServer serves each connection with handle on a loopback listener until the test ends.
func rawServer(t *testing.T, handle func(nc net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() {
				defer nc.Close()
				handle(nc)
			})
		}
	})
	return "http://" + ln.Addr().String() + "/hook"
}

// TestH1_UnsolicitedAnswerWhileIdle: a second answer the server sends, unasked, on a
// connection after its first is never taken for the next request's: that request is answered
// 500 and Do reports the 500.
func TestH1_UnsolicitedAnswerWhileIdle(t *testing.T) {
	var n atomic.Int64
	extraSent := make(chan struct{}, 2)
	url := rawServer(t, func(nc net.Conn) {
		br := bufio.NewReader(nc)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if n.Add(1) == 1 {
				_, _ = io.WriteString(nc, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				time.Sleep(100 * time.Millisecond)
				_, _ = io.WriteString(nc, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				extraSent <- struct{}{}
				continue
			}
			_, _ = io.WriteString(nc, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
		}
	})
	bothClients(t, url, func(t *testing.T, mk func(int, time.Duration) *Client) {
		n.Store(0)
		c := mk(0, 30*time.Second)
		if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
			t.Fatalf("first delivery: %v", err)
		}
		<-extraSent
		time.Sleep(50 * time.Millisecond) // let the idle connection's reader, if any, see the extra bytes
		err := c.Do(context.Background(), nil, []byte(`{}`))
		se, ok := errors.AsType[*relay.StatusError](err)
		if !ok || se.Status != http.StatusInternalServerError {
			t.Fatalf("second delivery = %v, want the 500 it was answered", err)
		}
	})
}

// TestH1_FailureAfterWriteNotReplayed: a request written in full on a reused connection that
// the server then closes without an answer (its handler panicked) is one failed attempt: it
// is not sent again on the other idle connections (Retries 0).
func TestH1_FailureAfterWriteNotReplayed(t *testing.T) {
	const pool = 5
	var panicking atomic.Bool
	var reqs atomic.Int64
	var arrived sync.WaitGroup
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if panicking.Load() {
			reqs.Add(1)
			panic(http.ErrAbortHandler)
		}
		arrived.Done()
		arrived.Wait() // every connection busy at once: the pool ends with pool of them
	}, func(s *http.Server) { s.ErrorLog = log.New(io.Discard, "", 0) })
	bothClients(t, srv.URL, func(t *testing.T, mk func(int, time.Duration) *Client) {
		panicking.Store(false)
		reqs.Store(0)
		c := mk(0, 30*time.Second)
		arrived.Add(pool)
		var wg sync.WaitGroup
		for range pool {
			wg.Go(func() {
				if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
					t.Errorf("filling the pool: %v", err)
				}
			})
		}
		wg.Wait()
		panicking.Store(true)
		if err := c.Do(context.Background(), nil, []byte(`{}`)); err == nil {
			t.Fatal("Do = nil for a request the server dropped")
		}
		if n := reqs.Load(); n != 1 {
			t.Errorf("the server got the request %d times in one attempt, want 1", n)
		}
	})
}

// TestH1_URLUserinfo: a URL's user:password is sent as Basic authentication unless the caller
// sets an Authorization, and User-Agent is net/http's unless the caller sets one.
func TestH1_URLUserinfo(t *testing.T) {
	type seen struct{ auth, ua string }
	var got atomic.Pointer[seen]
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		got.Store(&seen{r.Header.Get("Authorization"), r.Header.Get("User-Agent")})
	})
	url := strings.Replace(srv.URL, "http://", "http://al%20ice:p%3Ass@", 1)
	bothClients(t, url, func(t *testing.T, mk func(int, time.Duration) *Client) {
		c := mk(0, 30*time.Second)
		for _, tt := range []struct {
			header http.Header
			want   seen
		}{
			{nil, seen{"Basic YWwgaWNlOnA6c3M=", "Go-http-client/1.1"}},
			{http.Header{"Authorization": {"Bearer x"}, "User-Agent": {"hubrelay"}}, seen{"Bearer x", "hubrelay"}},
		} {
			if err := c.Do(context.Background(), tt.header, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
			if s := got.Load(); *s != tt.want {
				t.Errorf("header %v: the server saw %+v, want %+v", tt.header, *s, tt.want)
			}
		}
	})
}

// TestH1_AnswerWhileWriteBlocks: a server that answers 413 after the request's header and
// neither reads the body nor closes lets the write block; the 413 is read all the same, within
// the attempt's timeout, and is permanent.
func TestH1_AnswerWhileWriteBlocks(t *testing.T) {
	url := rawServer(t, func(nc net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(nc)); err != nil {
			return
		}
		_, _ = io.WriteString(nc, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
		<-t.Context().Done() // nothing more read, held open until the test ends
	})
	bothClients(t, url, func(t *testing.T, mk func(int, time.Duration) *Client) {
		c := mk(0, 2*time.Second)
		err := c.Do(context.Background(), nil, make([]byte, 64<<20))
		se, ok := errors.AsType[*relay.StatusError](err)
		if !ok || se.Status != http.StatusRequestEntityTooLarge || !se.Perm {
			t.Fatalf("Do = %v, want a permanent 413", err)
		}
	})
}

// TestH1_Close: Close closes the idle connections (the server sees them end), and Do fails
// afterwards without sending anything.
func TestH1_Close(t *testing.T) {
	var reqs atomic.Int64
	var open atomic.Int64
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) { reqs.Add(1) }, func(s *http.Server) {
		s.ConnState = func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		}
	})
	c := newTestClient(t, srv.URL, 0)
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for deadline := time.Now().Add(10 * time.Second); open.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open 10 s after Close", open.Load())
		}
	}
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err == nil {
		t.Fatal("Do after Close = nil")
	}
	if n := reqs.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// TestH1_ExpiredDroppedOnPut: giving a connection back closes the idle ones that expired.
func TestH1_ExpiredDroppedOnPut(t *testing.T) {
	var closed atomic.Int64
	srv := startServer(t, func(w http.ResponseWriter, r *http.Request) {}, func(s *http.Server) {
		s.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed {
				closed.Add(1)
			}
		}
	})
	c := newTestClient(t, srv.URL, 0)
	t.Cleanup(c.Close)
	var pcs []*h1Conn
	for range 3 {
		pc, _, err := c.h1.get(context.Background(), time.Now().Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		pcs = append(pcs, pc)
	}
	for _, pc := range pcs {
		c.h1.put(pc)
	}
	c.h1.mu.Lock()
	for _, pc := range c.h1.idle[:2] {
		pc.idleAt = time.Now().Add(-2 * c.h1.idleTimeout) // the two oldest expired
	}
	c.h1.mu.Unlock()
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil { // on the newest
		t.Fatal(err)
	}
	c.h1.mu.Lock()
	n := len(c.h1.idle)
	c.h1.mu.Unlock()
	if n != 1 {
		t.Errorf("%d idle connections after a put, want 1 (the expired ones closed)", n)
	}
	for deadline := time.Now().Add(10 * time.Second); closed.Load() != 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the server saw %d connections closed, want 2", closed.Load())
		}
	}
}

// TestH1_StaleBody: an answer's body used after its Close, once its connection went on to the
// next exchange, neither reads nor closes that exchange's answer.
func TestH1_StaleBody(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "answer") })
	c := newTestClient(t, srv.URL, 0)
	rt := func() *http.Response {
		t.Helper()
		resp, err := c.h1.roundTrip(context.Background(), nil, c.u.Host, []byte(`{}`), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first := rt().Body
	drain(first)
	second := rt() // on the same connection
	if n, err := first.Read(make([]byte, 16)); err == nil {
		t.Errorf("a closed body read %d bytes of the next exchange's answer", n)
	}
	_ = first.Close()
	if b, err := io.ReadAll(second.Body); err != nil || string(b) != "answer" {
		t.Fatalf("the next exchange's body after a stale Close: %q, %v", b, err)
	}
	_ = second.Body.Close()
	if err := c.Do(context.Background(), nil, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// TestH1_NoReplayPastDeadline: an attempt whose deadline has passed fails on the first idle
// connection, whose write fails before its first byte, instead of trying (and closing) every
// idle connection of the pool in turn.
func TestH1_NoReplayPastDeadline(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	c := newTestClient(t, srv.URL, 0)
	t.Cleanup(c.Close)
	var pcs []*h1Conn
	for range 3 {
		pc, _, err := c.h1.get(context.Background(), time.Now().Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		pcs = append(pcs, pc)
	}
	for _, pc := range pcs {
		c.h1.put(pc)
	}
	if _, err := c.h1.roundTrip(context.Background(), nil, c.u.Host, []byte(`{}`), 0); err == nil {
		t.Fatal("roundTrip with no time left = nil error")
	}
	c.h1.mu.Lock()
	n := len(c.h1.idle)
	c.h1.mu.Unlock()
	if n != 2 {
		t.Errorf("%d idle connections left, want 2 (one tried)", n)
	}
}
