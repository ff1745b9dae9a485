package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Outcomes of requests refused before they reach the Receiver, and of stale notifications.
const (
	OutcomeOverloaded  Outcome = "overloaded"       // over the global concurrency limit: 503
	OutcomeRateLimited Outcome = "rate_limited"     // over the per-address concurrency limit: 429
	OutcomeForbidden   Outcome = "forbidden_client" // no, or not Meta's, client certificate: 403
	OutcomeStale       Outcome = "stale"            // every entry.time older than max_event_age: 400
)

// Reasons logged (as "reason") when a guard refuses a request.
const (
	ReasonNoClientCert    = "no client certificate"
	ReasonUntrustedChain  = "untrusted chain"
	ReasonWrongCommonName = "wrong common name" // followed by the name presented
	ReasonUntrustedPeer   = "peer not a trusted proxy"
	ReasonNoSubject       = "no client certificate subject"
	ReasonBadSubject      = "malformed client certificate subject"
	ReasonOverloaded      = "too many concurrent requests"
	ReasonRateLimited     = "too many concurrent requests from one address"
)

// DefaultSubjectHeader is the header AWS Application Load Balancers in mutual TLS verify mode
// put the client certificate's subject in.
const DefaultSubjectHeader = "X-Amzn-Mtls-Clientcert-Subject"

// refusalLogEvery is how often one kind of refusal is logged at most.
const refusalLogEvery = DefaultLogEvery

// ClientCertOptions configures RequireClientCert.
type ClientCertOptions struct {
	// CommonNames are the accepted subject common names of the client certificate; default
	// [MetaClientCommonName]. Compared without regard to case (they are DNS names).
	CommonNames []string
	Logger      *slog.Logger
	// Observer, if set, is told of every refusal as Request("", OutcomeForbidden, d).
	Observer Observer
}

// RequireClientCert lets through only requests whose TLS connection presented a client
// certificate that was verified during the handshake (see ServerTLSConfig) and whose subject
// common name is one of o.CommonNames. Anything else gets 403 and a warn log with the
// reason: "no client certificate", "untrusted chain" (a certificate that was not verified,
// which ServerTLSConfig never lets through) or "wrong common name <cn>".
//
// It guards GET subscription challenges as well as POST notifications: with mutual TLS on,
// every request on the webhook paths must come from Meta's certificate. Leave /healthz and
// /readyz outside it.
func RequireClientCert(next http.Handler, o ClientCertOptions) http.Handler {
	names := o.CommonNames
	if len(names) == 0 {
		names = []string{MetaClientCommonName}
	}
	ref := newRefuser(o.Logger, o.Observer, "client certificate refused")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		switch {
		case r.TLS == nil || len(r.TLS.PeerCertificates) == 0:
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonNoClientCert, "")
		case len(r.TLS.VerifiedChains) == 0:
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonUntrustedChain, "",
				"cn", r.TLS.PeerCertificates[0].Subject.CommonName)
		default:
			cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
			if !nameIn(cn, names) {
				ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonWrongCommonName, cn, "cn", cn)
				return
			}
			next.ServeHTTP(w, r)
		}
	})
}

func nameIn(name string, names []string) bool {
	for _, n := range names {
		if strings.EqualFold(name, n) {
			return true
		}
	}
	return false
}

// ProxyOptions configures TrustedProxy.
type ProxyOptions struct {
	// SubjectHeader carries the verified client certificate's subject, as an RFC 2253
	// distinguished name; default DefaultSubjectHeader (AWS ALB in mutual TLS verify mode).
	SubjectHeader string
	// CommonNames are the accepted subject common names; default [MetaClientCommonName].
	CommonNames []string
	// From lists the proxies' addresses as CIDRs (a bare IP is one address); required.
	From     []string
	Logger   *slog.Logger
	Observer Observer
}

// TrustedProxy lets through only requests that a trusted proxy forwarded with a client
// certificate subject whose common name is one of o.CommonNames; the proxy terminated mutual
// TLS and verified the chain. The subject header is read only when the connection's peer
// (r.RemoteAddr) is inside o.From; any other peer gets 403 "peer not a trusted proxy",
// whatever its headers. A missing or repeated subject header is 403 "no client certificate
// subject" / "malformed client certificate subject"; a subject with another common name is
// 403 "wrong common name <cn>". Every refusal is logged at warn.
func TrustedProxy(next http.Handler, o ProxyOptions) (http.Handler, error) {
	from, err := ParseCIDRs(o.From)
	if err != nil {
		return nil, fmt.Errorf("trusted proxy: %w", err)
	}
	if len(from) == 0 {
		return nil, errors.New("trusted proxy: no proxy addresses (from)")
	}
	header := o.SubjectHeader
	if header == "" {
		header = DefaultSubjectHeader
	}
	header = http.CanonicalHeaderKey(header)
	names := o.CommonNames
	if len(names) == 0 {
		names = []string{MetaClientCommonName}
	}
	ref := newRefuser(o.Logger, o.Observer, "client certificate refused")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		if !ipIn(peerAddr(r.RemoteAddr), from) {
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonUntrustedPeer, "")
			return
		}
		vals := r.Header[header]
		if len(vals) == 0 || vals[0] == "" {
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonNoSubject, "", "header", header)
			return
		}
		if len(vals) > 1 {
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonBadSubject, "", "header", header, "err", "header repeated")
			return
		}
		cn, err := SubjectCommonName(vals[0])
		if err != nil {
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonBadSubject, "", "header", header, "err", err)
			return
		}
		if !nameIn(cn, names) {
			ref.refuse(w, r, start, http.StatusForbidden, OutcomeForbidden, ReasonWrongCommonName, cn, "cn", cn)
			return
		}
		next.ServeHTTP(w, r)
	}), nil
}

