package relay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

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

func TestLogSampler_Kinds(t *testing.T) {
	logs := &logSink{}
	lg := logs.logger()
	s := NewLogSampler(time.Hour) // the interval never ends during the test
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

// TestLogSampler_BurstEnd: the lines left out at the end of a burst are written, counted, in
// one line when the interval ends.
func TestLogSampler_BurstEnd(t *testing.T) {
	logs := &logSink{}
	s := NewLogSampler(50 * time.Millisecond)
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

// TestReceiver_ForgedFloodLogsSampled: N forged requests give every one a 401 but only a few
// log lines, which together count all N.
func TestReceiver_ForgedFloodLogsSampled(t *testing.T) {
	logs := &logSink{}
	rc := NewReceiver(ReceiverConfig{Apps: []App{{Name: "shop", Path: "/webhooks", VerifyToken: "tok",
		Verifier: NewVerifier([]string{"the-secret"}, false)}}}, nil, nil, nil, nil, logs.logger())
	defer rc.sample.Stop()
	const n = 2000
	start := time.Now()
	for i := range n {
		req := httptest.NewRequest(http.MethodPost, "/webhooks", strings.NewReader(`{"object":"page","entry":[]}`))
		req.Header.Set("X-Hub-Signature-256", "sha256=00")
		if i%2 == 1 {
			req.Header.Del("X-Hub-Signature-256") // missing: another reason, the same kind
		}
		rec := httptest.NewRecorder()
		rc.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d", i, rec.Code)
		}
	}
	took := time.Since(start)
	deadline := time.Now().Add(15 * time.Second)
	for {
		lines, total := accounted(t, logs, "notification refused")
		if total == n {
			// One line per second of flood, plus the first and the one at the end.
			if max := int(took/DefaultLogEvery) + 2; lines > max {
				t.Fatalf("%d lines for %d forged requests in %v, want at most %d", lines, n, took, max)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lines account for %d of %d forged requests:\n%s", lines, total, n, logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
