package front

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// echo answers with the body it was handed and the bytes ReadBodies holds meanwhile.
func echo(b **bodyReader) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d:%s", (*b).inFlight.Load(), body)
	})
}

func TestReadBodies(t *testing.T) {
	big := strings.Repeat("x", 100<<10)
	tests := []struct {
		name      string
		o         BodyOptions
		body      io.Reader
		length    int64 // -1: chunked
		status    int
		outcome   relay.Outcome
		wantEcho  string
		holdsSome bool
	}{
		{name: "small", o: BodyOptions{MaxBytes: 1 << 20}, body: strings.NewReader(`{"a":1}`), length: 7, status: 200, wantEcho: `{"a":1}`, holdsSome: true},
		{name: "chunked, grows", o: BodyOptions{MaxBytes: 1 << 20}, body: strings.NewReader(big), length: -1, status: 200, wantEcho: big, holdsSome: true},
		{name: "over max, by length", o: BodyOptions{MaxBytes: 10}, body: strings.NewReader(big), length: int64(len(big)), status: 413, outcome: relay.OutcomeTooLarge},
		{name: "over max, chunked", o: BodyOptions{MaxBytes: 10}, body: strings.NewReader(big), length: -1, status: 413, outcome: relay.OutcomeTooLarge},
		{name: "over the bytes in flight", o: BodyOptions{MaxBytes: 1 << 20, MaxInFlight: 64 << 10}, body: strings.NewReader(big), length: -1, status: 503, outcome: relay.OutcomeBodyBudget},
		{name: "no body", o: BodyOptions{MaxBytes: 10}, length: 0, status: 200, wantEcho: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obs := &guardObserver{}
			tt.o.Observer = obs
			var br *bodyReader
			br = ReadBodies(echo(&br), tt.o).(*bodyReader)
			srv := httptest.NewServer(br)
			defer srv.Close()
			req, _ := http.NewRequest(http.MethodPost, srv.URL, tt.body)
			if tt.length >= 0 {
				req.ContentLength = tt.length
			} else {
				req.Body = io.NopCloser(tt.body) // unknown length: chunked
				req.ContentLength = -1
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, got)
			}
			if tt.outcome != "" && obs.count(tt.outcome) != 1 {
				t.Errorf("outcome %s not observed", tt.outcome)
			}
			if tt.status == 200 {
				held, echoed, _ := strings.Cut(string(got), ":")
				if echoed != tt.wantEcho {
					t.Errorf("next got %d bytes, want %d", len(echoed), len(tt.wantEcho))
				}
				if tt.holdsSome == (held == "0") {
					t.Errorf("%s bytes held while the handler ran", held)
				}
			}
			if n := br.inFlight.Load(); n != 0 {
				t.Errorf("%d bytes still counted in flight after the request", n)
			}
		})
	}
}

// TestReadBodies_TooSlow: a body that stalls after its grace is cut off with 408 at its
// deadline (the client sends nothing more), and the connection is closed.
func TestReadBodies_TooSlow(t *testing.T) {
	obs := &guardObserver{}
	var br *bodyReader
	br = ReadBodies(echo(&br), BodyOptions{MaxBytes: 1 << 20, MinRate: 1000, Grace: 200 * time.Millisecond, Observer: obs}).(*bodyReader)
	srv := httptest.NewServer(br)
	defer srv.Close()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	c.SetReadDeadline(time.Now().Add(30 * time.Second)) // generous: the relay must answer long before
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled body: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Fatalf("status %d, close %v; want 408 and the connection closed", resp.StatusCode, resp.Close)
	}
	if obs.count(relay.OutcomeTooSlow) != 1 {
		t.Errorf("too_slow not observed")
	}
}

func TestBodyDeadline(t *testing.T) {
	start := time.Unix(1000, 0)
	tests := []struct {
		name string
		o    BodyOptions
		got  int64
		want time.Time
	}{
		{"grace only", BodyOptions{MinRate: 1000, Grace: 5 * time.Second}, 0, start.Add(5 * time.Second)},
		{"a second per rate's worth", BodyOptions{MinRate: 1000, Grace: 5 * time.Second}, 3000, start.Add(8 * time.Second)},
		{"read timeout caps", BodyOptions{MinRate: 1000, Grace: 5 * time.Second, ReadTimeout: 6 * time.Second}, 3000, start.Add(6 * time.Second)},
		{"read timeout alone", BodyOptions{ReadTimeout: 6 * time.Second}, 3000, start.Add(6 * time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &bodyReader{o: tt.o}
			if got := b.deadline(start, tt.got); !got.Equal(tt.want) {
				t.Fatalf("deadline = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestReadBodies_HandsHeldBody: next gets the body as a relay.HeldBody whose bytes are the
// ones read, which the Receiver takes without copying them.
func TestReadBodies_HandsHeldBody(t *testing.T) {
	var held []byte
	h := ReadBodies(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hb, ok := r.Body.(relay.HeldBody)
		if !ok {
			t.Errorf("body %T is not a relay.HeldBody", r.Body)
			return
		}
		held = hb.HeldBytes()
	}), BodyOptions{MaxBytes: 1 << 20})
	body := `{"object":"page"}`
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)))
	if string(held) != body {
		t.Fatalf("held %q, want %q", held, body)
	}
}

// TestReadBodies_PreemptsSlowest: slow bodies that fill max_body_bytes_in_flight (here with a
// min rate far too low to cut them) give way to a fast one: the slowest is cut off with 408
// and the fast body gets through.
func TestReadBodies_PreemptsSlowest(t *testing.T) {
	obs := &guardObserver{}
	var br *bodyReader
	br = ReadBodies(echo(&br), BodyOptions{MaxBytes: 1 << 20, MaxInFlight: 256 << 10, Observer: obs}).(*bodyReader)
	srv := httptest.NewServer(br)
	defer srv.Close()
	// Four bodies send 60 KiB each and stall: their buffers (64 KiB each) fill the budget.
	var slow []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n%s", strings.Repeat("s", 60<<10))
		slow = append(slow, c)
	}
	deadline := time.Now().Add(20 * time.Second)
	for br.inFlight.Load() < 4*(64<<10) {
		if time.Now().After(deadline) {
			t.Fatalf("slow bodies hold %d bytes, want the whole budget", br.inFlight.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(2 * preemptMinAge) // old enough to be judged (a lower bound, not a timing assertion)
	resp, err := srv.Client().Post(srv.URL, "application/json", strings.NewReader(strings.Repeat("f", 100<<10)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fast body: status %d, want 200 (a slow one preempted)", resp.StatusCode)
	}
	if obs.count(relay.OutcomeTooSlow) == 0 {
		t.Fatal("no slow body was cut off")
	}
}
