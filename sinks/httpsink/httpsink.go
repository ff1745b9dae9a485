package httpsink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/sinks/internal/webhook"
)

// Header names the sink sets.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderChangeID       = "X-Hubrelay-Change-Id"
	HeaderSignature      = "X-Hubrelay-Signature-256"
	HeaderMetaSignature  = "X-Hub-Signature-256"
	HeaderBatchSize      = "X-Hubrelay-Batch-Size"
)

// BatchKeyPrefix starts the Idempotency-Key of a batch request: "batch:" and the lowercase hex
// SHA-256 of the batch's change ids joined by "\n" (see BatchKey).
const BatchKeyPrefix = "batch:"

// Options configures a Sink. The command fills it from the sink's config.
type Options struct {
	// Name is the sink name, used in errors and logs.
	Name string
	// URL is the endpoint (http or https). Userinfo and query values are treated as secrets.
	URL string
	// Method is the HTTP method, POST when empty.
	Method string
	// Headers are sent with every request; their values are treated as secrets. They cannot
	// replace the headers the sink sets itself.
	Headers map[string]string
	// Timeout bounds each request; zero means Client's timeout or 10s.
	Timeout time.Duration
	// Raw sends ev.Value (the whole original notification) with Meta's X-Hub-Signature-256
	// (ev.Signature) instead of the envelope.
	Raw bool
	// SignSecret, when set, adds X-Hubrelay-Signature-256: sha256=<hex HMAC-SHA256 of the body>.
	SignSecret string
	// InProcessRetries is the number of quick retries inside one Deliver call.
	InProcessRetries int
	// MinBackoff and MaxBackoff bound the waits between quick retries (zero: 200ms and 30s);
	// MaxBackoff also caps a Retry-After.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives per-attempt logs, secrets removed; nil discards them.
	Logger *slog.Logger
	// Client is an optional base client (tests, TLS); nil means a pooled transport sized for
	// concurrent deliveries.
	Client *http.Client
}

// Sink posts changes to one HTTP endpoint. It is safe for concurrent use.
type Sink struct {
	name    string
	raw     bool
	secret  []byte
	headers http.Header // user headers, canonical keys; shared read-only by every request
	client  *webhook.Client
}

var (
	_ relay.BatchSink  = (*Sink)(nil)
	_ relay.SinkCloser = (*Sink)(nil)
)

// fixed header values, shared read-only by every request.
var (
	valJSON      = []string{"application/json"}
	valUserAgent = []string{"hubrelay"}
)

// reserved are the headers the sink sets itself.
var reserved = map[string]bool{
	"Content-Type": true, "User-Agent": true, "Content-Length": true,
	HeaderIdempotencyKey: true, HeaderChangeID: true, HeaderSignature: true, HeaderMetaSignature: true,
	HeaderBatchSize: true,
}

// New checks o and returns a Sink.
func New(o Options) (*Sink, error) {
	s := &Sink{name: o.Name, raw: o.Raw, headers: make(http.Header, len(o.Headers))}
	secrets := make([]string, 0, len(o.Headers)+1)
	for k, v := range o.Headers {
		if !validHeaderName(k) {
			return nil, fmt.Errorf("%s: invalid header name %q", o.Name, k)
		}
		ck := http.CanonicalHeaderKey(k)
		if reserved[ck] {
			return nil, fmt.Errorf("%s: header %s is set by the sink", o.Name, ck)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return nil, fmt.Errorf("%s: header %s: value holds a line break or NUL", o.Name, ck)
		}
		s.headers[ck] = []string{v}
		secrets = append(secrets, v)
	}
	if o.SignSecret != "" {
		s.secret = []byte(o.SignSecret)
		secrets = append(secrets, o.SignSecret)
	}
	c, err := webhook.New(webhook.Config{
		Name:       o.Name,
		Method:     o.Method,
		URL:        o.URL,
		Secrets:    secrets,
		Timeout:    o.Timeout,
		Retries:    o.InProcessRetries,
		MinBackoff: o.MinBackoff,
		MaxBackoff: o.MaxBackoff,
		Logger:     o.Logger,
		Client:     o.Client,
	})
	if err != nil {
		return nil, err
	}
	s.client = c
	return s, nil
}

// Name returns the sink name.
func (s *Sink) Name() string { return s.name }

// Close closes the sink's idle keep-alive connections; Deliver fails afterwards without
// sending anything. It does not block, and a second Close does nothing.
func (s *Sink) Close(context.Context) error {
	s.client.Close()
	return nil
}

