package front

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/hubrelay/hubrelay/relay"
)

// ParseCIDRs parses CIDRs such as 10.0.0.0/8 or fd00::/8; a bare address stands for itself.
// The prefixes come back masked, and an IPv4-mapped IPv6 CIDR (::ffff:10.0.0.0/104) as the
// IPv4 prefix it covers, so that netip.Prefix.Contains on an unmapped address answers as
// net.IPNet.Contains did.
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", s)
			}
			a = a.Unmap().WithZone("")
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		// net.ParseCIDR decides what is a CIDR, as before; the prefix is converted once here
		// instead of an address per request.
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR", s)
		}
		out = append(out, prefixOf(n))
	}
	return out, nil
}

// prefixOf converts a parsed CIDR to a masked netip.Prefix. net.IPNet matches an IPv4
// address against an IPv4-mapped network by the mask's last 32 bits; the prefix is made IPv4
// with those bits.
func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	if a.Is4In6() {
		a, ones = a.Unmap(), max(ones-96, 0)
	}
	return netip.PrefixFrom(a, ones).Masked()
}

// ClientIP returns the address of the client for logs and per-address limits. When the
// connection's peer is one of the trusted proxies, it walks X-Forwarded-For from the right,
// past the trusted proxies, and returns the first address they did not vouch for themselves
// (the right-most untrusted one: addresses further left were written by the client and could
// be anything). Otherwise, or when the header has none, it returns the peer's address.
func ClientIP(r *http.Request, trusted []netip.Prefix) string {
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

// ipIn reports whether a is inside one of nets. A zone (fe80::1%eth0) does not matter, as it
// did not to net.IPNet.
func ipIn(a netip.Addr, nets []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	a = a.WithZone("")
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// WithClientIP records in each request's context the address of the client as ClientIP finds
// it — the peer, or, when the peer is a trusted proxy, the address it forwarded — so that log
// lines name the real caller, not the load balancer (relay.RemoteAddr reads it). Install it
// outermost.
func WithClientIP(next http.Handler, trusted []netip.Prefix) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, relay.WithRemoteAddr(r, ClientIP(r, trusted)))
	})
}
