package webhook

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/hubrelay/hubrelay/internal/httptoken"
	"github.com/hubrelay/hubrelay/relay"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultTimeout    = 10 * time.Second
	DefaultMinBackoff = 200 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
)

// Log attribute keys.
const (
	keySink = "sink"
)

const (
	// redacted replaces every secret in logs and errors.
	redacted = "REDACTED"
	// minSecretLen is the length under which a literal (header value, query value) is not
	// scrubbed from free text: shorter ones are not secrets and would mangle messages.
	minSecretLen = 4
	// detailLimit is how much of a failed response's body Config.Detail gets to see.
	detailLimit = 512
	// drainLimit bounds how much of a response body is read to reuse the connection.
	drainLimit = 64 << 10
)

// Config describes one webhook destination.
type Config struct {
	// Name is the sink name; it starts every error message.
	Name string
	// Method is the HTTP method, POST when empty.
	Method string
	// URL is the destination. Userinfo and query values are redacted wherever it is printed.
	URL string
	// HidePath redacts the whole path too (a Slack webhook URL is itself the secret).
	HidePath bool
	// Secrets lists further literals never to print: header values, signing secrets.
	Secrets []string
	// Timeout bounds each attempt (connect to end of body). Zero keeps Client's timeout, or
	// DefaultTimeout when there is none.
	Timeout time.Duration
	// Retries is the number of quick retries inside one Do call (retryablehttp RetryMax).
	Retries int
	// MinBackoff and MaxBackoff bound the waits between quick retries; MaxBackoff also caps a
	// server's Retry-After. Zero means DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives retryablehttp's request logs, scrubbed. Nil discards them.
	Logger *slog.Logger
	// Client is the base HTTP client (its transport and TLS settings are used). Nil means a
	// pooled transport that does not follow redirects.
	Client *http.Client
	// Detail returns a short, secret-free description of a failed response from the first
	// bytes of its body, such as Slack's error code. Nil: bodies are never shown.
	Detail func(body []byte) string
}

// Client posts bodies to one destination with quick retries. It is safe for concurrent use.
type Client struct {
	name     string
	method   string
	url      string
	redacted string   // URL as it may be printed
	prefix   string   // "name: METHOD redacted-url: "
	u        *url.URL // url parsed once; each request gets a copy
	hc       *http.Client
	ownHC    bool          // hc's transport is the Client's own (Config.Client nil)
	closed   atomic.Bool   // Close was called
	h1       *h1           // attempts without net/http's transport, when the destination allows (h1.go)
	timeout  time.Duration // hc.Timeout: each attempt's bound
	retries  int           // quick retries after the first attempt
	minB     time.Duration // the quick retries' backoff bounds
	maxB     time.Duration
	logger   *scrubLogger // debug lines of the attempts, scrubbed
	scrub    *strings.Replacer
	detail   func([]byte) string
}

// New checks c and builds a Client.
func New(c Config) (*Client, error) {
	if c.Name == "" {
		return nil, errors.New("sink name is empty")
	}
	if c.URL == "" {
		return nil, fmt.Errorf("%s: url is empty", c.Name)
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		// url.Error repeats the whole URL; keep only the reason.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%s: parse url: %w", c.Name, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%s: url scheme must be http or https (got %q)", c.Name, u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%s: url has no host", c.Name)
	}
	method := cmp.Or(c.Method, http.MethodPost)
	if !httptoken.Valid(method) {
		return nil, fmt.Errorf("%s: invalid method %q", c.Name, method)
	}
	if c.Retries < 0 {
		return nil, fmt.Errorf("%s: in-process retries must not be negative (got %d)", c.Name, c.Retries)
	}
	if c.Timeout < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 {
		return nil, fmt.Errorf("%s: timeout and backoffs must not be negative", c.Name)
	}
	minB := cmp.Or(c.MinBackoff, DefaultMinBackoff)
	maxB := max(cmp.Or(c.MaxBackoff, DefaultMaxBackoff), minB)

	var hc http.Client
	if c.Client != nil {
		hc = *c.Client
	} else {
		hc = *defaultClient()
	}
	if c.Timeout > 0 {
		hc.Timeout = c.Timeout
	} else if hc.Timeout == 0 {
		hc.Timeout = DefaultTimeout
	}

	wc := &Client{
		name:     c.Name,
		method:   method,
		url:      c.URL,
		redacted: redactURL(u, c.HidePath),
		detail:   c.Detail,
	}
	wc.prefix = c.Name + ": " + method + " " + wc.redacted + ": "
	wc.scrub = scrubber(u, c.HidePath, wc.redacted, c.Secrets)

	logger := c.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	wc.hc = &hc
	wc.u = u
	wc.timeout = hc.Timeout
	if c.Client == nil {
		wc.ownHC = true
		wc.h1 = newH1(u, method)
	}
	wc.retries, wc.minB, wc.maxB = c.Retries, minB, maxB
	wc.logger = &scrubLogger{l: logger.With(keySink, c.Name), scrub: wc.scrub, url: wc.redacted}
	return wc, nil
}

