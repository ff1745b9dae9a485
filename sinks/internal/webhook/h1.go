package webhook

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// h1 makes the attempts of a Client whose destination is plain http, reached directly (no
// proxy) with the default transport: each attempt writes its request and reads the answer on
// the calling goroutine, over a keep-alive connection of its own pool. net/http's transport
// hands every request to two goroutines of its connection (a write loop and a read loop) and
// back, which was most of the relay's delivery CPU (two exchanges per change with two sinks);
// https, a proxy and a caller's own http.Client keep net/http.
//
// It writes HTTP/1.1 with a Content-Length and reads the answer with http.ReadResponse
// (chunked, close-delimited and 1xx answers included). A connection is reused only after its
// answer was read to the end and the server did not ask to close it, and only if a look at
// its socket just before (alive: a peek that does not wait) finds it open with nothing to
// read: one the server closed meanwhile is dropped and the next taken, one holding bytes
// nobody asked for (an unsolicited answer, which would be read as the next request's) is
// closed. A request is made again on another connection, without costing an attempt, only
// when nothing of it was sent; once it was written, a failure before the answer (EOF, a
// reset: the server may have acted on it) is the attempt's outcome and Do's retries and
// backoff decide. net/http's transport differs there: it replays a request it deems
// replayable (one with an Idempotency-Key, say) after a reused connection failed before the
// answer, without counting it.
type h1 struct {
	addr        string // host:port dialled
	method      string
	requestURI  string
	req         *http.Request // what http.ReadResponse needs to know of the request (its method)
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration
	auth        string // "Basic …" from the URL's userinfo, sent when the caller sets no Authorization

	mu     sync.Mutex
	idle   []*h1Conn // most recently used last
	closed bool      // closeIdle was called: connections are no longer kept
}

// h1Conn is one connection of an h1 pool.
type h1Conn struct {
	nc      net.Conn
	rc      syscall.RawConn  // nc's, for alive's peek (nil when nc has none)
	written int64            // bytes of the current request handed to nc (Write)
	peeker                   // alive's state
	lr      io.LimitedReader // nc, up to what one answer may bring (answerLimit)
	br      *bufio.Reader    // reads lr
	bw      *bufio.Writer
	idleAt  time.Time
	// watched is the context whose end cuts the connection's exchanges short (unwatch ends
	// that), kept from one exchange to the next while the caller's context is the same (the
	// delivery engine passes one per sink): a watch costs an allocation and a lock of the
	// context. cut is set, before the deadline is moved into the past, once it ended; the
	// connection is then not used again.
	watched context.Context
	unwatch func() bool
	cut     atomic.Bool
	h       *h1      // the pool the connection goes back to
	ans     h1Answer // the connection's current answer body
	gen     uint64   // the exchange ans belongs to (an h1Body of another is stale)
}

// watch makes the end of ctx cut pc's exchanges short, and reports false when pc was cut
// already (by a context that ended).
func (pc *h1Conn) watch(ctx context.Context) bool {
	if pc.watched == ctx {
		return !pc.cut.Load()
	}
	if pc.unwatch != nil && !pc.unwatch() {
		return false // the previous context ended: its cut may still be on its way
	}
	pc.watched = ctx
	pc.unwatch = context.AfterFunc(ctx, func() {
		pc.cut.Store(true)
		_ = pc.nc.SetDeadline(aLongTimeAgo)
	})
	return true
}

// Write writes p to the connection, counting what was handed over (written): a request of
// which nothing was sent may be made again elsewhere.
func (pc *h1Conn) Write(p []byte) (int, error) {
	n, err := pc.nc.Write(p)
	pc.written += int64(n)
	return n, err
}

// close closes pc and ends its watch.
func (pc *h1Conn) close() {
	if pc.unwatch != nil {
		pc.unwatch()
	}
	_ = pc.nc.Close()
}

