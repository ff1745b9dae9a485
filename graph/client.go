package graph

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Defaults applied by New to zero Options fields; config's defaults come from here too.
const (
	DefaultBaseURL     = "https://graph.facebook.com"
	DefaultVersion     = "v23.0"
	DefaultTimeout     = 30 * time.Second
	DefaultMaxAttempts = 4
	DefaultMinBackoff  = time.Second
	DefaultMaxBackoff  = 30 * time.Second
)

// bodyLimit bounds how much of an answer is read; Graph's answers here are a few KB.
const bodyLimit = 1 << 20

// Log attribute keys.
const (
	keyMethod   = "method"
	keyPath     = "path"
	keyAttempt  = "attempt"
	keyStatus   = "status"
	keyError    = "error"
	keyDuration = "duration"
)

// Options configures a Client. Zero fields get the Default* values.
type Options struct {
	// BaseURL is the Graph API root, without the version: DefaultBaseURL, or a stand-in or
	// proxy in tests.
	BaseURL string
	// Version is the API version every path starts with, like "v23.0".
	Version string
	// Timeout bounds each attempt, from connecting to the end of the answer.
	Timeout time.Duration
	// MaxAttempts counts the attempts of one call, the first included.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait between attempts: MinBackoff·2^n with jitter,
	// at most MaxBackoff, which also caps a Retry-After.
	MinBackoff, MaxBackoff time.Duration
	// Logger gets a warning per retried attempt and a debug line per request (method, path,
	// status; never a token). Nil discards them.
	Logger *slog.Logger
	// HTTPClient supplies the transport. Nil: a transport of its own that does not follow
	// redirects (a redirect would carry the Authorization header elsewhere).
	HTTPClient *http.Client
	// UserAgent is sent with every request.
	UserAgent string
}

// Client calls the Graph API. It is safe for concurrent use.
type Client struct {
	base    string // BaseURL + "/" + Version
	version string
	ua      string
	log     *slog.Logger
	rc      *retryablehttp.Client
	// attempts is Options.MaxAttempts with its default.
	attempts int
	// maxBackoff is the longest wait between attempts.
	maxBackoff time.Duration
}

// New checks o and builds a Client.
func New(o Options) (*Client, error) {
	base := strings.TrimRight(cmp.Or(o.BaseURL, DefaultBaseURL), "/")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("graph base URL %q: use an http or https root like %s", base, DefaultBaseURL)
	}
	if u.User != nil || u.RawQuery != "" {
		return nil, errors.New("graph base URL: must not hold credentials or a query")
	}
	version := cmp.Or(o.Version, DefaultVersion)
	if strings.Contains(version, "/") {
		return nil, fmt.Errorf("graph version %q: use the form %s", version, DefaultVersion)
	}
	if o.Timeout < 0 || o.MinBackoff < 0 || o.MaxBackoff < 0 || o.MaxAttempts < 0 {
		return nil, errors.New("graph options: timeout, attempts and backoffs must not be negative")
	}
	minB := cmp.Or(o.MinBackoff, DefaultMinBackoff)
	maxB := max(cmp.Or(o.MaxBackoff, DefaultMaxBackoff), minB)
	attempts := cmp.Or(o.MaxAttempts, DefaultMaxAttempts)

	var hc http.Client
	if o.HTTPClient != nil {
		hc = *o.HTTPClient
	} else {
		hc = http.Client{
			Transport:     http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	hc.Timeout = cmp.Or(o.Timeout, DefaultTimeout)

	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{base: base + "/" + version, version: version, ua: cmp.Or(o.UserAgent, "hubrelay"), log: log, attempts: attempts, maxBackoff: maxB}
	c.rc = &retryablehttp.Client{
		HTTPClient:   &hc,
		RetryWaitMin: minB,
		RetryWaitMax: maxB,
		RetryMax:     attempts - 1,
		CheckRetry:   c.checkRetry,
		Backoff:      backoff,
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
		RequestLogHook: func(_ retryablehttp.Logger, req *http.Request, retry int) {
			if st, ok := req.Context().Value(callKey{}).(*callState); ok {
				st.attempts = retry + 1
			}
		},
	}
	return c, nil
}

// Version returns the pinned API version.
func (c *Client) Version() string { return c.version }

// callKey is the context key of a call's *callState.
type callKey struct{}

// callState is what one call's attempts share.
type callState struct {
	method, path string
	attempts     int
	scrub        *strings.Replacer
}

// call makes one Graph call: params go in the form body of a POST, in the query otherwise;
// the token goes in the Authorization header. secrets are further literals the call carries
// (a verify token) that must never be printed. A 2xx answer is decoded into out, when not
// nil; anything else is an *Error.
func (c *Client) call(ctx context.Context, method, path string, tok Token, params url.Values, secrets []string, out any) error {
	if tok.IsZero() {
		return &Error{Method: method, Path: "/" + c.version + path, Cause: errors.New("no access token")}
	}
	params = cloneValues(params)
	if tok.proof != "" {
		params.Set("appsecret_proof", tok.proof)
	}
	st := &callState{method: method, path: "/" + c.version + path, scrub: scrubber(tok.secrets, secrets)}
	target := c.base + path
	var body any
	if method == http.MethodPost {
		body = []byte(params.Encode())
	} else if len(params) > 0 {
		target += "?" + params.Encode()
	}
	req, err := retryablehttp.NewRequestWithContext(context.WithValue(ctx, callKey{}, st), method, target, body)
	if err != nil {
		return &Error{Method: method, Path: st.path, Cause: errors.New("build request: " + st.scrub.Replace(err.Error()))}
	}
	req.Header.Set("Authorization", "Bearer "+tok.value)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	start := time.Now()
	resp, err := c.rc.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return &Error{Method: method, Path: st.path, Attempts: max(st.attempts, 1), Cause: ctxErr}
		}
		return &Error{Method: method, Path: st.path, Attempts: max(st.attempts, 1), Cause: errors.New(scrubErr(st.scrub, err))}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, bodyLimit))
	c.log.Debug("graph call", keyMethod, method, keyPath, st.path, keyStatus, resp.StatusCode,
		keyAttempt, max(st.attempts, 1), keyDuration, time.Since(start))
	if err != nil {
		return &Error{Method: method, Path: st.path, Status: resp.StatusCode, Attempts: max(st.attempts, 1), Cause: errors.New("read answer: " + scrubErr(st.scrub, err))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := parseError(resp, b)
		e.Method, e.Path, e.Attempts = method, st.path, max(st.attempts, 1)
		scrubError(e, st.scrub)
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return &Error{Method: method, Path: st.path, Status: resp.StatusCode, Attempts: max(st.attempts, 1), Cause: fmt.Errorf("decode answer: %v", err)}
	}
	return nil
}

