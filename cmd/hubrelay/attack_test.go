//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/front"
)

// attackConfig writes a config for the attack tests: one app, one file sink, extra server
// keys from extra (indented two spaces).
func attackConfig(t *testing.T, dir, addr, extra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`server:
  listen: %s
%s
apps:
  - name: shop
    verify_token: v
    app_secrets: [${TEST_APP_SECRET}]
storage:
  dir: %s
sinks:
  - name: archive
    type: file
    path: %s
rules:
  - name: all
    sinks: [archive]
`, addr, extra, filepath.Join(dir, "data"), filepath.Join(dir, "data", "events.jsonl"))
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// dialFrom connects to addr from the loopback address local (127.0.0.2, 127.0.0.3…), so the
// relay sees several client addresses.
func dialFrom(ctx context.Context, local, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// legitPosts sends n signed notifications, each on a new connection from 127.0.0.1, pause
// apart, and returns their statuses (0: no answer) and latencies.
func legitPosts(t *testing.T, url string, n int, pause time.Duration) (statuses []int, lat []time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dialFrom(ctx, "127.0.0.1", addr) }}}
	for i := range n {
		time.Sleep(pause)
		body := waPayload(fmt.Sprintf("legit-%d", i))
		req, _ := http.NewRequest(http.MethodPost, url+"/webhooks", strings.NewReader(string(body)))
		req.Header.Set("X-Hub-Signature-256", relay.Sign(body, testSecret))
		start := time.Now()
		resp, err := client.Do(req)
		lat = append(lat, time.Since(start))
		if err != nil {
			t.Logf("legit POST %d: %v", i, err)
			statuses = append(statuses, 0)
			continue
		}
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
	}
	return statuses, lat
}

func latencySummary(lat []time.Duration) string {
	s := slices.Clone(lat)
	slices.Sort(s)
	return fmt.Sprintf("p50 %v, max %v", s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

// TestServe_SlowBodiesDoNotLockMetaOut: 60 connections from 5 addresses send their bodies one
// byte every 250 ms, reconnecting when cut off, against max_concurrent 16; meanwhile every
// signed POST from another address gets 200.
func TestServe_SlowBodiesDoNotLockMetaOut(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := attackConfig(t, dir, addr, `  max_concurrent: 16
  max_concurrent_per_ip: 8
  body_grace: 1s`)
	r := startRelay(t, dir, cfg)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sent, cut atomic.Int64
	for a := range 5 {
		local := fmt.Sprintf("127.0.0.%d", a+2)
		for range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					c, err := dialFrom(ctx, local, addr)
					if err != nil {
						if ctx.Err() == nil {
							time.Sleep(20 * time.Millisecond)
						}
						continue
					}
					go func() { <-ctx.Done(); c.Close() }()
					fmt.Fprintf(c, "POST /webhooks HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"+
						"X-Hub-Signature-256: sha256=00\r\nContent-Length: 100000\r\n\r\n")
					for ctx.Err() == nil {
						c.SetWriteDeadline(time.Now().Add(time.Second))
						if _, err := c.Write([]byte("{")); err != nil {
							break
						}
						sent.Add(1)
						select {
						case <-ctx.Done():
						case <-time.After(250 * time.Millisecond):
						}
						// The relay answers 408 and closes when the body is too slow.
						c.SetReadDeadline(time.Now().Add(time.Millisecond))
						if _, err := c.Read(make([]byte, 1)); err == nil || !isTimeout(err) {
							if ctx.Err() == nil {
								cut.Add(1)
							}
							break
						}
					}
					c.Close()
				}
			}()
		}
	}
	// Let the attack take hold: well past the grace, every slot would be taken by now.
	waitFor(t, "the attack to send 200 bytes", func() bool { return sent.Load() >= 200 })
	statuses, lat := legitPosts(t, r.url, 20, 100*time.Millisecond)
	t.Logf("legit POSTs under attack: %v; latency %s", statuses, latencySummary(lat))
	// The slow bodies are cut off once the grace has passed, and their senders come back.
	waitFor(t, "slow bodies to be cut off", func() bool { return cut.Load() >= 60 })
	stop()
	wg.Wait()
	t.Logf("attack bytes sent %d, slow bodies cut off %d", sent.Load(), cut.Load())
	for i, st := range statuses {
		if st != http.StatusOK {
			t.Errorf("legit POST %d: status %d, want 200", i, st)
		}
	}
	if cut.Load() == 0 {
		t.Errorf("no slow body was cut off")
	}
	if !strings.Contains(r.logs.String(), front.ReasonBodyTooSlow) {
		t.Errorf("no line says a body was too slow")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestServe_ManyIdleConnections: 300 connections from 6 addresses, each making one request
// and then idling (and reconnecting when closed), against max_connections 64: the relay keeps
// at most 64 open, closing idle ones to make room, and every signed POST gets 200.
func TestServe_ManyIdleConnections(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	const maxConns = 64
	cfg := attackConfig(t, dir, addr, fmt.Sprintf(`  max_connections: %d
  max_connections_per_ip: 32`, maxConns))
	r := startRelay(t, dir, cfg)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var idle, closed atomic.Int64
	for a := range 6 {
		local := fmt.Sprintf("127.0.0.%d", a+2)
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					c, err := dialFrom(ctx, local, addr)
					if err != nil {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					go func() { <-ctx.Done(); c.Close() }()
					br := bufio.NewReader(c)
					if i%5 != 0 { // most make a keep-alive request; every fifth sends nothing
						fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
						resp, err := http.ReadResponse(br, nil)
						if err != nil {
							c.Close()
							closed.Add(1)
							continue
						}
						resp.Body.Close()
					}
					idle.Add(1)
					br.ReadByte() // returns when the relay closes the connection
					idle.Add(-1)
					closed.Add(1)
					c.Close()
					select {
					case <-ctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
				}
			}()
		}
	}
	waitFor(t, "the relay to close connections over its cap", func() bool { return closed.Load() >= 300-maxConns })
	statuses, lat := legitPosts(t, r.url, 20, 0)
	open := metricValue(t, r.url+"/metrics", "hubrelay_open_connections")
	dropped := metricValue(t, r.url+"/metrics", "hubrelay_connections_dropped_total", `reason="closed_for_room"`)
	stop()
	t.Logf("metrics under attack: hubrelay_open_connections %v, connections closed for room %v", open, dropped)
	if open < 1 || open > maxConns {
		t.Errorf("hubrelay_open_connections = %v, want 1..%d", open, maxConns)
	}
	if dropped < 300-maxConns {
		t.Errorf("connections closed for room = %v, want at least %d", dropped, 300-maxConns)
	}
	wg.Wait()
	t.Logf("legit POSTs with 300 connections against a cap of %d: %v; latency %s; attack connections closed %d",
		maxConns, statuses, latencySummary(lat), closed.Load())
	for i, st := range statuses {
		if st != http.StatusOK {
			t.Errorf("legit POST %d: status %d, want 200", i, st)
		}
	}
	if !strings.Contains(r.logs.String(), `"msg":"connection closed"`) && !strings.Contains(r.logs.String(), `"msg":"connection refused"`) {
		t.Errorf("no line says connections were closed or refused")
	}
	if !strings.Contains(r.logs.String(), `"msg":"open file limit"`) {
		t.Errorf("the open file limit is not logged")
	}
}
