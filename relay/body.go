package relay

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Outcomes of bodies ReadBodies refuses (besides OutcomeTooLarge and OutcomeReadError).
const (
	OutcomeTooSlow    Outcome = "too_slow"    // body slower than the minimum rate: 408
	OutcomeBodyBudget Outcome = "body_budget" // bodies in flight over their byte budget: 503
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
	bodyInitial   = 4 << 10  // the buffer of a body without Content-Length starts this big
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
	// MaxInFlight bounds the bytes held by all the bodies being read or handled at once; a
	// body that would go over it gets 503 with Retry-After (server.max_body_bytes_in_flight).
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
// number of addresses they come from, and memory by o.MaxInFlight over all requests: neither
// relies on the per-address limits. Refusals are counted through o.Observer and logged at
// warn through a LogSampler; a refused request's connection is closed.
func ReadBodies(next http.Handler, o BodyOptions) http.Handler {
	return &bodyReader{next: next, o: o, refuse: newRefuser(o.Logger, o.Observer, "notification refused")}
}

type bodyReader struct {
	next     http.Handler
	o        BodyOptions
	inFlight atomic.Int64 // bytes held by bodies, as buffer capacity
	bufs     sync.Pool
	refuse   *refuser
}

// bufferedBody is a body ReadBodies read; the Receiver takes its bytes without copying.
type bufferedBody struct {
	bytes.Reader
	b []byte
}

func (*bufferedBody) Close() error { return nil }

var errBodyBudget = errors.New(ReasonBodyBudget)

func (b *bodyReader) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		b.next.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	max := b.o.MaxBytes
	if max > 0 && r.ContentLength > max {
		w.Header().Set("Connection", "close")
		b.refuse.refuse(w, r, start, http.StatusRequestEntityTooLarge, OutcomeTooLarge, ReasonBodyTooLarge, "",
			"content_length", r.ContentLength, "max_body_bytes", max)
		return
	}
	buf, held, err := b.read(w, r, start)
	defer b.release(buf, held)
	if err != nil {
		w.Header().Set("Connection", "close")
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			b.refuse.refuse(w, r, start, http.StatusRequestEntityTooLarge, OutcomeTooLarge, ReasonBodyTooLarge, "", "max_body_bytes", max)
		case errors.Is(err, os.ErrDeadlineExceeded):
			b.refuse.refuse(w, r, start, http.StatusRequestTimeout, OutcomeTooSlow, ReasonBodyTooSlow, "",
				"bytes", len(buf), "duration", time.Since(start).Round(time.Millisecond), "min_body_rate", b.o.MinRate)
		case errors.Is(err, errBodyBudget):
			w.Header().Set("Retry-After", "1")
			b.refuse.refuse(w, r, start, http.StatusServiceUnavailable, OutcomeBodyBudget, ReasonBodyBudget, "",
				"max_body_bytes_in_flight", b.o.MaxInFlight)
		default:
			b.refuse.refuse(w, r, start, http.StatusBadRequest, OutcomeReadError, ReasonReadBody, "", "err", err)
		}
		return
	}
	r.Body = &bufferedBody{Reader: *bytes.NewReader(buf), b: buf}
	r.ContentLength = int64(len(buf))
	b.next.ServeHTTP(w, r)
}

// read reads r's body, growing its buffer as bytes arrive and accounting its capacity in
// inFlight; it returns the buffer and how much of inFlight it holds, also on error.
func (b *bodyReader) read(w http.ResponseWriter, r *http.Request, start time.Time) (buf []byte, held int64, err error) {
	rc := http.NewResponseController(w)
	defer rc.SetReadDeadline(time.Time{}) // the server sets its own before the next request
	max := b.o.MaxBytes
	want := int64(bodyInitial)
	if r.ContentLength > 0 {
		want = r.ContentLength + 1 // one more, to see the end without growing
	}
	grow := func(n int64) error {
		if max > 0 && n > max+1 {
			n = max + 1
		}
		if int64(cap(buf)) >= n {
			return nil
		}
		if total := b.inFlight.Add(n - held); b.o.MaxInFlight > 0 && total > b.o.MaxInFlight {
			b.inFlight.Add(held - n)
			return errBodyBudget
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
		if b.o.MinRate > 0 || b.o.ReadTimeout > 0 {
			if err := rc.SetReadDeadline(b.deadline(start, int64(len(buf)))); err == nil {
				deadlineSet = true
			}
		}
		if len(buf) == cap(buf) {
			if err := grow(2 * int64(cap(buf))); err != nil {
				return buf, held, err
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
			if !deadlineSet && errors.Is(rerr, os.ErrDeadlineExceeded) {
				rerr = io.ErrUnexpectedEOF // the server's own read_timeout, not ours
			}
			return buf, held, rerr
		}
	}
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
