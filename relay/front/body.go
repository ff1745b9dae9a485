package front

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// Reasons logged (as "reason") when ReadBodies refuses a request.
const (
	ReasonBodyTooSlow  = "body sent too slowly"
	ReasonBodyBudget   = "too many body bytes in flight"
	ReasonBodyTooLarge = "body too large"
	ReasonReadBody     = "read body"
)

const (
	bodyChunk     = 32 << 10 // what one read asks for at most
	bodyInitial   = 16 << 10 // a body's buffer starts this big (or as big as its length), then doubles
	maxPooledBody = 1 << 20  // larger buffers are not kept for reuse
)

// BodyOptions configures ReadBodies. A zero or negative limit is off.
type BodyOptions struct {
	// MaxBytes refuses a body over it with 413 (server.max_body_bytes).
	MaxBytes int64
	// MinRate is the slowest a body may arrive, in bytes per second, once Grace has passed:
	// a body must have sent MinRate × (elapsed − Grace) bytes at any time, or it is cut off
	// with 408 (server.min_body_rate, server.body_grace).
	MinRate int64
	Grace   time.Duration
	// MaxInFlight bounds the bytes held by all the bodies being read or handled at once
	// (server.max_body_bytes_in_flight). A body that needs more while it is full cuts off the
	// slowest body being read, if that one is slower (408), and waits for its bytes; when none
	// is, it gets 503 with Retry-After.
	MaxInFlight int64
	// ReadTimeout, when set, still bounds the whole body, as server.read_timeout does.
	ReadTimeout time.Duration
	Logger      *slog.Logger
	Observer    Observer
}

// ReadBodies reads each request's body into memory before next sees the request, under a
// budget of its own, and hands next the request with the body in memory (r.Body then reads
// from it, and the Receiver uses the bytes as they are).
//
// It is installed outside the concurrency limits (Limit), so a request holds one of their
// slots only once its whole body is here: a client sending its body slowly holds a connection,
// a goroutine and the bytes it has sent, nothing a fast client needs. Slow bodies are bounded
// by a minimum transfer rate (o.MinRate after o.Grace, enforced with read deadlines, so a
// stalled read ends at its deadline rather than whenever the client sends again) whatever the
// number of addresses they come from, and memory by o.MaxInFlight over all requests, in
// which a faster body takes the place of the slowest one being read: none of it relies on the
// per-address limits. A body is given room as its bytes arrive, whatever its Content-Length
// claims. Refusals are counted through o.Observer and logged at
// warn through a LogSampler; a refused request's connection is closed.
func ReadBodies(next http.Handler, o BodyOptions) http.Handler {
	return &bodyReader{next: next, o: o, refuse: newRefuser(o.Logger, o.Observer, "notification refused"),
		reading: map[*bodyRead]struct{}{}}
}

type bodyReader struct {
	next     http.Handler
	o        BodyOptions
	inFlight atomic.Int64 // bytes held by bodies, as buffer capacity
	bufs     sync.Pool
	refuse   *refuser

	mu      sync.Mutex // guards reading and every bodyRead's got and preempted
	reading map[*bodyRead]struct{}
}

// bodyRead is one body being read, as preempt sees it, and then the body handed on: one
// allocation per request for both.
type bodyRead struct {
	start     time.Time
	rc        http.ResponseController
	got       int64 // bytes read so far
	preempted bool  // its read deadline was moved to now to free its bytes
	body      bufferedBody
}

// preemptMinAge is how long a body has been read before preempt judges its rate, and
// preemptWait how long a body that needs bytes waits for a preempted one to free them.
const (
	preemptMinAge = 100 * time.Millisecond
	preemptWait   = time.Second
)

// bufferedBody is a body ReadBodies read; the Receiver takes its bytes without copying
// (relay.HeldBody).
type bufferedBody struct {
	bytes.Reader
	b []byte
}

var _ relay.HeldBody = (*bufferedBody)(nil)

func (*bufferedBody) Close() error { return nil }

// HeldBytes returns the body read.
func (b *bufferedBody) HeldBytes() []byte { return b.b }

var (
	errBodyBudget = errors.New(ReasonBodyBudget)
	errPreempted  = errors.New("preempted by a faster body while bodies in flight were at max_body_bytes_in_flight")
)

