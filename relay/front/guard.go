package front

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/relay"
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

// ClientCertOptions configures RequireClientCert.
type ClientCertOptions struct {
	// CommonNames are the accepted subject common names of the client certificate; default
	// [MetaClientCommonName]. Compared without regard to case (they are DNS names).
	CommonNames []string
	Logger      *slog.Logger
	// Observer, if set, is told of every refusal as Request("", relay.OutcomeForbidden, d).
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
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonNoClientCert, "")
		case len(r.TLS.VerifiedChains) == 0:
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonUntrustedChain, "",
				"cn", r.TLS.PeerCertificates[0].Subject.CommonName)
		default:
			cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
			if !nameIn(cn, names) {
				ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonWrongCommonName, cn, "cn", cn)
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
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonUntrustedPeer, "")
			return
		}
		vals := r.Header[header]
		if len(vals) == 0 || vals[0] == "" {
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonNoSubject, "", "header", header)
			return
		}
		if len(vals) > 1 {
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonBadSubject, "", "header", header, "err", "header repeated")
			return
		}
		cn, err := SubjectCommonName(vals[0])
		if err != nil {
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonBadSubject, "", "header", header, "err", err)
			return
		}
		if !nameIn(cn, names) {
			ref.refuse(w, r, start, http.StatusForbidden, relay.OutcomeForbidden, ReasonWrongCommonName, cn, "cn", cn)
			return
		}
		next.ServeHTTP(w, r)
	}), nil
}
