package relay

import (
	"bufio"
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// logSink collects JSON log lines for assertions.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// count returns how many lines contain every one of subs.
func (s *logSink) count(subs ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(s.buf.Bytes()))
	sc.Buffer(nil, 1<<20)
next:
	for sc.Scan() {
		for _, sub := range subs {
			if !strings.Contains(sc.Text(), sub) {
				continue next
			}
		}
		n++
	}
	return n
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitLog polls until a line contains every one of subs: the server logs a failed handshake
// on its own goroutine, possibly after the client has seen the failure.
func (s *logSink) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.count(subs...) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; log:\n%s", subs, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startTLSServer serves h over TLS on loopback the way serve.go does: http.Server with
// TLSConfig, ServeTLS without files, HTTPErrorLog.
