package webhook

import (
	"bufio"
	"context"
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
// answer was read to the end and the server did not ask to close it. An attempt that fails on
// a reused connection before any byte of the answer arrived (the server closed the idle
// connection meanwhile) is made again on another connection, as net/http does for requests
// it may replay.
type h1 struct {
	addr        string // host:port dialled
	method      string
	requestURI  string
	req         *http.Request // what http.ReadResponse needs to know of the request (its method)
	dialer      net.Dialer
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle []*h1Conn // most recently used last
}

// h1Conn is one connection of an h1 pool.
type h1Conn struct {
	nc     net.Conn
	lr     io.LimitedReader // nc, up to what one answer may bring (answerLimit)
	br     *bufio.Reader    // reads lr
	bw     *bufio.Writer
	idleAt time.Time
	// watched is the context whose end cuts the connection's exchanges short (unwatch ends
	// that), kept from one exchange to the next while the caller's context is the same (the
	// delivery engine passes one per sink): a watch costs an allocation and a lock of the
	// context. cut is set, before the deadline is moved into the past, once it ended; the
	// connection is then not used again.
	watched context.Context
	unwatch func() bool
	cut     atomic.Bool
	body    h1Body // the body of the connection's current answer
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
	return &h1{
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

// errStale marks a failure on a reused connection before any byte of the answer arrived.
var errStale = errors.New("connection closed by the server")

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
		if !reused || !errors.Is(err, errStale) || ctx.Err() != nil {
			return nil, err
		}
	}
}

// exchange writes the request on pc and reads the answer's header. An error wrapping errStale
// means nothing of an answer arrived and the connection failed as a closed one does.
func (h *h1) exchange(ctx context.Context, pc *h1Conn, deadline time.Time, header http.Header, host string, body []byte) (*http.Response, error) {
	if !pc.watch(ctx) {
		return nil, fmt.Errorf("%w: %w", errStale, context.Canceled)
	}
	// The watch moves the deadline into the past once ctx ends; cut, checked after this
	// deadline is set, tells whether that happened before it (and would be undone by it).
	if err := pc.nc.SetDeadline(deadline); err != nil {
		return nil, err
	}
	if pc.cut.Load() {
		return nil, fmt.Errorf("%w: %w", errStale, context.Canceled)
	}
	pc.lr.N = answerLimit
	if err := checkHeader(header, host); err != nil {
		return nil, err
	}
	if werr := h.writeRequest(pc.bw, header, host, body); werr != nil {
		// A server that answers before it has read the whole request (413, say) and closes
		// fails the write: its answer may be there to read all the same.
		resp, err := h.readResponse(pc)
		if err != nil {
			return nil, staleIf(werr)
		}
		resp.Body.(*h1Body).reuse = false
		return resp, nil
	}
	if _, err := pc.br.Peek(1); err != nil {
		return nil, staleIf(err)
	}
	return h.readResponse(pc)
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
		// One answer at a time per connection: its body lives in the connection.
		pc.body = h1Body{h: h, pc: pc, body: resp.Body, reuse: reuse}
		resp.Body = &pc.body
		return resp, nil
	}
}

// aLongTimeAgo is a deadline in the past: it makes every pending read and write fail now.
var aLongTimeAgo = time.Unix(1, 0)

// staleIf marks err as a closed connection's (errStale) when it is one: EOF, a reset or a
// broken pipe, not a timeout.
func staleIf(err error) error {
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w: %w", errStale, err)
	}
	return err
}

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

// writeRequest writes the request line, Host, header (checked by checkHeader), Content-Length
// and body, and flushes.
func (h *h1) writeRequest(w *bufio.Writer, header http.Header, host string, body []byte) error {
	w.WriteString(h.method)
	w.WriteByte(' ')
	w.WriteString(h.requestURI)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	for k, vs := range header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue // set here, or not at all (the body has a length)
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

// get returns an idle connection (reused true) or dials one.
func (h *h1) get(ctx context.Context, deadline time.Time) (*h1Conn, bool, error) {
	now := time.Now()
	h.mu.Lock()
	for len(h.idle) > 0 {
		pc := h.idle[len(h.idle)-1]
		h.idle[len(h.idle)-1] = nil
		h.idle = h.idle[:len(h.idle)-1]
		if (h.idleTimeout > 0 && now.Sub(pc.idleAt) > h.idleTimeout) || pc.cut.Load() {
			pc.close()
			continue
		}
		h.mu.Unlock()
		return pc, true, nil
	}
	h.mu.Unlock()
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	nc, err := h.dialer.DialContext(dctx, "tcp", h.addr)
	if err != nil {
		return nil, false, err
	}
	pc := &h1Conn{nc: nc, lr: io.LimitedReader{R: nc}, bw: bufio.NewWriterSize(nc, 4096)}
	pc.br = bufio.NewReaderSize(&pc.lr, 4096)
	return pc, false, nil
}

// put gives a connection whose answer was read to the end back to the pool.
func (h *h1) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 || pc.nc.SetDeadline(time.Time{}) != nil || pc.cut.Load() {
		pc.close() // bytes beyond the answer (the connection is out of step), or cut
		return
	}
	pc.idleAt = time.Now()
	h.mu.Lock()
	if len(h.idle) < h.maxIdle {
		h.idle = append(h.idle, pc)
		pc = nil
	}
	h.mu.Unlock()
	if pc != nil {
		pc.close()
	}
}

// h1Body is the body of an h1 answer: closing it gives the connection back once the body was
// read to its end, and closes it otherwise.
type h1Body struct {
	h     *h1
	pc    *h1Conn
	body  io.ReadCloser
	eof   bool
	reuse bool
	done  bool
	lr    io.LimitedReader // drain's
}

// drain reads up to limit bytes of the body, so that the connection can be reused, and closes
// it; it is drain's way for an h1 answer, without an allocation.
func (b *h1Body) drain(limit int64) {
	b.lr = io.LimitedReader{R: b, N: limit}
	_, _ = io.Copy(io.Discard, &b.lr)
	_ = b.Close()
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("read on closed body")
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	if b.eof && b.reuse {
		_ = b.body.Close() // at EOF: nothing left to read
		b.h.put(b.pc)
		return nil
	}
	b.pc.close()
	return nil
}
