package sinktest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/hubrelay/hubrelay/relay"
)

// Endpoint is a loopback HTTP destination for sinks that speak HTTP. It answers 200 and keeps
// the change ids decode finds in each body, or, once told, 400, 503, or no answer at all.
type Endpoint struct {
	// URL is the server's address.
	URL string

	decode func(body []byte) []string
	mu     sync.Mutex
	mode   int // modeOK, modeReject, modeFail, modeHang
	ids    []string
	hang   chan struct{} // closed to end the hanging requests
}

const (
	modeOK = iota
	modeReject
	modeFail
	modeHang
)

// EnvelopeIDs decodes relay's JSON envelope, or an array of them (a batch).
func EnvelopeIDs(body []byte) []string {
	var one struct{ ID string }
	if json.Unmarshal(body, &one) == nil && one.ID != "" {
		return []string{one.ID}
	}
	var many []struct{ ID string }
	if json.Unmarshal(body, &many) != nil {
		return nil
	}
	out := make([]string, len(many))
	for i, e := range many {
		out[i] = e.ID
	}
	return out
}

// NewEndpoint starts an endpoint on loopback, closed when the test ends. decode finds the
// change ids of a request body.
func NewEndpoint(t *testing.T, decode func(body []byte) []string) *Endpoint {
	e := &Endpoint{decode: decode, hang: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(e.serve))
	e.URL = srv.URL
	t.Cleanup(func() {
		e.setMode(modeOK) // ends hanging requests
		srv.Close()
	})
	return e
}

func (e *Endpoint) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	e.mu.Lock()
	mode, hang := e.mode, e.hang
	e.mu.Unlock()
	switch mode {
	case modeReject:
		http.Error(w, "invalid_payload", http.StatusBadRequest)
		return
	case modeFail:
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	case modeHang:
		select {
		case <-hang:
		case <-r.Context().Done():
		}
		return
	}
	ids := e.decode(body)
	e.mu.Lock()
	e.ids = append(e.ids, ids...)
	e.mu.Unlock()
}

func (e *Endpoint) setMode(m int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mode == modeHang && m != modeHang {
		close(e.hang)
		e.hang = make(chan struct{})
	}
	e.mode = m
}

// Received returns the ids taken so far, in arrival order.
func (e *Endpoint) Received() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.ids)
}

// Target is s delivering to e, with every behaviour of the suite.
func (e *Endpoint) Target(s relay.Sink) *Target {
	return &Target{
		Sink:     s,
		Received: e.Received,
		Reject:   func() { e.setMode(modeReject) },
		Fail:     func() { e.setMode(modeFail) },
		Hang:     func() { e.setMode(modeHang) },
		Heal:     func() { e.setMode(modeOK) },
		HTTP:     true, RejectStatus: http.StatusBadRequest, FailStatus: http.StatusServiceUnavailable,
	}
}
