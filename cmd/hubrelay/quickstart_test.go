package main

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// readmeBlocks returns the ```sh blocks of the README's "Quick start" section.
func readmeBlocks(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "## Quick start")
	if i < 0 {
		t.Fatal("README has no ## Quick start")
	}
	s = s[i:]
	if j := strings.Index(s[3:], "\n## "); j >= 0 {
		s = s[:j+3]
	}
	var blocks [][]string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(s, -1) {
		var lines []string
		for l := range strings.SplitSeq(m[1], "\n") {
			if c := strings.Index(l, "  #"); c >= 0 {
				l = l[:c]
			}
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		blocks = append(blocks, lines)
	}
	return blocks
}

// findLine returns the first line of lines starting with prefix.
func findLine(t *testing.T, lines []string, prefix string) string {
	t.Helper()
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("README quick start has no command starting with %q:\n%s", prefix, strings.Join(lines, "\n"))
	return ""
}

// TestReadme_QuickStart does what the README's quick start tells a newcomer to do, with the
// commands read from README.md: build the binary, start the relay with config.example.yaml,
// answer the verification GET, send the sample, and find its change in the file the README
// says to tail. It fails when the README and the behaviour drift apart. The only liberty
// taken: the relay listens on a free port (other tests and engineers share the machine), and
// the commands' 127.0.0.1:8080 is rewritten to it.
func TestReadme_QuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	blocks := readmeBlocks(t)
	if len(blocks) < 2 {
		t.Fatalf("README quick start has %d sh blocks, want the two commands and the try-it block", len(blocks))
	}
	first := findLine(t, blocks[0], "go build -o hubrelay ./cmd/hubrelay && ./hubrelay serve")
	serveLine := strings.TrimSpace(strings.SplitN(first, "&&", 2)[1])
	findLine(t, blocks[0], "go test -race ./...")
	try := blocks[1]
	curl := findLine(t, try, "curl ")
	send := findLine(t, try, "./hubrelay send ")
	tail := findLine(t, try, "tail -f ")

	repo, _ := filepath.Abs("../..")
	dir := t.TempDir()
	bin, _ := buildRelay(t, dir)

	// The config, as the README names it, on free ports.
	cfgName := strings.Fields(strings.TrimPrefix(serveLine, "./hubrelay serve"))
	if len(cfgName) != 2 || cfgName[0] != "-config" {
		t.Fatalf("serve line %q: want -config FILE", serveLine)
	}
	cfg, err := os.ReadFile(filepath.Join(repo, cfgName[1]))
	if err != nil {
		t.Fatal(err)
	}
	const readmeAddr = "127.0.0.1:8080"
	body := strings.Replace(string(cfg), "listen: "+readmeAddr, "listen: 127.0.0.1:0", 1)
	body = regexp.MustCompile(`(?m)^\s+listen: 127\.0\.0\.1:[1-9]\d*.*$`).ReplaceAllString(body, "") // admin.listen: health and metrics on the webhook port
	if body == string(cfg) {
		t.Fatalf("%s does not listen on %s as the README says", cfgName[1], readmeAddr)
	}
	os.WriteFile(filepath.Join(dir, cfgName[1]), []byte(body), 0o644)

	srv := exec.Command(bin, "serve", "-config", cfgName[1])
	srv.Dir = dir
	srv.Env = append(os.Environ(), "HUBRELAY_VERIFY_TOKEN=", "HUBRELAY_APP_SECRET=")
	addr, logs := startListening(t, srv)

	// The verification GET: prints the challenge.
	u := regexp.MustCompile(`'([^']+)'`).FindStringSubmatch(curl)
	if u == nil {
		t.Fatalf("curl line %q: no quoted URL", curl)
	}
	resp, err := http.Get(strings.Replace(u[1], readmeAddr, addr, 1))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(u[1], "hub.challenge="+string(got)) {
		t.Errorf("verification GET: %d %q", resp.StatusCode, got)
	}

	// send, from the repository root as the README's relative paths assume.
	args := strings.Fields(strings.Replace(strings.TrimPrefix(send, "./hubrelay "), readmeAddr, addr, 1))
	cmd := exec.Command(bin, args...)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "HUBRELAY_APP_SECRET=")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "200 OK") || !strings.Contains(string(out), `"new":1`) {
		t.Fatalf("%s: %v\n%s\nrelay log:\n%s", send, err, out, logs())
	}

	// The change is in the file the README says to tail, relative to where serve runs.
	payload, _ := os.ReadFile(filepath.Join(repo, args[len(args)-1]))
	id := regexp.MustCompile(`"id":\s*"(wamid[^"]+)"`).FindSubmatch(payload)
	if id == nil {
		t.Fatalf("sample %s has no wamid", args[len(args)-1])
	}
	file := filepath.Join(dir, strings.TrimSpace(strings.TrimPrefix(tail, "tail -f ")))
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(file)
		if strings.Contains(string(b), string(id[1])) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not hold the sent change %s after 30s\nrelay log:\n%s", tail, id[1], logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startListening starts the relay srv, stops it (SIGINT) when the test ends, and waits until
// it logs "hubrelay listening" (text or JSON logs). It returns the address logged and a
// function that returns the relay's log so far, safe to call while the relay still writes.
func startListening(t *testing.T, srv *exec.Cmd) (addr string, logs func() string) {
	t.Helper()
	stderr, err := srv.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Signal(os.Interrupt); srv.Wait() })
	var mu sync.Mutex
	var b strings.Builder
	logs = func() string {
		mu.Lock()
		defer mu.Unlock()
		return b.String()
	}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		re := regexp.MustCompile(`msg="hubrelay listening".* addr=(\S+)|"msg":"hubrelay listening".*?"addr":"([^"]+)"`)
		for sc.Scan() {
			mu.Lock()
			b.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addrc <- m[1] + m[2]:
				default:
				}
			}
		}
		close(addrc)
	}()
	select {
	case addr = <-addrc:
	case <-time.After(60 * time.Second):
	}
	if addr == "" {
		t.Fatalf("the relay did not log hubrelay listening with its addr:\n%s", logs())
	}
	return addr, logs
}