// ParseCIDRs parses CIDRs such as 10.0.0.0/8 or fd00::/8; a bare address stands for itself.
func ParseCIDRs(list []string) ([]*net.IPNet, error) {
	out := make([]*net.IPNet, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", s)
			}
			a = a.Unmap()
			out = append(out, &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())})
			continue
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// SubjectCommonName returns the common name (CN) of a distinguished name in the RFC 2253
// form proxies send, such as
// `CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\, Inc.,L=Menlo Park,ST=California,C=US`.
// Escapes (`\,`, `\+`, `\2C`…), quoted values and multi-valued RDNs are understood; a name
// with no CN, or with more than one, is an error.
func SubjectCommonName(dn string) (string, error) {
	attrs, err := parseDN(dn)
	if err != nil {
		return "", err
	}
	cn, found := "", false
	for _, a := range attrs {
		if !isCommonNameType(a.typ) {
			continue
		}
		if found {
			return "", errors.New("more than one common name")
		}
		cn, found = a.val, true
	}
	if !found {
		return "", errors.New("no common name")
	}
	return cn, nil
}

func isCommonNameType(t string) bool {
	return strings.EqualFold(t, "CN") || strings.EqualFold(t, "commonName") ||
		t == "2.5.4.3" || strings.EqualFold(t, "OID.2.5.4.3")
}

type dnAttr struct{ typ, val string }

// parseDN splits a distinguished name into its attributes, in order. Separators between
// RDNs (',' or ';') and inside multi-valued RDNs ('+') are not told apart: the caller only
// looks for one attribute type.
func parseDN(s string) ([]dnAttr, error) {
	var out []dnAttr
	i := 0
	skipSpace := func() {
		for i < len(s) && s[i] == ' ' {
			i++
		}
	}
	for {
		skipSpace()
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, fmt.Errorf("attribute %d has no '='", len(out)+1)
		}
		typ := strings.TrimSpace(s[i : i+eq])
		if typ == "" || strings.ContainsAny(typ, ",;+\"\\") {
			return nil, fmt.Errorf("attribute %d has a bad type", len(out)+1)
		}
		i += eq + 1
		skipSpace()
		var val []byte
		if i < len(s) && s[i] == '"' {
			i++
			closed := false
			for i < len(s) && !closed {
				switch c := s[i]; c {
				case '\\':
					if i+1 >= len(s) {
						return nil, errors.New("backslash at the end")
					}
					val = append(val, s[i+1])
					i += 2
				case '"':
					closed = true
					i++
				default:
					val = append(val, c)
					i++
				}
			}
			if !closed {
				return nil, errors.New("unterminated quoted value")
			}
			skipSpace()
		} else {
			trailing := 0 // unescaped spaces at the end of val, which are not part of it
		value:
			for i < len(s) {
				c := s[i]
				switch c {
				case ',', ';', '+':
					break value
				case '"':
					return nil, errors.New("unescaped quote in a value")
				case '\\':
					if i+1 >= len(s) {
						return nil, errors.New("backslash at the end")
					}
					if b, ok := unhexPair(s[i+1:]); ok {
						val = append(val, b)
						i += 3
					} else {
						val = append(val, s[i+1])
						i += 2
					}
					trailing = 0
					continue
				}
				val = append(val, c)
				if c == ' ' {
					trailing++
				} else {
					trailing = 0
				}
				i++
			}
			val = val[:len(val)-trailing]
		}
		out = append(out, dnAttr{typ: typ, val: string(val)})
		if i >= len(s) {
			return out, nil
		}
		switch s[i] {
		case ',', ';', '+':
			i++
		default:
			return nil, fmt.Errorf("unexpected %q after a quoted value", s[i])
		}
	}
}

func unhexPair(s string) (byte, bool) {
	if len(s) < 2 {
		return 0, false
	}
	hi, ok1 := fromHex(s[0])
	lo, ok2 := fromHex(s[1])
	return hi<<4 | lo, ok1 && ok2
}