// newH1 returns the direct HTTP/1.1 client of u, or nil when u needs net/http (https, or a
// proxy from the environment, as the default transport would use).
func newH1(u *url.URL, method string) *h1 {
	if u.Scheme != "http" || u.Opaque != "" {
		return nil
	}
	if p, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err != nil || p != nil {
		return nil
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	t := http.DefaultTransport.(*http.Transport)
	var auth string
	if u.User != nil {
		// As net/http's Client: the URL's userinfo is Basic authentication.
		pw, _ := u.User.Password()
		auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw))
	}
	return &h1{
		auth:        auth,
		addr:        net.JoinHostPort(u.Hostname(), port),
		method:      method,
		requestURI:  u.RequestURI(),
		req:         &http.Request{Method: method, URL: u},
		dialer:      net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     defaultMaxIdlePerHost,
		idleTimeout: t.IdleConnTimeout,
	}
}

// defaultMaxIdlePerHost is the idle connections a sink keeps (defaultClient's
// MaxIdleConnsPerHost).
const defaultMaxIdlePerHost = 64

// answerLimit bounds what one exchange reads of a connection, as the default transport's
// MaxResponseHeaderBytes bounds the header (10 MiB), plus the part of a body that is read
// (drainLimit): a destination sending an endless header costs a failed attempt, not memory.
const answerLimit = 10<<20 + drainLimit

// errNothingSent marks a failure before any byte of the request was sent: the request may be
// made again on another connection.
var errNothingSent = errors.New("nothing of the request was sent")

// largeBody is the body size from which the write may block on a server that does not read
// (socket buffers full): its deadline then leaves the answer's read a reserve of the attempt
// (earlyAnswerWait at most), for an answer sent before the body was taken (413).
const largeBody = 64 << 10

// earlyAnswerWait bounds the reserve of an attempt kept for reading an answer after a large
// body's write failed or timed out.
const earlyAnswerWait = time.Second

// defaultUserAgent is net/http's, sent when the caller sets no User-Agent.
const defaultUserAgent = "Go-http-client/1.1"

// roundTrip makes one attempt: the request on an idle connection or a new one, until the
// answer's header. The answer's body must be read and closed (drain), which gives the
// connection back. timeout bounds the whole attempt, body included.
func (h *h1) roundTrip(ctx context.Context, header http.Header, host string, body []byte, timeout time.Duration) (*http.Response, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for {
		pc, reused, err := h.get(ctx, deadline)
		if err != nil {
			return nil, err
		}
		resp, err := h.exchange(ctx, pc, deadline, header, host, body)
		if err == nil {
			return resp, nil
		}
		pc.close()
		// Made again only if nothing was sent, on a reused connection (a new one failing so
		// would fail again), while the attempt has time left (a deadline already past fails
		// every write before its first byte: it must not close the whole pool).
		if !reused || !errors.Is(err, errNothingSent) || ctx.Err() != nil || !time.Now().Before(deadline) {
			return nil, err
		}
	}
}

// exchange writes the request on pc and reads the answer's header. An error wrapping
// errNothingSent means no byte of the request reached the connection.
func (h *h1) exchange(ctx context.Context, pc *h1Conn, deadline time.Time, header http.Header, host string, body []byte) (*http.Response, error) {
	if !pc.watch(ctx) {
		return nil, fmt.Errorf("%w: %w", errNothingSent, context.Canceled)
	}
	// The watch moves the deadline into the past once ctx ends; cut, checked after these
	// deadlines are set, tells whether that happened before them (and would be undone).
	if err := setDeadlines(pc, deadline, len(body)); err != nil {
		return nil, err
	}
	if pc.cut.Load() {
		return nil, fmt.Errorf("%w: %w", errNothingSent, context.Canceled)
	}
	pc.lr.N = answerLimit
	pc.written = 0
	if err := checkHeader(header, host); err != nil {
		return nil, err
	}
	if werr := h.writeRequest(pc.bw, header, host, body); werr != nil {
		if pc.written == 0 {
			return nil, fmt.Errorf("write request: %w: %w", errNothingSent, werr)
		}
		// A server that answers before it has read the whole request (413, say) fails the
		// write, when it closes, or lets it time out: its answer may be there to read all the
		// same, within the reserve setDeadlines kept.
		resp, err := h.readResponse(pc)
		if err != nil {
			return nil, fmt.Errorf("write request: %w", werr)
		}
		pc.ans.reuse = false
		return resp, nil
	}
	return h.readResponse(pc)
}

