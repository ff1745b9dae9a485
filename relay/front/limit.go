package front

import (
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// LimitOptions configures Limit. A limit of zero or less is off.
type LimitOptions struct {
	MaxConcurrent      int // requests in flight in all
	MaxConcurrentPerIP int // requests in flight from one client address
	// ClientIP names the client of a request; default the connection's peer address. Behind
	// a trusted proxy use ClientIP with the proxies' networks.
	ClientIP func(*http.Request) string
	Logger   *slog.Logger
	Observer Observer
}

// Limit bounds the requests in flight: over o.MaxConcurrentPerIP from one client address the
// answer is 429 ("too many concurrent requests from one address"), over o.MaxConcurrent in
// all it is 503 ("too many concurrent requests"), both with Retry-After: 1 so Meta retries.
// A request refused per address does not take a global slot, so one noisy address cannot
// starve the others. Refusals are counted through o.Observer and logged at warn, at most
// once a second per reason with the number left unlogged.
func Limit(next http.Handler, o LimitOptions) http.Handler {
	clientIP := o.ClientIP
	if clientIP == nil {
		clientIP = func(r *http.Request) string {
			if a := peerAddr(r.RemoteAddr); a.IsValid() {
				return a.String()
			}
			return r.RemoteAddr
		}
	}
	return &limiter{
		next:     next,
		max:      int64(o.MaxConcurrent),
		maxPerIP: o.MaxConcurrentPerIP,
		clientIP: clientIP,
		perIP:    map[string]int{},
		refuse:   newRefuser(o.Logger, o.Observer, "request refused"),
	}
}

type limiter struct {
	next     http.Handler
	max      int64
	maxPerIP int
	clientIP func(*http.Request) string

	inFlight atomic.Int64

	mu    sync.Mutex
	perIP map[string]int // addresses with requests in flight; entries at zero are deleted

	refuse *refuser
}

func (l *limiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ip := ""
	if l.maxPerIP > 0 {
		ip = l.clientIP(r)
		l.mu.Lock()
		n := l.perIP[ip]
		if n >= l.maxPerIP {
			l.mu.Unlock()
			w.Header().Set("Retry-After", "1")
			l.refuse.refuse(w, r, start, http.StatusTooManyRequests, relay.OutcomeRateLimited, ReasonRateLimited, "", "client", ip)
			return
		}
		l.perIP[ip] = n + 1
		l.mu.Unlock()
		defer l.release(ip)
	}
	if l.max > 0 {
		if l.inFlight.Add(1) > l.max {
			l.inFlight.Add(-1)
			w.Header().Set("Retry-After", "1")
			l.refuse.refuse(w, r, start, http.StatusServiceUnavailable, relay.OutcomeOverloaded, ReasonOverloaded, "")
			return
		}
		defer l.inFlight.Add(-1)
	}
	l.next.ServeHTTP(w, r)
}

func (l *limiter) release(ip string) {
	l.mu.Lock()
	if n := l.perIP[ip] - 1; n > 0 {
		l.perIP[ip] = n
	} else {
		delete(l.perIP, ip)
	}
	l.mu.Unlock()
}