// Close closes the Client's idle connections (those of a Config.Client's transport are left
// alone) and makes later Do calls fail without sending anything. Calls of Do still under way
// finish; their connections are closed, not kept. A second Close does nothing.
func (c *Client) Close() {
	if c.closed.Swap(true) {
		return
	}
	if c.h1 != nil {
		c.h1.closeIdle()
	}
	if c.ownHC {
		c.hc.CloseIdleConnections()
	}
}

// Redacted returns the destination URL as it may be printed.
func (c *Client) Redacted() string { return c.redacted }

// Do sends body with header (which it takes over) and retries quickly as configured. It returns
// nil on a 2xx answer; a *relay.StatusError otherwise (permanent for 4xx other than 408 and
// 429); or, when ctx ends first, an error wrapping ctx.Err(). Bodies are always drained and
// closed.
//
// The attempts are made here rather than through go-retryablehttp, keeping its policy
// (checkRetry, backoff) and outcomes: its Client.Do cost a URL parse, a request wrapper and
// log arguments per request, and closed every idle connection of the transport after any
// failed call, so that during an outage each delivery dialled (for https, handshook) anew.
func (c *Client) Do(ctx context.Context, header http.Header, body []byte) error {
	if c.closed.Load() {
		return errors.New(c.prefix + "client closed")
	}
	if header == nil {
		header = make(http.Header)
	}
	host := c.u.Host
	if h := header.Get("Host"); h != "" {
		host = h
	}
	debug := c.logger.enabled()
	if debug {
		c.logger.Debug("performing request", "method", c.method, "url", c.redacted)
	}
	for attempt := 0; ; attempt++ {
		resp, doErr := c.roundTrip(ctx, header, host, body)
		retry, checkErr := checkRetry(ctx, resp, doErr)
		if doErr != nil && debug {
			c.logger.Error("request failed", "error", doErr, "method", c.method, "url", c.redacted)
		}
		if !retry && doErr == nil && checkErr == nil {
			if resp.StatusCode >= 200 && resp.StatusCode < 300 {
				drain(resp.Body)
				return nil
			}
			return c.statusError(resp, nil, attempt+1)
		}
		if !retry || attempt >= c.retries {
			if ctxErr := ctx.Err(); ctxErr != nil {
				if resp != nil {
					drain(resp.Body)
				}
				return fmt.Errorf("%s%w", c.prefix, ctxErr)
			}
			return c.statusError(resp, cmp.Or(checkErr, doErr), attempt+1)
		}
		if doErr == nil {
			drain(resp.Body) // to reuse the connection
		}
		wait := backoff(c.minB, c.maxB, attempt, resp)
		if debug {
			c.logger.Debug("retrying request", "method", c.method, "url", c.redacted, "timeout", wait, "remaining", c.retries-attempt)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%s%w", c.prefix, ctx.Err())
		case <-timer.C:
		}
	}
}

// roundTrip makes one attempt: through h1 when the destination allows, else net/http.
func (c *Client) roundTrip(ctx context.Context, header http.Header, host string, body []byte) (*http.Response, error) {
	if c.h1 != nil {
		return c.h1.roundTrip(ctx, header, host, body, c.timeout)
	}
	return c.hc.Do(c.request(ctx, header, host, body))
}

