package relay

import (
	"bufio"
	"bytes"
	"encoding/json"
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
	deadline := time.Now().Add(60 * time.Second)
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
