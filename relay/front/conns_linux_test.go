package front

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestConnLimiter: per-address refusals, and fair-share room-making at the total cap, on a
// real listener with clients bound to several loopback addresses.
func TestConnLimiter(t *testing.T) {
	logs := &logSink{}
	l := NewConnLimiter(ConnLimitOptions{Max: 4, MaxPerIP: 3, Logger: logs.logger()})
	defer l.sample.Stop()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := l.Listener(raw)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c // held open, never serving a request (StateNew)
		}
	}()
	dial := func(from string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedByRelay reports whether the relay closed c, waiting generously for it.
	closedByRelay := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !isTimeoutErr(err)
	}
	count := func(ip string) int {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.perIP[netip.MustParseAddr(ip)]
	}
	waitCount := func(ip string, want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for count(ip) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s holds %d connections, want %d", ip, count(ip), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var a []net.Conn
	for range 3 {
		a = append(a, dial("127.0.0.2"))
	}
	waitCount("127.0.0.2", 3)
	if !closedByRelay(dial("127.0.0.2")) {
		t.Fatal("a 4th connection from one address was not refused")
	}
	logs.waitLog(t, `"reason":"too many connections from one address"`)
	dial("127.0.0.3")
	waitCount("127.0.0.3", 1)
	// At the cap: the newcomer from an address with none takes the place of one of the
	// address holding the most.
	dial("127.0.0.4")
	waitCount("127.0.0.4", 1)
	waitCount("127.0.0.2", 2)
	if !closedByRelay(a[0]) { // the oldest of them
		t.Fatal("the oldest connection of the busiest address was not closed to make room")
	}
	if l.Open() != 4 {
		t.Fatalf("%d open, want the cap, 4", l.Open())
	}
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
