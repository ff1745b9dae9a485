package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// TestServe_SecondSignalExitsAtOnce: SIGTERM starts a graceful shutdown that waits (here up to
// a minute) for a delivery stuck in a slow sink; a second SIGTERM ends the process at once.
// The spool is still consistent: after a restart the change is delivered.
func TestServe_SecondSignalExitsAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin, _ := buildRelay(t, dir)
	var stuck atomic.Bool
	stuck.Store(true)
	var calls, delivered atomic.Int64
	release := make(chan struct{})
	defer close(release)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		calls.Add(1)
		if stuck.Load() {
			select { // hold the delivery until the test ends
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		delivered.Add(1)
	}))
	defer sink.Close()
	cfgPath := filepath.Join(dir, "hubrelay.yaml")
	cfg := fmt.Sprintf(`server:
  listen: %s
  shutdown_timeout: 60s
apps:
  - name: %s
    verify_token: v
    app_secrets: [${%s}]
storage:
  dir: %s
sinks:
  - name: slow
    type: http
    url: %s
    timeout: 50s
    retry: {in_process: 0}
rules:
  - name: all
    sinks: [slow]
`, freeAddr(t), crashApp, crashSecretEnv, filepath.Join(dir, "data"), sink.URL)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "relay.log")
	p := startCrashProcess(t, bin, cfgPath, logPath, 1)
	body := waPayload("second-signal")
	req, _ := http.NewRequest(http.MethodPost, p.url+"/webhooks", bytes.NewReader(body))
	req.Header.Set("X-Hub-Signature-256", relay.Sign(body, crashSecret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("post: %v %v", resp, err)
	}
	resp.Body.Close()
	waitCrash(t, p, "the delivery in flight", 20*time.Second, func() bool { return calls.Load() == 1 })

	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		t.Fatal("the relay exited on the first signal although a delivery was in flight (it should drain)")
	case <-time.After(300 * time.Millisecond):
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		dumpRelayLog(t, logPath)
		t.Fatal("a second SIGTERM did not end the relay")
	}

	stuck.Store(false)
	p = startCrashProcess(t, bin, cfgPath, logPath, 2)
	waitCrash(t, p, "delivery after restart", 20*time.Second, func() bool { return delivered.Load() == 1 })
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
}