func (b *bodyReader) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		b.next.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	max := b.o.MaxBytes
	if max > 0 && r.ContentLength > max {
		w.Header().Set("Connection", "close")
		b.refuse.refuse(w, r, start, http.StatusRequestEntityTooLarge, relay.OutcomeTooLarge, ReasonBodyTooLarge, "",
			"content_length", r.ContentLength, "max_body_bytes", max)
		return
	}
	me := &bodyRead{start: start, rc: *http.NewResponseController(w)}
	buf, held, err := b.read(me, r)
	defer b.release(buf, held)
	if err != nil {
		w.Header().Set("Connection", "close")
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			b.refuse.refuse(w, r, start, http.StatusRequestEntityTooLarge, relay.OutcomeTooLarge, ReasonBodyTooLarge, "", "max_body_bytes", max)
		case errors.Is(err, errPreempted):
			b.refuse.refuse(w, r, start, http.StatusRequestTimeout, relay.OutcomeTooSlow, ReasonBodyTooSlow, "",
				"bytes", len(buf), "duration", time.Since(start).Round(time.Millisecond), "preempted", errPreempted.Error())
		case errors.Is(err, os.ErrDeadlineExceeded):
			b.refuse.refuse(w, r, start, http.StatusRequestTimeout, relay.OutcomeTooSlow, ReasonBodyTooSlow, "",
				"bytes", len(buf), "duration", time.Since(start).Round(time.Millisecond), "min_body_rate", b.o.MinRate)
		case errors.Is(err, errBodyBudget):
			w.Header().Set("Retry-After", "1")
			b.refuse.refuse(w, r, start, http.StatusServiceUnavailable, relay.OutcomeBodyBudget, ReasonBodyBudget, "",
				"max_body_bytes_in_flight", b.o.MaxInFlight)
		default:
			b.refuse.refuse(w, r, start, http.StatusBadRequest, relay.OutcomeReadError, ReasonReadBody, "", "err", err)
		}
		return
	}
	me.body.b = buf
	me.body.Reset(buf)
	r.Body = &me.body
	r.ContentLength = int64(len(buf))
	b.next.ServeHTTP(w, r)
}

// read reads r's body, growing its buffer as bytes arrive and accounting its capacity in
// inFlight; it returns the buffer and how much of inFlight it holds, also on error.
func (b *bodyReader) read(me *bodyRead, r *http.Request) (buf []byte, held int64, err error) {
	rc, start := &me.rc, me.start
	defer rc.SetReadDeadline(time.Time{}) // the server sets its own before the next request
	b.mu.Lock()
	b.reading[me] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.reading, me)
		b.mu.Unlock()
	}()
	max := b.o.MaxBytes
	// A body is given room as its bytes arrive, not as its Content-Length claims: a header
	// that claims 8 MiB and sends nothing holds bodyInitial.
	end := int64(-1) // the most a body can need: one more byte than its length, to see EOF
	if r.ContentLength >= 0 {
		end = r.ContentLength + 1
	}
	if max > 0 && (end < 0 || end > max+1) {
		end = max + 1
	}
	want := int64(bodyInitial)
	if end >= 0 && end < want {
		want = end
	}
	grow := func(n int64) error {
		if end >= 0 && n > end {
			n = end
		}
		if int64(cap(buf)) >= n {
			return nil
		}
		if err := b.reserve(me, n-held); err != nil {
			return err
		}
		nb := b.getBuf(int(n))
		nb = append(nb, buf...)
		b.putBuf(buf)
		buf, held = nb, n
		return nil
	}
	if err := grow(want); err != nil {
		return buf, held, err
	}
	var deadlineSet bool
	for {
		// Under b.mu, so that preempt's deadline is never overwritten by this one.
		b.mu.Lock()
		if me.preempted {
			b.mu.Unlock()
			return buf, held, errPreempted
		}
		me.got = int64(len(buf))
		if b.o.MinRate > 0 || b.o.ReadTimeout > 0 {
			if err := rc.SetReadDeadline(b.deadline(start, int64(len(buf)))); err == nil {
				deadlineSet = true
			}
		}
		b.mu.Unlock()
		if len(buf) == cap(buf) {
			if err := grow(2 * int64(cap(buf))); err != nil {
				return buf, held, err
			}
			if len(buf) == cap(buf) { // more than Content-Length; the server never lets it through
				return buf, held, errors.New("body longer than its Content-Length")
			}
		}
		limit := cap(buf)
		if limit-len(buf) > bodyChunk {
			limit = len(buf) + bodyChunk
		}
		n, rerr := r.Body.Read(buf[len(buf):limit])
		buf = buf[:len(buf)+n]
		if max > 0 && int64(len(buf)) > max {
			return buf, held, &http.MaxBytesError{Limit: max}
		}
		if rerr == io.EOF {
			return buf, held, nil
		}
		if rerr != nil {
			b.mu.Lock()
			preempted := me.preempted
			b.mu.Unlock()
			if preempted {
				return buf, held, errPreempted
			}
			if !deadlineSet && errors.Is(rerr, os.ErrDeadlineExceeded) {
				rerr = io.ErrUnexpectedEOF // the server's own read_timeout, not ours
			}
			return buf, held, rerr
		}
	}
}