// setDeadlines bounds pc's exchange by deadline; a large body's write ends earlier, keeping
// the read a reserve (a quarter of what is left, earlyAnswerWait at most).
func setDeadlines(pc *h1Conn, deadline time.Time, bodyLen int) error {
	if bodyLen < largeBody {
		return pc.nc.SetDeadline(deadline)
	}
	reserve := max(min(earlyAnswerWait, time.Until(deadline)/4), 0)
	if err := pc.nc.SetReadDeadline(deadline); err != nil {
		return err
	}
	return pc.nc.SetWriteDeadline(deadline.Add(-reserve))
}

// readResponse reads the answer's header on pc, after any informational answers. The
// connection is reused after it only if the server did not close it nor switch protocols.
func (h *h1) readResponse(pc *h1Conn) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(pc.br, h.req)
		if err != nil {
			return nil, fmt.Errorf("read answer: %w", err)
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // an informational answer (103 Early Hints…): the real one follows
		}
		reuse := !resp.Close && resp.StatusCode != http.StatusSwitchingProtocols
		// One answer at a time per connection: its body's state lives in the connection, and
		// the handle given out names the exchange, so that one held beyond its Close cannot act
		// on a later exchange's.
		pc.gen++
		pc.ans = h1Answer{body: resp.Body, reuse: reuse}
		resp.Body = &h1Body{pc: pc, gen: pc.gen}
		return resp, nil
	}
}

// aLongTimeAgo is a deadline in the past: it makes every pending read and write fail now.
var aLongTimeAgo = time.Unix(1, 0)

// checkHeader refuses, as net/http does, header names and values that would break the
// request's framing; nothing is written then.
func checkHeader(header http.Header, host string) error {
	if !validHeaderValue(host) {
		return errors.New("invalid Host header value")
	}
	for k, vs := range header {
		if !validHeaderName(k) {
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vs {
			if !validHeaderValue(v) {
				return fmt.Errorf("invalid header field value for %q", k)
			}
		}
	}
	return nil
}

// writeRequest writes the request line, Host, User-Agent, Authorization, header (checked by
// checkHeader), Content-Length and body, and flushes. As net/http: User-Agent is
// defaultUserAgent unless the header has one (an empty one sends none), Authorization the
// URL's userinfo unless the header has a non-empty one.
func (h *h1) writeRequest(w *bufio.Writer, header http.Header, host string, body []byte) error {
	w.WriteString(h.method)
	w.WriteByte(' ')
	w.WriteString(h.requestURI)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	ua := defaultUserAgent
	if vs, ok := header["User-Agent"]; ok {
		ua = ""
		if len(vs) > 0 {
			ua = vs[0]
		}
	}
	if ua != "" {
		w.WriteString("User-Agent: ")
		w.WriteString(ua)
		w.WriteString("\r\n")
	}
	auth := h.auth != "" && header.Get("Authorization") == ""
	if auth {
		w.WriteString("Authorization: ")
		w.WriteString(h.auth)
		w.WriteString("\r\n")
	}
	for k, vs := range header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer", "User-Agent":
			continue // set here, or not at all (the body has a length)
		case "Authorization":
			if auth {
				continue
			}
		}
		for _, v := range vs {
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	var n [20]byte
	w.WriteString("Content-Length: ")
	w.Write(strconv.AppendInt(n[:0], int64(len(body)), 10))
	w.WriteString("\r\n\r\n")
	w.Write(body)
	return w.Flush()
}

// validHeaderName reports whether k is an RFC 9110 token.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f {
			return false
		}
		switch c {
		case '"', '(', ')', ',', '/', ':', ';', '<', '=', '>', '?', '@', '[', '\\', ']', '{', '}':
			return false
		}
	}
	return true
}

