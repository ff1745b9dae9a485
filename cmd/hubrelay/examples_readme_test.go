package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestExamplesReadme_TryOne does what examples/README.md's "Try one" says, with its commands:
// build, serve the example, send its sample, and find the change in the file it says to
// tail -f. The example's port is rewritten to a free one; everything else runs as written,
// from a copy of the repository's examples (the relay writes ./data relative to where it runs).
func TestExamplesReadme_TryOne(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	b, err := os.ReadFile("../../examples/README.md")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(b), -1) {
		for l := range strings.SplitSeq(m[1], "\n") {
			if c := strings.Index(l, "  #"); c >= 0 {
				l = l[:c]
			}
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	serve := findLine(t, lines, "./hubrelay serve ")
	send := findLine(t, lines, "./hubrelay send ")
	tail := findLine(t, lines, "tail -f ")
	findLine(t, lines, "go build -o hubrelay ./cmd/hubrelay")

	repo, _ := filepath.Abs("../..")
	dir := t.TempDir()
	bin, _ := buildRelay(t, dir)
	args := strings.Fields(strings.TrimPrefix(serve, "./hubrelay "))
	cfgName := args[len(args)-1]
	cfg, err := os.ReadFile(filepath.Join(repo, cfgName))
	if err != nil {
		t.Fatal(err)
	}
	addr := regexp.MustCompile(`(?m)^  listen: (127\.0\.0\.1:\d+)`).FindSubmatch(cfg)
	if addr == nil {
		t.Fatalf("%s: no server.listen on 127.0.0.1", cfgName)
	}
	os.MkdirAll(filepath.Dir(filepath.Join(dir, cfgName)), 0o755)
	os.WriteFile(filepath.Join(dir, cfgName), []byte(strings.Replace(string(cfg), string(addr[1]), "127.0.0.1:0", 1)), 0o644)

	srv := exec.Command(bin, args...)
	srv.Dir = dir
	got, logs := startListening(t, srv)
	if resp, err := http.Get("http://" + got + "/healthz"); err == nil {
		resp.Body.Close()
	}

	sargs := strings.Fields(strings.Replace(strings.TrimPrefix(send, "./hubrelay "), string(addr[1]), got, 1))
	sargs[len(sargs)-1] = filepath.Join(repo, sargs[len(sargs)-1]) // relative to the repository root, where the README runs it
	out, err := exec.Command(bin, sargs...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "200 OK") || !strings.Contains(string(out), `"new":1`) {
		t.Fatalf("%s: %v\n%s\nrelay log:\n%s", send, err, out, logs())
	}
	file := filepath.Join(dir, strings.TrimSpace(strings.TrimPrefix(tail, "tail -f ")))
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, _ := os.ReadFile(file); len(b) > 0 && strings.HasSuffix(string(b), "\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s stays empty 30s after send\nrelay log:\n%s", file, logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
