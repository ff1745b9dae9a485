package front

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Reasons logged (as "reason") when ConnLimiter refuses or closes a connection.
const (
	ReasonTooManyConns      = "too many connections"
	ReasonTooManyConnsIP    = "too many connections from one address"
	ReasonIdleUnderPressure = "idle connection closed to make room"
)

// newConnGrace is how long a connection that has not yet sent a whole request header is
// safe from being closed to make room; Meta sends its request as soon as it has connected.
const newConnGrace = time.Second

// ConnLimitOptions configures a ConnLimiter. A limit of zero or less is off.
type ConnLimitOptions struct {
	Max      int // open connections in all
	MaxPerIP int // open connections from one peer address
	// Exempt lists peers not limited per address (the trusted proxies, which carry everyone's
	// requests); their connections still count toward Max.
	Exempt []netip.Prefix
	Logger *slog.Logger
	// Observe, if set, is told of every connection the limiter drops, as
	// ConnRefusedTotal, ConnRefusedPerIP or ConnClosedForRoom. It must be cheap.
	Observe func(reason string)
}

// What ConnLimitOptions.Observe is told.
const (
	ConnRefusedTotal  = "refused_total"   // at Max, and nothing could be closed
	ConnRefusedPerIP  = "refused_per_ip"  // the peer at MaxPerIP
	ConnClosedForRoom = "closed_for_room" // idle or silent, closed to let a new one in
)

// ConnLimiter caps the open connections of a listener, in all and per peer address. When a
// connection arrives with the listener at Max, it makes room by closing one that is idle (a
// keep-alive connection between requests) or has not yet sent its request header, preferring
// one of the address holding the most connections (see victim); a connection serving a
// request is never closed. When nothing can be closed, or the peer is at MaxPerIP, the new
// connection is closed at once. Refusals are logged at warn, closings at info, both through a
// LogSampler.
//
// Wrap the listener with Listener and set the http.Server's ConnState to ConnState, so the
// limiter knows which connections are idle.
type ConnLimiter struct {
	o      ConnLimitOptions
	log    *slog.Logger
	sample *relay.LogSampler

	mu    sync.Mutex // guards the fields below
	conns map[*limitedConn]struct{}
	perIP map[netip.Addr]int
}

// NewConnLimiter returns a limiter with the limits of o.
func NewConnLimiter(o ConnLimitOptions) *ConnLimiter {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &ConnLimiter{o: o, log: lg, sample: relay.NewLogSampler(relay.DefaultLogEvery),
		conns: map[*limitedConn]struct{}{}, perIP: map[netip.Addr]int{}}
}

// Open returns the number of connections open now.
func (l *ConnLimiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Listener wraps ln so that every connection it accepts is counted and limited.
func (l *ConnLimiter) Listener(ln net.Listener) net.Listener {
	return &limitedListener{Listener: ln, l: l}
}

type limitedListener struct {
	net.Listener
	l *ConnLimiter
}

func (ll *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := ll.l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// limitedConn is one counted connection.
type limitedConn struct {
	net.Conn
	l     *ConnLimiter
	ip    netip.Addr
	once  sync.Once
	state http.ConnState // guarded by l.mu
	since time.Time      // when it entered state; guarded by l.mu
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.forget(c) })
	return err
}