// request builds one attempt's request: the URL parsed by New (copied, since a request owns
// its URL), the body rewindable for the transport's own retries and redirects.
func (c *Client) request(ctx context.Context, header http.Header, host string, body []byte) *http.Request {
	u := *c.u
	req := (&http.Request{
		Method: c.method, URL: &u, Host: host, Header: header,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		ContentLength: int64(len(body)),
		Body:          http.NoBody,
		GetBody:       func() (io.ReadCloser, error) { return http.NoBody, nil },
	}).WithContext(ctx)
	if len(body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return req
}

// statusError describes the final outcome of one Do call and closes resp's body.
func (c *Client) statusError(resp *http.Response, cause error, attempts int) *relay.StatusError {
	var b strings.Builder
	b.WriteString(c.prefix)
	se := &relay.StatusError{}
	if resp != nil {
		se.Status = resp.StatusCode
		se.Perm = Permanent(resp.StatusCode)
		b.WriteString("status ")
		b.WriteString(strconv.Itoa(resp.StatusCode))
		if c.detail != nil {
			head, _ := io.ReadAll(io.LimitReader(resp.Body, detailLimit))
			if d := c.detail(head); d != "" {
				b.WriteByte(' ')
				b.WriteString(c.scrub.Replace(d))
			}
		}
		drain(resp.Body)
		b.WriteString(" after ")
		b.WriteString(plural(attempts, "attempt"))
	} else {
		b.WriteString("after ")
		b.WriteString(plural(attempts, "attempt"))
		if cause != nil {
			b.WriteString(": ")
			b.WriteString(c.scrubErr(cause))
		}
	}
	se.Msg = b.String()
	return se
}

// scrubErr returns err's message without the request URL or any secret.
func (c *Client) scrubErr(err error) string {
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		err = uerr.Err // drop "Post \"url\"": the URL is already in the prefix, redacted
	}
	return c.scrub.Replace(err.Error())
}

// Permanent reports whether an HTTP status means retrying cannot help: 4xx other than 408
// Request Timeout and 429 Too Many Requests.
func Permanent(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}

// checkRetry retries connection errors and timeouts (but not TLS certificate, scheme or
// redirect errors, as retryablehttp's default policy), 408, 429 and 5xx other than 501.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return false, ctxErr
	}
	if err != nil {
		return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
	}
	switch s := resp.StatusCode; {
	case s == http.StatusRequestTimeout, s == http.StatusTooManyRequests:
		return true, nil
	case s >= 500 && s != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
}

// backoff waits for Retry-After on 429 and 503 (at most hi); otherwise it is relay's quick
// retry backoff (relay.QuickBackoff) after retryablehttp's attempt (0-based).
func backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) &&
		resp.Header.Get("Retry-After") != "" {
		// DefaultBackoff parses both forms of Retry-After (seconds, HTTP date).
		return min(retryablehttp.DefaultBackoff(lo, hi, attempt, resp), hi)
	}
	return relay.QuickBackoff(lo, hi, attempt+1, relay.DefaultRand)
}

// defaultClient returns a client with its own pooled transport, sized for a sink delivering
// many changes at once, that does not follow redirects (a redirect would carry the headers,
// and with 301/302 turn the POST into a GET).
func defaultClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 64
	return &http.Client{
		Transport:     t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// drain reads a little of body so the connection can be reused, then closes it.
func drain(body io.ReadCloser) {
	if b, ok := body.(*h1Body); ok {
		b.drain(drainLimit)
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(body, drainLimit))
	_ = body.Close()
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// redactURL returns u without userinfo, with query values replaced, and with its path
// replaced by "…" when hidePath is set.
func redactURL(u *url.URL, hidePath bool) string {
	s := u.Scheme + "://" + u.Host
	if hidePath {
		return s + "/…"
	}
	s += u.EscapedPath()
	if u.RawQuery != "" {
		q := u.Query()
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, url.QueryEscape(k)+"="+redacted)
		}
		slices.Sort(keys)
		s += "?" + strings.Join(keys, "&")
	}
	return s
}