// reserve adds n bytes to inFlight for me. When that would go over MaxInFlight, it preempts
// the slowest body being read, if it is slower than me, and waits up to preemptWait for bytes
// to be freed; then it gives up with errBodyBudget. So slow bodies can fill the budget only
// until a faster one needs it: a slow client holds nothing a fast one needs.
func (b *bodyReader) reserve(me *bodyRead, n int64) error {
	if b.o.MaxInFlight <= 0 {
		b.inFlight.Add(n)
		return nil
	}
	deadline := time.Now().Add(preemptWait)
	for {
		if total := b.inFlight.Add(n); total <= b.o.MaxInFlight {
			return nil
		}
		b.inFlight.Add(-n)
		now := time.Now()
		if !now.Before(deadline) {
			return errBodyBudget
		}
		b.preempt(me, now)
		time.Sleep(5 * time.Millisecond)
	}
}

// preempt cuts off the slowest body being read, by average rate since it started, among those
// read for at least preemptMinAge, if it is slower than me (a body just started counts as
// fast): its read deadline moves to now, its read fails, and it answers 408 and frees its
// bytes. It does nothing when a body it cut off is still freeing its bytes.
func (b *bodyReader) preempt(me *bodyRead, now time.Time) {
	rate := func(r *bodyRead) float64 {
		el := now.Sub(r.start)
		if el < preemptMinAge {
			return math.Inf(1)
		}
		return float64(r.got) / el.Seconds()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var slowest *bodyRead
	for r := range b.reading {
		if r.preempted {
			return // one is on its way out already
		}
		if r == me || now.Sub(r.start) < preemptMinAge {
			continue
		}
		if slowest == nil || rate(r) < rate(slowest) {
			slowest = r
		}
	}
	if slowest == nil || rate(slowest) >= rate(me) {
		return
	}
	slowest.preempted = true
	slowest.rc.SetReadDeadline(now)
}

// deadline is when a body that has sent got bytes since start must send its next one: Grace
// plus the time got bytes take at MinRate, bounded by ReadTimeout.
func (b *bodyReader) deadline(start time.Time, got int64) time.Time {
	var d time.Time
	if b.o.MinRate > 0 {
		d = start.Add(b.o.Grace + time.Duration(float64(got)/float64(b.o.MinRate)*float64(time.Second)))
	}
	if b.o.ReadTimeout > 0 {
		if end := start.Add(b.o.ReadTimeout); d.IsZero() || end.Before(d) {
			d = end
		}
	}
	return d
}

func (b *bodyReader) release(buf []byte, held int64) {
	b.inFlight.Add(-held)
	b.putBuf(buf)
}

func (b *bodyReader) getBuf(n int) []byte {
	if n <= maxPooledBody {
		if p, ok := b.bufs.Get().(*[]byte); ok && cap(*p) >= n {
			return (*p)[:0]
		}
	}
	return make([]byte, 0, n)
}

func (b *bodyReader) putBuf(buf []byte) {
	if c := cap(buf); c > 0 && c <= maxPooledBody {
		buf = buf[:0]
		b.bufs.Put(&buf)
	}
}
