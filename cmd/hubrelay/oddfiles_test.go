//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/hubrelay/hubrelay/relay"
)

// mkfifo makes a named pipe at path; at cleanup it opens and drains it, so that anything still
// blocked on it (a failing test) ends.
func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o640); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			go func() { io.Copy(io.Discard, f); f.Close() }()
		}
		if f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
}

// bounded runs f and fails the test if it has not returned after a generous deadline.
func bounded(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still blocked after 30s", what)
	}
}

// TestServe_OddFilesInDeadLetterDir: named pipes and a link to /dev/zero in the dead-letter
// directory and its replay folder block nothing: deliveries go on, `deadletter list`, `show`
// and `replay` answer, naming the skipped files, and the running relay replays the real letter.
func TestServe_OddFilesInDeadLetterDir(t *testing.T) {
	sink := newCollector(t)
	sink.setReject(true)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, freeAddr(t), sink.srv.URL)
	dl := filepath.Join(dir, "data", "dead-letter")
	if err := os.MkdirAll(filepath.Join(dl, "replay"), 0o750); err != nil {
		t.Fatal(err)
	}
	const fifoID = "orders-00000000000000000077"
	mkfifo(t, filepath.Join(dl, fifoID+".json"))
	mkfifo(t, filepath.Join(dl, "replay", "orders-00000000000000000078.json"))
	if err := os.Symlink("/dev/zero", filepath.Join(dl, "zero.json")); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, dir, cfg)

	wa, _ := os.ReadFile("testdata/whatsapp_text_message.json")
	if st, _ := post(t, r.url+"/webhooks", wa, relay.Sign(wa, testSecret)); st != 200 {
		t.Fatalf("status %d", st)
	}
	waitFor(t, "the dead letter of a rejected delivery", func() bool {
		m, _ := filepath.Glob(filepath.Join(dl, "orders-*.json"))
		return len(m) == 2 // the pipe and the real letter
	})
	bounded(t, "deadletter list", func() {
		out, err := cli(t, "deadletter", "list", "-config", cfg)
		if err == nil || !strings.Contains(err.Error(), fifoID+".json") || !strings.Contains(err.Error(), "named pipe") ||
			!strings.Contains(err.Error(), "zero.json") || !strings.Contains(err.Error(), "skipped") {
			t.Errorf("list error %v, want the pipe and the link named as skipped", err)
		}
		if !strings.Contains(out, "permanent") {
			t.Errorf("list does not show the real letter:\n%s", out)
		}
	})
	bounded(t, "deadletter show", func() {
		if _, err := cli(t, "deadletter", "show", "-config", cfg, fifoID); err == nil || !strings.Contains(err.Error(), "named pipe") {
			t.Errorf("show of a pipe: %v", err)
		}
	})
	sink.setReject(false)
	bounded(t, "deadletter replay", func() {
		out, err := cli(t, "deadletter", "replay", "-config", cfg, "-all")
		if !strings.Contains(out, "1 dead letter(s) queued for the running relay") {
			t.Errorf("replay: %v\n%s", err, out)
		}
	})
	waitFor(t, "the replayed delivery", func() bool { return len(sink.ids()) == 1 })
	if !strings.Contains(r.logs.String(), "named pipe") {
		t.Errorf("the relay does not report the pipe in replay/:\n%s", r.logs)
	}
	r.stop(t)
}

// TestServe_ShutdownBoundedWithStuckWorker: a delivery stuck where cancelling cannot reach it
// (a file sink writing to a named pipe nobody reads) does not keep serve from returning soon
// after shutdown_timeout, and the change is not lost: it stays in the spool.
func TestServe_ShutdownBoundedWithStuckWorker(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o750); err != nil {
		t.Fatal(err)
	}
	pipe := filepath.Join(data, "stuck.jsonl")
	mkfifo(t, pipe)
	addr := freeAddr(t)
	cfg := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`server:
  listen: %s
  shutdown_timeout: 1s
apps:
  - name: shop
    verify_token: v
    app_secrets: [${TEST_APP_SECRET}]
storage:
  dir: %s
sinks:
  - name: stuck
    type: file
    path: %s
rules:
  - name: all
    sinks: [stuck]
`, addr, data, pipe)), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, dir, cfg)
	// One change bigger than a pipe's buffer: its write blocks for ever.
	big := strings.Replace(string(waPayload("stuck")), `"hi"`, `"`+strings.Repeat("x", 256<<10)+`"`, 1)
	if st, _ := post(t, r.url+"/webhooks", []byte(big), relay.Sign([]byte(big), testSecret)); st != 200 {
		t.Fatalf("status %d", st)
	}
	waitFor(t, "the sink's write to fill the pipe", func() bool { return pipeFull(t, pipe) })
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not return within 30s of the signal (shutdown_timeout 1s)\nlogs:\n%s", r.logs)
	}
	if !strings.Contains(r.logs.String(), "exiting without them") {
		t.Errorf("no line says deliveries were left behind:\n%s", r.logs)
	}
}

// pipeFull reports whether the named pipe at path holds a full pipe buffer (64 KiB on Linux)
// of unread bytes, without reading them.
func pipeFull(t *testing.T, path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int32
	rc.Control(func(fd uintptr) {
		syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	})
	return n >= 64<<10
}