// checkRetry decides, for retryablehttp, whether to try again: connection errors (but not
// certificate errors), and answers whose *Error is Retryable. It reads the answer's body to
// see Graph's error code and puts it back for the next reader.
func (c *Client) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return false, ctxErr
	}
	st, _ := ctx.Value(callKey{}).(*callState)
	if st == nil {
		st = &callState{scrub: strings.NewReplacer()}
	}
	if err != nil {
		retry, perr := retryablehttp.DefaultRetryPolicy(ctx, resp, err)
		if retry && perr == nil && st.attempts < c.attempts {
			c.log.Warn("graph call failed, retrying", keyMethod, st.method, keyPath, st.path, keyAttempt, st.attempts, keyError, scrubErr(st.scrub, err))
		}
		return retry, perr
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	b, rerr := io.ReadAll(io.LimitReader(resp.Body, bodyLimit))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	if rerr != nil {
		return true, nil // the answer broke off: try again
	}
	e := parseError(resp, b)
	if !e.Retryable() || e.RegainAccess > c.maxBackoff {
		return false, nil // final, or throttled for longer than this call may wait
	}
	if st.attempts >= c.attempts {
		return true, nil // the last attempt: retryablehttp stops here, and call reports it
	}
	scrubError(e, st.scrub)
	e.Method, e.Path = st.method, st.path
	c.log.Warn("graph call failed, retrying", keyMethod, st.method, keyPath, st.path, keyAttempt, st.attempts, keyStatus, resp.StatusCode, keyError, describe(e))
	return true, nil
}

// describe is an Error's message and details without the call, for log lines that already
// name it.
func describe(e *Error) string {
	if e.Message == "" {
		return e.Error()
	}
	return e.Message + " (" + strings.Join(e.Details(), ", ") + ")"
}

// backoff waits for Retry-After when Graph sends one (at most hi); otherwise lo·2^attempt
// capped at hi, with "equal jitter" (between half and all of it).
func backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && resp.Header.Get("Retry-After") != "" {
		return min(retryablehttp.DefaultBackoff(lo, hi, attempt, resp), hi)
	}
	d := lo
	for i := 0; i < attempt && d < hi; i++ {
		d *= 2
	}
	if d > hi || d <= 0 {
		d = hi
	}
	if half := d / 2; half > 0 {
		d = half + rand.N(half+1)
	}
	return d
}

// scrubError removes secrets from every text Meta sent.
func scrubError(e *Error, s *strings.Replacer) {
	e.Message = s.Replace(e.Message)
	e.Type = s.Replace(e.Type)
	e.FBTraceID = s.Replace(e.FBTraceID)
	e.UserTitle = s.Replace(e.UserTitle)
	e.UserMessage = s.Replace(e.UserMessage)
}

// scrubErr returns a transport error's message without the request URL (url.Error repeats
// it, query included) and without secrets.
func scrubErr(s *strings.Replacer, err error) string {
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		err = uerr.Err
	}
	return s.Replace(err.Error())
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v)+1)
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