// validHeaderValue reports whether v holds no control character other than tab (as
// net/http's httpguts.ValidHeaderFieldValue).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// get returns an idle connection that is open with nothing to read (reused true), or dials
// one. Idle connections that are not are closed on the way: nothing was written on them.
func (h *h1) get(ctx context.Context, deadline time.Time) (*h1Conn, bool, error) {
	for {
		pc := h.popIdle()
		if pc == nil {
			break
		}
		if pc.alive() {
			return pc, true, nil
		}
		pc.close() // closed by the server, or holding bytes nobody asked for
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	nc, err := h.dialer.DialContext(dctx, "tcp", h.addr)
	if err != nil {
		return nil, false, err
	}
	pc := &h1Conn{h: h, nc: nc, lr: io.LimitedReader{R: nc}}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			pc.rc = rc
		}
	}
	pc.bw = bufio.NewWriterSize(pc, 4096)
	pc.br = bufio.NewReaderSize(&pc.lr, 4096)
	return pc, false, nil
}

// popIdle takes the most recently used idle connection that has not expired nor been cut, and
// closes those that have on the way; nil when there is none.
func (h *h1) popIdle() *h1Conn {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.idle) > 0 {
		pc := h.idle[len(h.idle)-1]
		h.idle[len(h.idle)-1] = nil
		h.idle = h.idle[:len(h.idle)-1]
		if h.expired(pc, now) || pc.cut.Load() {
			pc.close()
			continue
		}
		return pc
	}
	return nil
}

// expired reports whether pc was idle longer than the idle timeout at now.
func (h *h1) expired(pc *h1Conn, now time.Time) bool {
	return h.idleTimeout > 0 && now.Sub(pc.idleAt) > h.idleTimeout
}

// put gives a connection whose answer was read to the end back to the pool, and closes the
// idle connections that expired (the oldest come first).
func (h *h1) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 || pc.nc.SetDeadline(time.Time{}) != nil || pc.cut.Load() {
		pc.close() // bytes beyond the answer (the connection is out of step), or cut
		return
	}
	pc.idleAt = time.Now()
	h.mu.Lock()
	n := 0
	for n < len(h.idle) && h.expired(h.idle[n], pc.idleAt) {
		h.idle[n].close()
		n++
	}
	if n > 0 {
		k := copy(h.idle, h.idle[n:])
		clear(h.idle[k:])
		h.idle = h.idle[:k]
	}
	if len(h.idle) < h.maxIdle && !h.closed {
		h.idle = append(h.idle, pc)
		pc = nil
	}
	h.mu.Unlock()
	if pc != nil {
		pc.close()
	}
}

// closeIdle closes the idle connections, and those given back from now on.
func (h *h1) closeIdle() {
	h.mu.Lock()
	idle := h.idle
	h.idle, h.closed = nil, true
	h.mu.Unlock()
	for _, pc := range idle {
		pc.close()
	}
}

// h1Answer is the state of a connection's current answer body.
type h1Answer struct {
	body  io.ReadCloser
	eof   bool
	reuse bool
	done  bool
	lr    io.LimitedReader // drain's
}

// h1Body is the body of an h1 answer: closing it gives the connection back once the body was
// read to its end, and closes it otherwise. It is the handle of one exchange (gen): once the
// connection went on to another, Read fails and Close does nothing.
type h1Body struct {
	pc  *h1Conn
	gen uint64
}

// answer returns the state of b's answer, nil when b is closed or stale.
func (b *h1Body) answer() *h1Answer {
	if b.gen != b.pc.gen || b.pc.ans.done {
		return nil
	}
	return &b.pc.ans
}

// drain reads up to limit bytes of the body, so that the connection can be reused, and closes
// it; it is drain's way for an h1 answer, without an allocation.
func (b *h1Body) drain(limit int64) {
	a := b.answer()
	if a == nil {
		return
	}
	a.lr = io.LimitedReader{R: b, N: limit}
	_, _ = io.Copy(io.Discard, &a.lr)
	_ = b.Close()
}

func (b *h1Body) Read(p []byte) (int, error) {
	a := b.answer()
	if a == nil {
		return 0, errors.New("read on closed body")
	}
	n, err := a.body.Read(p)
	if err == io.EOF {
		a.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	a := b.answer()
	if a == nil {
		return nil
	}
	a.done = true
	if a.eof && a.reuse {
		_ = a.body.Close() // at EOF: nothing left to read
		b.pc.h.put(b.pc)
		return nil
	}
	b.pc.close()
	return nil
}
