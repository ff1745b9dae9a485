package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// throwawayPG is a PostgreSQL cluster of the test's own, on a free loopback port, run as the
// postgres user when the test runs as root (the server refuses root). Stopping it never touches
// the machine's shared server.
type throwawayPG struct {
	bin, data, sock string
	port            int
	cred            *syscall.Credential
}

func startThrowawayPG(t *testing.T) *throwawayPG {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("no /usr/lib/postgresql/*/bin/initdb: .ci/run must install postgresql")
		}
		t.Skip("SKIPPING the Postgres outage test: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
	}
	sort.Strings(bins)
	pg := &throwawayPG{bin: filepath.Dir(bins[len(bins)-1])}
	root, err := os.MkdirTemp("", "hubrelay-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("SKIPPING the Postgres outage test: running as root and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		pg.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		os.Chown(root, uid, gid)
	}
	pg.data, pg.sock = filepath.Join(root, "data"), root
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pg.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	pg.run(t, "initdb", "-A", "trust", "-U", "postgres", "-D", pg.data)
	pg.start(t)
	t.Cleanup(func() { pg.ctl("stop", "-m", "immediate") })
	return pg
}

func (pg *throwawayPG) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(pg.bin, name), args...)
	if pg.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	}
	cmd.Dir = pg.sock
	return cmd
}

func (pg *throwawayPG) run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := pg.command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}

func (pg *throwawayPG) ctl(args ...string) error {
	base := []string{"-s", "-w", "-D", pg.data}
	return pg.command("pg_ctl", append(base, args...)...).Run()
}

func (pg *throwawayPG) start(t *testing.T) {
	t.Helper()
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=on -c synchronous_commit=on", pg.port, pg.sock)
	if out, err := pg.command("pg_ctl", "-s", "-w", "-D", pg.data, "-l", filepath.Join(pg.sock, "log"), "-o", opts, "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(pg.sock, "log"))
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
}

func (pg *throwawayPG) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pg.port)
}

// TestPostgres_OutageUnderLoad stops the database (immediate mode: a crash) while signed
// notifications pour in, then starts it again: no 200 for anything not committed (every
// acknowledged change is delivered), /readyz is not ready during the outage, and the relay
// recovers by itself.
func TestPostgres_OutageUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster")
	}
	pg := startThrowawayPG(t)
	a, b := newCrashSink(t, "sink-a"), newCrashSink(t, "sink-b")
	dir := t.TempDir()
	cfgPath := writePGConfig(t, dir, freeAddr(t), pg.url(), "hubrelay", a.srv.URL, b.srv.URL)
	r := startPGRelay(t, cfgPath)

	load := crashLoad(t, 300)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := startPGLoad(t, ctx, load, func(int, int) string { return r.url + "/webhooks" })
	waitFor(t, "a third of the load answered", func() bool { return l.answered.Load() >= int64(len(load)/3) })
	if err := pg.ctl("stop", "-m", "immediate"); err != nil {
		t.Fatalf("pg_ctl stop: %v", err)
	}
	stoppedAt := l.answered.Load()
	waitFor(t, "/readyz not ready while the database is down", func() bool {
		resp, err := http.Get(r.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	time.Sleep(time.Second)
	pg.start(t)
	waitFor(t, "/readyz ready again", func() bool {
		resp, err := http.Get(r.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	want := l.wait()
	waitDelivered(t, []*crashSink{a, b}, want, func() { t.Logf("logs:\n%s", r.logs) })
	if l.unavail.Load() == 0 && l.transport.Load() == 0 {
		t.Error("no request failed during the outage: the test did not test one")
	}
	t.Logf("acknowledged %d changes (%d notifications answered before the stop); %d 503s and %d transport errors during the outage",
		len(want), stoppedAt, l.unavail.Load(), l.transport.Load())
}

// TestPostgres_StartWithDatabaseDown starts the relay while its database is stopped: it
// listens, answers Meta's GET verification, answers POSTs 503 and is not ready. Once the
// database starts it becomes ready by itself (no restart), and a signed POST is acknowledged
// and delivered to every sink.
func TestPostgres_StartWithDatabaseDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL cluster")
	}
	pg := startThrowawayPG(t)
	if err := pg.ctl("stop", "-m", "fast"); err != nil {
		t.Fatalf("pg_ctl stop: %v", err)
	}
	a, b := newCrashSink(t, "sink-a"), newCrashSink(t, "sink-b")
	dir := t.TempDir()
	r := startPGRelay(t, writePGConfig(t, dir, freeAddr(t), pg.url(), "hubrelay", a.srv.URL, b.srv.URL))
	get := func(path string) (int, string) {
		resp, err := http.Get(r.url + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if st, body := get("/readyz"); st != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the database down: %d %q, want 503", st, body)
	}
	if st, body := get("/webhooks?hub.mode=subscribe&hub.verify_token=crash-verify&hub.challenge=4242"); st != http.StatusOK || body != "4242" {
		t.Fatalf("GET verification with the database down: %d %q, want 200 4242", st, body)
	}
	note := crashLoadItem(t, 1, 2, "down")
	if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", note); err != nil || st != http.StatusServiceUnavailable {
		t.Fatalf("POST with the database down: %d, %v; want 503", st, err)
	}
	pg.start(t)
	waitForWithin(t, "/readyz ready once the database is up", time.Minute, func() bool {
		st, _ := get("/readyz")
		return st == http.StatusOK
	})
	if st, err := postOnce(http.DefaultClient, r.url+"/webhooks", note); err != nil || st != http.StatusOK {
		t.Fatalf("POST once the database is up: %d, %v; want 200\nlogs:\n%s", st, err, r.logs)
	}
	for _, s := range []*crashSink{a, b} {
		waitForWithin(t, s.name+" delivery", time.Minute, func() bool { return len(s.missing(note.ids)) == 0 })
	}
	for _, line := range []string{"postgres not reachable at start", "postgres reached: storage up"} {
		if !strings.Contains(r.logs.String(), line) {
			t.Errorf("no %q in the logs:\n%s", line, r.logs)
		}
	}
}