// ClientIP returns the address of the client for logs and per-address limits. When the
// connection's peer is one of the trusted proxies, it walks X-Forwarded-For from the right,
// past the trusted proxies, and returns the first address they did not vouch for themselves
// (the right-most untrusted one: addresses further left were written by the client and could
// be anything). Otherwise, or when the header has none, it returns the peer's address.
func ClientIP(r *http.Request, trusted []*net.IPNet) string {
	peer := peerAddr(r.RemoteAddr)
	if !peer.IsValid() {
		return r.RemoteAddr
	}
	if len(trusted) == 0 || !ipIn(peer, trusted) {
		return peer.String()
	}
	last := peer // the left-most trusted hop seen so far
	hops := r.Header.Values("X-Forwarded-For")
	for h := len(hops) - 1; h >= 0; h-- {
		parts := strings.Split(hops[h], ",")
		for p := len(parts) - 1; p >= 0; p-- {
			a, ok := parseHop(parts[p])
			if !ok {
				return last.String()
			}
			if !ipIn(a, trusted) {
				return a.String()
			}
			last = a
		}
	}
	return last.String()
}

func parseHop(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// peerAddr is the IP of r.RemoteAddr ("ip:port"), invalid when it has none.
func peerAddr(remote string) netip.Addr {
	if ap, err := netip.ParseAddrPort(remote); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(remote); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

func ipIn(a netip.Addr, nets []*net.IPNet) bool {
	if !a.IsValid() {
		return false
	}
	ip := net.IP(a.AsSlice())
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

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
			l.refuse.refuse(w, r, start, http.StatusTooManyRequests, OutcomeRateLimited, ReasonRateLimited, "", "client", ip)
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
			l.refuse.refuse(w, r, start, http.StatusServiceUnavailable, OutcomeOverloaded, ReasonOverloaded, "")
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

// refuser answers, counts and logs refusals. Logs go through a LogSampler keyed by reason:
// under a flood, one line a second says how many refusals of that kind went unlogged, so the
// log cannot become the bottleneck, while one refusal of another kind is still logged at once.
type refuser struct {
	log    *slog.Logger
	obs    Observer
	msg    string
	sample *LogSampler
}

func newRefuser(lg *slog.Logger, obs Observer, msg string) *refuser {
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &refuser{log: lg, obs: obs, msg: msg, sample: NewLogSampler(refusalLogEvery)}
}

// refuse answers status, reports o and logs reason, followed by detail when there is one.
func (f *refuser) refuse(w http.ResponseWriter, r *http.Request, start time.Time, status int, o Outcome, reason, detail string, attrs ...any) {
	http.Error(w, http.StatusText(status), status)
	if f.obs != nil {
		f.obs.Request("", o, time.Since(start))
	}
	kind := reason
	if detail != "" {
		reason += " " + detail
	}
	all := append([]any{"reason", reason, "status", status, "method", r.Method, "path", r.URL.Path, "remote", RemoteAddr(r)}, attrs...)
	f.sample.Log(f.log, slog.LevelWarn, kind, f.msg, all...)
}

// StaleCutoff reports whether a notification is stale: every one of its changes carries an
// entry.time older than maxAge before now. entry.time is in seconds, or in milliseconds when
// above 1e12 (messaging); a change without one is never stale, nor is any notification when
// maxAge is zero or less. Meta stamps entry.time when it sends, retries included, so a stale
// notification is a replay of an old capture or a badly wrong clock.
func StaleCutoff(events []Event, maxAge time.Duration, now time.Time) (stale bool) {
	if maxAge <= 0 || len(events) == 0 {
		return false
	}
	cutoff := now.Add(-maxAge)
	for i := range events {
		t := events[i].Entry.Time
		if t <= 0 {
			return false
		}
		var at time.Time
		if t > 1e12 {
			at = time.UnixMilli(t)
		} else {
			at = time.Unix(t, 0)
		}
		if !at.Before(cutoff) {
			return false
		}
	}
	return true
}

// clientIPKey is the context key of the client address WithClientIP records.
type clientIPKey struct{}

// WithClientIP records in each request's context the address of the client as ClientIP finds
// it — the peer, or, when the peer is a trusted proxy, the address it forwarded — so that log
// lines name the real caller, not the load balancer. Install it outermost.
func WithClientIP(next http.Handler, trusted []*net.IPNet) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := ClientIP(r, trusted)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientIPKey{}, ip)))
	})
}

// RemoteAddr returns the client address WithClientIP recorded for r, else r.RemoteAddr.
func RemoteAddr(r *http.Request) string {
	if ip, ok := r.Context().Value(clientIPKey{}).(string); ok && ip != "" {
		return ip
	}
	return r.RemoteAddr
}
