package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// maxProblems bounds the problems a receiver keeps by text.
const maxProblems = 10

// receiver is an HTTP sink endpoint run by the bench: it records every change id it receives
// (the envelope's "id"; a batch is a JSON array of envelopes) with the time it arrived and
// the relay's received_at. While failing is set it answers 503 and records nothing.
type receiver struct {
	name    string
	srv     *http.Server
	url     string
	failing atomic.Bool

	mu        sync.Mutex
	got       map[string]arrival
	unique    int
	requests  int64 // requests answered 200
	refused   int64 // requests answered 503 while failing
	first     time.Time
	last      time.Time
	problems  []string
	nProblems int
}

// arrival is what a receiver knows about one change id.
type arrival struct {
	n        int32 // deliveries
	at       int64 // first arrival, Unix nanoseconds
	accepted int64 // the relay's received_at, Unix nanoseconds (0 when unreadable)
}

// sinkEnvelope is the part of hubrelay's envelope the receiver reads.
type sinkEnvelope struct {
	ID         string    `json:"id"`
	ReceivedAt time.Time `json:"received_at"`
}

// startReceiver starts a receiver on 127.0.0.1; it runs until ctx is cancelled or close.
func startReceiver(ctx context.Context, name string) (*receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for sink %s: %w", name, err)
	}
	r := &receiver{name: name, got: map[string]arrival{}, url: "http://" + ln.Addr().String() + "/" + name}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go r.srv.Serve(ln)
	return r, nil
}

// close stops the receiver at once.
func (r *receiver) close() { r.srv.Close() }

// ServeHTTP records the changes of one delivery.
func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		r.problem(fmt.Sprintf("read delivery: %v", err))
		http.Error(w, "read body", http.StatusBadRequest)
		return
	}
	if r.failing.Load() {
		r.mu.Lock()
		r.refused++
		r.mu.Unlock()
		http.Error(w, "down for the bench", http.StatusServiceUnavailable)
		return
	}
	now := time.Now()
	envs, err := parseDelivery(body)
	if err != nil {
		r.problem(fmt.Sprintf("unreadable delivery: %v: %.120s", err, body))
		http.Error(w, "unreadable delivery", http.StatusBadRequest)
		return
	}
	r.record(now, envs)
	w.WriteHeader(http.StatusOK)
}

// parseDelivery reads one envelope or a JSON array of them; every one must carry an id.
func parseDelivery(body []byte) ([]sinkEnvelope, error) {
	var envs []sinkEnvelope
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) > 0 && b[0] == '[' {
		if err := json.Unmarshal(b, &envs); err != nil {
			return nil, err
		}
	} else {
		envs = make([]sinkEnvelope, 1)
		if err := json.Unmarshal(body, &envs[0]); err != nil {
			return nil, err
		}
	}
	if len(envs) == 0 {
		return nil, fmt.Errorf("empty batch")
	}
	for _, e := range envs {
		if e.ID == "" {
			return nil, fmt.Errorf("envelope without id")
		}
	}
	return envs, nil
}

func (r *receiver) record(now time.Time, envs []sinkEnvelope) {
	at := now.UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if r.first.IsZero() {
		r.first = now
	}
	r.last = now
	for _, e := range envs {
		a := r.got[e.ID]
		if a.n == 0 {
			a.at = at
			if !e.ReceivedAt.IsZero() {
				a.accepted = e.ReceivedAt.UnixNano()
			}
			r.unique++
		}
		a.n++
		r.got[e.ID] = a
	}
}

func (r *receiver) problem(p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nProblems++
	if len(r.problems) < maxProblems {
		r.problems = append(r.problems, p)
	}
}

// uniqueCount returns how many distinct change ids arrived so far.
func (r *receiver) uniqueCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unique
}

// receiverStats is a consistent copy of what a receiver recorded.
type receiverStats struct {
	counts    map[string]int
	arrivals  map[string]arrival
	requests  int64
	refused   int64
	first     time.Time
	last      time.Time
	problems  []string
	nProblems int
}

// snapshot copies what the receiver recorded; withArrivals also copies every arrival.
func (r *receiver) snapshot(withArrivals bool) receiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := receiverStats{counts: make(map[string]int, len(r.got)), requests: r.requests, refused: r.refused,
		first: r.first, last: r.last, problems: append([]string(nil), r.problems...), nProblems: r.nProblems}
	if withArrivals {
		s.arrivals = make(map[string]arrival, len(r.got))
	}
	for id, a := range r.got {
		s.counts[id] = int(a.n)
		if withArrivals {
			s.arrivals[id] = a
		}
	}
	return s
}