// scrubber returns a replacer that turns every printed form of u into red and every secret
// part of it, and every extra literal, into "REDACTED". Longer strings are matched first.
func scrubber(u *url.URL, hidePath bool, red string, extra []string) *strings.Replacer {
	type pair struct{ old, new string }
	var pairs []pair
	seen := map[string]bool{}
	add := func(old, new string, minLen int) {
		if len(old) < minLen || seen[old] {
			return
		}
		seen[old] = true
		pairs = append(pairs, pair{old, new})
	}
	// Whole URL, as url.URL, net/http (user:***@) and retryablehttp (user:xxxxx@) print it.
	full := u.String()
	add(full, red, 1)
	add(u.Redacted(), red, 1)
	if u.User != nil {
		add(strings.Replace(full, u.User.String()+"@", u.User.Username()+":***@", 1), red, 1)
		add(u.User.String(), redacted, 1)
		add(u.User.Username(), redacted, minSecretLen)
		if p, ok := u.User.Password(); ok {
			add(p, redacted, 1)
			add(url.QueryEscape(p), redacted, 1)
		}
	}
	if u.RawQuery != "" {
		add(u.RawQuery, redacted, 1)
		for _, vs := range u.Query() {
			for _, v := range vs {
				add(v, redacted, minSecretLen)
				add(url.QueryEscape(v), redacted, minSecretLen)
			}
		}
	}
	if hidePath && u.Path != "" && u.Path != "/" {
		add(u.EscapedPath(), "/…", 1)
		add(u.Path, "/…", 1)
		for seg := range strings.SplitSeq(u.Path, "/") {
			add(seg, redacted, minSecretLen)
		}
	}
	for _, s := range extra {
		add(s, redacted, minSecretLen)
	}
	slices.SortStableFunc(pairs, func(a, b pair) int { return len(b.old) - len(a.old) })
	args := make([]string, 0, 2*len(pairs))
	for _, p := range pairs {
		args = append(args, p.old, p.new)
	}
	return strings.NewReplacer(args...)
}

// scrubLogger is the retryablehttp.LeveledLogger handed to retryablehttp: it replaces the URL
// it logs with the redacted one, scrubs secrets from every string and error, and logs every
// line at debug: these are per-try lines, and the delivery engine logs the attempt's outcome
// (rescheduled, dead-lettered, delivered) itself.
type scrubLogger struct {
	l     *slog.Logger
	scrub *strings.Replacer
	url   string
}

var _ retryablehttp.LeveledLogger = (*scrubLogger)(nil)

func (s *scrubLogger) Error(msg string, kv ...any) { s.log(slog.LevelDebug, msg, kv) }
func (s *scrubLogger) Warn(msg string, kv ...any)  { s.log(slog.LevelDebug, msg, kv) }
func (s *scrubLogger) Info(msg string, kv ...any)  { s.log(slog.LevelDebug, msg, kv) }
func (s *scrubLogger) Debug(msg string, kv ...any) { s.log(slog.LevelDebug, msg, kv) }

// enabled reports whether the attempts' debug lines are wanted (their arguments cost
// allocations, so the caller asks first).
func (s *scrubLogger) enabled() bool { return s.l.Enabled(context.Background(), slog.LevelDebug) }

func (s *scrubLogger) log(level slog.Level, msg string, kv []any) {
	ctx := context.Background()
	if !s.l.Enabled(ctx, level) {
		return
	}
	out := make([]any, len(kv))
	for i, v := range kv {
		if i%2 == 1 && kv[i-1] == "url" {
			out[i] = s.url
			continue
		}
		switch v := v.(type) {
		case time.Duration, int, bool:
			out[i] = v
		case string:
			out[i] = s.scrub.Replace(v)
		case error:
			out[i] = s.scrub.Replace(v.Error())
		case fmt.Stringer:
			out[i] = s.scrub.Replace(v.String())
		default:
			out[i] = v
		}
	}
	s.l.Log(ctx, level, s.scrub.Replace(msg), out...)
}