// admit counts c and returns it wrapped, or closes it and returns nil.
func (l *ConnLimiter) admit(c net.Conn) *limitedConn {
	ip := connIP(c)
	exempt := ipIn(ip, l.o.Exempt)
	var evict *limitedConn
	var evictState http.ConnState
	reason := ""
	l.mu.Lock()
	switch {
	case l.o.MaxPerIP > 0 && !exempt && l.perIP[ip] >= l.o.MaxPerIP:
		reason = ReasonTooManyConnsIP
	case l.o.Max > 0 && len(l.conns) >= l.o.Max:
		if evict = l.victim(ip, time.Now()); evict == nil {
			reason = ReasonTooManyConns
		} else {
			// Forget it now, so the new one has its place even before it is closed.
			l.forgetLocked(evict)
			evictState = evict.state
		}
	}
	if reason != "" {
		l.mu.Unlock()
		c.Close()
		if l.o.Observe != nil {
			if reason == ReasonTooManyConnsIP {
				l.o.Observe(ConnRefusedPerIP)
			} else {
				l.o.Observe(ConnRefusedTotal)
			}
		}
		l.sample.Log(l.log, slog.LevelWarn, reason, "connection refused", "reason", reason, "remote", ip.String(),
			"max_connections", l.o.Max, "max_connections_per_ip", l.o.MaxPerIP)
		return nil
	}
	lc := &limitedConn{Conn: c, l: l, ip: ip, state: http.StateNew, since: time.Now()}
	l.conns[lc] = struct{}{}
	l.perIP[ip]++
	l.mu.Unlock()
	if evict != nil {
		evict.once.Do(func() {}) // already forgotten
		evict.Conn.Close()
		if l.o.Observe != nil {
			l.o.Observe(ConnClosedForRoom)
		}
		l.sample.Log(l.log, slog.LevelInfo, ReasonIdleUnderPressure, "connection closed", "reason", ReasonIdleUnderPressure,
			"remote", evict.ip.String(), "state", evictState.String(), "max_connections", l.o.Max)
	}
	return lc
}

// victim picks the connection to close to make room for one from ip, or nil. Fair share
// first: when another address holds more connections than ip would with the new one, it
// gives one up — the one idle the longest, else the oldest still sending its request header
// — so a few busy addresses, however fast they reconnect, cannot keep out an address that
// holds few. Otherwise the connection idle the longest anywhere, else the oldest that has not
// sent a request header within newConnGrace. A connection serving a request is never picked.
// Lock should be held.
func (l *ConnLimiter) victim(ip netip.Addr, now time.Time) *limitedConn {
	var top netip.Addr
	topN := 0
	for a, n := range l.perIP {
		if n > topN {
			top, topN = a, n
		}
	}
	if top != ip && l.perIP[ip]+1 < topN {
		var idle, fresh *limitedConn
		for c := range l.conns {
			if c.ip != top {
				continue
			}
			switch c.state {
			case http.StateIdle:
				if idle == nil || c.since.Before(idle.since) {
					idle = c
				}
			case http.StateNew:
				if fresh == nil || c.since.Before(fresh.since) {
					fresh = c
				}
			}
		}
		if idle != nil {
			return idle
		}
		if fresh != nil {
			return fresh
		}
	}
	var idle, fresh *limitedConn
	for c := range l.conns {
		switch c.state {
		case http.StateIdle:
			if idle == nil || c.since.Before(idle.since) {
				idle = c
			}
		case http.StateNew:
			if now.Sub(c.since) >= newConnGrace && (fresh == nil || c.since.Before(fresh.since)) {
				fresh = c
			}
		}
	}
	if idle != nil {
		return idle
	}
	return fresh
}

func (l *ConnLimiter) forget(c *limitedConn) {
	l.mu.Lock()
	l.forgetLocked(c)
	l.mu.Unlock()
}

// forgetLocked stops counting c. Lock should be held.
func (l *ConnLimiter) forgetLocked(c *limitedConn) {
	if _, ok := l.conns[c]; !ok {
		return
	}
	delete(l.conns, c)
	if n := l.perIP[c.ip] - 1; n > 0 {
		l.perIP[c.ip] = n
	} else {
		delete(l.perIP, c.ip)
	}
}

// ConnState is the http.Server ConnState hook that tells the limiter which connections are
// idle; pass it on from a ConnState of your own if you have one.
func (l *ConnLimiter) ConnState(c net.Conn, s http.ConnState) {
	for {
		if lc, ok := c.(*limitedConn); ok {
			l.mu.Lock()
			if _, counted := l.conns[lc]; counted {
				lc.state, lc.since = s, time.Now()
			}
			l.mu.Unlock()
			return
		}
		nc, ok := c.(interface{ NetConn() net.Conn }) // a *tls.Conn around ours
		if !ok {
			return
		}
		c = nc.NetConn()
	}
}

func connIP(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	return peerAddr(c.RemoteAddr().String())
}
