package relay

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"strings"
	"sync"

	"github.com/hubrelay/hubrelay/relay/internal/hexdigit"
)

// ErrSignature is the class of all signature failures; the receiver answers them with 401.
// Test with errors.Is; the concrete type is *SignatureError.
var ErrSignature = errors.New("bad signature")

// SignatureError says why a notification's signature was refused. Reason is one of "missing
// header", "malformed header", "mismatch" and "sha1 not allowed"; the error never holds the MAC
// received, the MAC expected or a secret, so it is safe to log.
type SignatureError struct {
	Reason string
}

// Error returns "bad signature: <reason>".
func (e *SignatureError) Error() string { return "bad signature: " + e.Reason }

// Is reports whether target is ErrSignature.
func (e *SignatureError) Is(target error) bool { return target == ErrSignature }

// The signature errors, shared so that refusing a flood of bad requests allocates nothing.
var (
	errSigMissing   = &SignatureError{Reason: "missing header"}
	errSigMalformed = &SignatureError{Reason: "malformed header"}
	errSigMismatch  = &SignatureError{Reason: "mismatch"}
	errSigSHA1      = &SignatureError{Reason: "sha1 not allowed"}
)

// Verifier checks the signature Meta puts on a notification, X-Hub-Signature-256 (and, when
// allowed, the legacy X-Hub-Signature), against every secret of one app, so secrets can be
// rotated without dropping notifications. It is safe for concurrent use.
type Verifier struct {
	keys      []*verifierKey
	allowSHA1 bool
}

// verifierKey is one app secret with pools of keyed HMAC states, which saves the key schedule
// and the allocations of hmac.New on every request.
type verifierKey struct {
	secret []byte
	sha256 sync.Pool // of *macState
	sha1   sync.Pool // of *macState
}

// macState is a reusable keyed HMAC with room for its sum.
type macState struct {
	h   hash.Hash
	sum []byte
}

// NewVerifier returns a Verifier for the given app secrets. Empty secrets are ignored: an HMAC
// keyed with nothing proves nothing. allowSHA1 accepts the legacy X-Hub-Signature (sha1=) when
// a notification carries no X-Hub-Signature-256.
func NewVerifier(secrets []string, allowSHA1 bool) *Verifier {
	v := &Verifier{allowSHA1: allowSHA1}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		k := &verifierKey{secret: []byte(s)}
		k.sha256.New = func() any {
			return &macState{h: hmac.New(sha256.New, k.secret), sum: make([]byte, 0, sha256.Size)}
		}
		k.sha1.New = func() any {
			return &macState{h: hmac.New(sha1.New, k.secret), sum: make([]byte, 0, sha1.Size)}
		}
		v.keys = append(v.keys, k)
	}
	return v
}

// Verify checks body against sig256, the value of X-Hub-Signature-256 ("sha256=<hex>"), and
// sig1, the value of X-Hub-Signature ("sha1=<hex>"). It returns nil when any secret produced
// the signature, else a *SignatureError. With sig256 present, sig1 is ignored; sig1 alone is
// accepted only if the Verifier allows SHA-1. Hex digits may be upper or lower case. MACs are
// compared in constant time with hmac.Equal.
func (v *Verifier) Verify(body []byte, sig256, sig1 string) error {
	switch {
	case sig256 != "":
		var want [sha256.Size]byte
		if !parseSignature(sig256, "sha256=", want[:]) {
			return errSigMalformed
		}
		for _, k := range v.keys {
			if k.equal(&k.sha256, body, want[:]) {
				return nil
			}
		}
		return errSigMismatch
	case sig1 != "":
		if !v.allowSHA1 {
			return errSigSHA1
		}
		var want [sha1.Size]byte
		if !parseSignature(sig1, "sha1=", want[:]) {
			return errSigMalformed
		}
		for _, k := range v.keys {
			if k.equal(&k.sha1, body, want[:]) {
				return nil
			}
		}
		return errSigMismatch
	}
	return errSigMissing
}

// equal computes the HMAC of body with a state from pool and compares it with want.
func (k *verifierKey) equal(pool *sync.Pool, body, want []byte) bool {
	m := pool.Get().(*macState)
	m.h.Reset()
	m.h.Write(body)
	m.sum = m.h.Sum(m.sum[:0])
	ok := hmac.Equal(m.sum, want)
	pool.Put(m)
	return ok
}

// parseSignature decodes "<prefix><hex>" into dst, which must be filled exactly. The prefix
// is matched without regard to case, surrounding spaces are ignored.
func parseSignature(sig, prefix string, dst []byte) bool {
	sig = strings.TrimSpace(sig)
	if len(sig) != len(prefix)+2*len(dst) || !strings.EqualFold(sig[:len(prefix)], prefix) {
		return false
	}
	h := sig[len(prefix):]
	for i := range dst {
		b, ok := hexdigit.Pair(h[2*i], h[2*i+1])
		if !ok {
			return false
		}
		dst[i] = b
	}
	return true
}

// Sign returns the X-Hub-Signature-256 value Meta would send for body: "sha256=" and the
// lowercase hex HMAC-SHA256 keyed with secret.
func Sign(body []byte, secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// SignSHA1 returns the legacy X-Hub-Signature value for body: "sha1=" and the lowercase hex
// HMAC-SHA1 keyed with secret.
func SignSHA1(body []byte, secret string) string {
	m := hmac.New(sha1.New, []byte(secret))
	m.Write(body)
	return "sha1=" + hex.EncodeToString(m.Sum(nil))
}
