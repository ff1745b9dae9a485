package logsample

import (
	"bufio"
	"bytes"
	"encoding/json"
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

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// count returns how many lines contain every one of subs.
func (s *logSink) count(subs ...string) int {
	n := 0
next:
	for _, line := range strings.Split(s.String(), "\n") {
		if line == "" {
			continue
		}
		for _, sub := range subs {
			if !strings.Contains(line, sub) {
				continue next
			}
		}
		n++
	}
	return n
}

// accounted decodes the JSON lines in logs whose msg is msg and returns how many there are and
// how many refusals they account for: each line itself plus its suppressed count.
func accounted(t *testing.T, logs *logSink, msg string) (lines, total int) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader([]byte(logs.String())))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if rec["msg"] != msg {
			continue
		}
		lines++
		total++
		if n, ok := rec[SuppressedKey].(float64); ok {
			total += int(n)
		}
	}
	return lines, total
}

func TestSampler_Kinds(t *testing.T) {
	logs := &logSink{}
	lg := logs.logger()
	s := New(time.Hour) // the interval never ends during the test
	defer s.Stop()
	now := time.Unix(1_700_000_000, 0)
	s.now = func() time.Time { return now }
	for range 10 {
		s.Log(lg, slog.LevelWarn, "a", "refused", "reason", "a")
	}
	s.Log(lg, slog.LevelWarn, "b", "refused", "reason", "b")
	if n := logs.count(`"msg":"refused"`); n != 2 {
		t.Fatalf("%d lines, want one per kind (2):\n%s", n, logs)
	}
	now = now.Add(time.Hour)
	s.Log(lg, slog.LevelWarn, "a", "refused", "reason", "a")
	if logs.count(`"reason":"a"`, `"suppressed":9`) != 1 {
		t.Fatalf("no line counting the 9 suppressed lines:\n%s", logs)
	}
	s.Log(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelError})), slog.LevelWarn, "c", "quiet")
	if logs.count(`"msg":"quiet"`) != 0 {
		t.Fatalf("a level the logger does not log was written:\n%s", logs)
	}
	for i := range 3 * maxSampledKinds {
		s.Log(lg, slog.LevelWarn, strings.Repeat("k", i%50)+string(rune('a'+i%26))+time.Duration(i).String(), "many")
	}
	s.mu.Lock()
	kinds := len(s.kinds)
	s.mu.Unlock()
	if kinds > maxSampledKinds+1 {
		t.Fatalf("%d kinds tracked, want at most %d", kinds, maxSampledKinds+1)
	}
}

// TestSampler_BurstEnd: the lines left out at the end of a burst are written, counted, in
// one line when the interval ends.
func TestSampler_BurstEnd(t *testing.T) {
	logs := &logSink{}
	s := New(50 * time.Millisecond)
	defer s.Stop()
	const n = 100
	for range n {
		s.Log(logs.logger(), slog.LevelError, "spool", "spool commit failed", "err", "disk full")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines, total := accounted(t, logs, "spool commit failed")
		if total == n {
			if lines > 4 {
				t.Fatalf("%d lines for a burst of %d, want a few", lines, n)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines account for %d of %d:\n%s", lines, total, n, logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
