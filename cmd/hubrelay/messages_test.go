package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// messageConfig writes a config listening on addr with text logs.
func messageConfig(t *testing.T, dir, addr string) string {
	t.Helper()
	cfg := fmt.Sprintf("server:\n  listen: %s\n  path: /webhooks\nlog:\n  format: text\n"+
		"apps: [{name: shop, verify_token: t, app_secrets: [s]}]\nstorage:\n  dir: %s\n"+
		"sinks: [{name: archive, type: file, path: %s}]\nrules: [{name: all, sinks: [archive]}]\n",
		addr, filepath.Join(dir, "data"), filepath.Join(dir, "events.jsonl"))
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// normalize replaces what changes from run to run (times, the temporary directory, ports) in
// log text with fixed words, for golden files.
func normalize(s, dir string) string {
	s = strings.ReplaceAll(s, dir, "DIR")
	s = regexp.MustCompile(`time=\S+ `).ReplaceAllString(s, "")
	s = regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAllString(s, "127.0.0.1:PORT")
	return s
}

// checkGolden compares got with testdata/serve/name.golden (-update rewrites it).
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	golden := filepath.Join("testdata", "serve", name+".golden")
	if *update {
		os.MkdirAll(filepath.Dir(golden), 0o755)
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("output changed:\n--- got\n%s\n--- want\n%s", got, want)
	}
}

// TestServe_BindFailureGolden: with the port taken, serve says which key (file:line:col)
// holds the address and what to do, before opening the spool (no spool lines, no ERROR).
func TestServe_BindFailureGolden(t *testing.T) {
	dir := t.TempDir()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := messageConfig(t, dir, taken.Addr().String())
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"serve", "-config", cfg}, func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
	got := fmt.Sprintf("exit %d\n--- stdout\n%s--- stderr\n%s", exitCode(err), stdout.String(), stderr.String())
	checkGolden(t, "bind-taken", normalize(got, dir))
}

// TestServe_RefusalLogGolden: a wrong path (404) and a wrong method (405) are logged, with
// the paths that are valid and the methods to use.
func TestServe_RefusalLogGolden(t *testing.T) {
	dir := t.TempDir()
	cfg := messageConfig(t, dir, "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "-config", cfg}, func(string) string { return "" }, strings.NewReader(""), io.Discard, logs)
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Error("serve did not stop")
		}
	}()
	addrRE := regexp.MustCompile(`msg="hubrelay listening" addr=(\S+)`)
	var addr string
	waitForLong(t, "hubrelay listening", func() bool {
		if m := addrRE.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			return true
		}
		return false
	})
	for _, r := range []struct{ method, path string }{{"GET", "/nope"}, {"PUT", "/webhooks"}} {
		req, _ := http.NewRequest(r.method, "http://"+addr+r.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	var lines []string
	waitForLong(t, "two refusal lines", func() bool {
		lines = lines[:0]
		for l := range strings.SplitSeq(logs.String(), "\n") {
			if strings.Contains(l, `msg="request refused"`) {
				lines = append(lines, l)
			}
		}
		return len(lines) == 2
	})
	checkGolden(t, "refusals", normalize(strings.Join(lines, "\n")+"\n", dir))
}

// waitForLong polls cond for up to a minute (the machine may be loaded).
func waitForLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 60s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