// Deliver sends ev in one request, retried quickly as configured. It returns nil once the
// endpoint answered 2xx. Sending the same change again is harmless only if the endpoint
// drops repeats by Idempotency-Key. Errors: a *relay.StatusError, permanent (wrapping
// relay.ErrPermanent) for 4xx other than 408 and 429; an error wrapping ctx.Err() when ctx
// ends first.
func (s *Sink) Deliver(ctx context.Context, ev *relay.Event) error {
	var body []byte
	h := make(http.Header, len(s.headers)+7)
	for k, v := range s.headers {
		h[k] = v
	}
	if s.raw {
		if len(ev.Value) == 0 {
			return &relay.StatusError{Msg: s.name + ": raw body: change " + ev.ID + " holds no notification", Perm: true}
		}
		body = ev.Value
		if strings.HasPrefix(ev.Signature, "sha1=") {
			// The notification was verified with the legacy header only (allow_sha1).
			h["X-Hub-Signature"] = []string{ev.Signature}
		} else if ev.Signature != "" {
			h[HeaderMetaSignature] = []string{ev.Signature}
		}
	} else {
		body = relay.AppendEnvelope(make([]byte, 0, len(ev.Value)+256+len(ev.ID)), ev)
	}
	h["Content-Type"] = valJSON
	h["User-Agent"] = valUserAgent
	id := []string{ev.ID}
	h[HeaderIdempotencyKey] = id
	h[HeaderChangeID] = id
	if s.secret != nil {
		h[HeaderSignature] = []string{Sign(body, string(s.secret))}
	}
	return s.client.Do(ctx, h, body)
}

// DeliverBatch sends evs, in order, in one request whose body is the JSON array of their
// envelopes, and returns nil once the endpoint answered 2xx: every change was taken. A single
// change still goes out as a one-element array, so a receiver sees one format whatever the
// batch size. The request carries X-Hubrelay-Batch-Size: len(evs) and Idempotency-Key:
// BatchKey(evs), but no X-Hubrelay-Change-Id (the receiver finds each change's id in its
// element and should drop repeats by it); with Options.SignSecret the signature covers the
// whole array. Retries and errors are those of Deliver, for the batch as a unit: an error
// means no change of it may be assumed taken.
//
// A raw sink (Options.Raw) does not batch: a notification is only verifiable as the exact
// bytes Meta signed. DeliverBatch then sends each change with Deliver, in order, and stops at
// the first error, which it returns (the changes before it were taken and will be sent again
// if the engine retries the batch). An empty evs is delivered trivially.
func (s *Sink) DeliverBatch(ctx context.Context, evs []*relay.Event) error {
	if len(evs) == 0 {
		return nil
	}
	if s.raw {
		// Each raw notification carries its own Meta signature, so raw sinks never batch (the
		// config refuses it). A single change is delivered as such; more is a caller's bug,
		// refused before anything is sent so that nothing is sent twice on a retry.
		if len(evs) == 1 {
			return s.Deliver(ctx, evs[0])
		}
		return &relay.StatusError{Msg: s.name + ": a raw sink cannot deliver batches", Perm: true}
	}
	size := 2 + len(evs) - 1
	for _, ev := range evs {
		size += len(ev.Value) + 256 + len(ev.ID)
	}
	body := make([]byte, 0, size)
	body = append(body, '[')
	for i, ev := range evs {
		if i > 0 {
			body = append(body, ',')
		}
		body = relay.AppendEnvelope(body, ev)
	}
	body = append(body, ']')

	h := make(http.Header, len(s.headers)+6)
	for k, v := range s.headers {
		h[k] = v
	}
	h["Content-Type"] = valJSON
	h["User-Agent"] = valUserAgent
	h[HeaderIdempotencyKey] = []string{BatchKey(evs)}
	h[HeaderBatchSize] = []string{strconv.Itoa(len(evs))}
	if s.secret != nil {
		h[HeaderSignature] = []string{Sign(body, string(s.secret))}
	}
	err := s.client.Do(ctx, h, body)
	if se, ok := errors.AsType[*relay.StatusError](err); ok {
		se.Msg += " (batch of " + strconv.Itoa(len(evs)) + " changes)"
	}
	return err
}

// BatchKey returns the Idempotency-Key of a batch request: BatchKeyPrefix and the lowercase
// hex SHA-256 of the ids of evs joined by "\n". The same changes in the same order give the
// same key, so a retried batch can be recognised; receivers should still drop repeats per
// change id, since the engine may later regroup the same changes differently.
func BatchKey(evs []*relay.Event) string {
	n := len(evs) - 1
	for _, ev := range evs {
		n += len(ev.ID)
	}
	joined := make([]byte, 0, n)
	for i, ev := range evs {
		if i > 0 {
			joined = append(joined, '\n')
		}
		joined = append(joined, ev.ID...)
	}
	sum := sha256.Sum256(joined)
	out := make([]byte, 0, len(BatchKeyPrefix)+2*sha256.Size)
	out = append(out, BatchKeyPrefix...)
	return string(hex.AppendEncode(out, sum[:]))
}

// Sign returns the X-Hubrelay-Signature-256 value of body: "sha256=" and the lowercase hex
// HMAC-SHA256 of body keyed with secret. It is relay.Sign (the same scheme and argument order
// as Meta's X-Hub-Signature-256), so a receiver verifies both with one function.
func Sign(body []byte, secret string) string { return relay.Sign(body, secret) }

// validHeaderName reports whether k is an RFC 9110 token.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
