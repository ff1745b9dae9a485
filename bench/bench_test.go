package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for `hubrelay bench-reference`: Run starts its
// reference targets as `<exe> bench-reference …`, and here exe is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "bench-reference" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		cfg, err := ParseReferenceArgs(os.Args[2:], os.Getenv, os.Stderr)
		if err == nil {
			err = ServeReference(ctx, cfg)
		}
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-reference:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRun_ReferenceSmoke runs a tiny bench against both references: it must measure something,
// refuse every bad signature, store every acknowledged body in the fsync reference's file,
// stop its children, and render as a table, JSON and SVG. It asserts no timing.
func TestRun_ReferenceSmoke(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A race-enabled child otherwise sleeps a second before exiting, at every phase.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	dir := t.TempDir()
	var progress bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep, err := Run(ctx, Options{
		Exe:          exe,
		Targets:      []string{TargetReference, TargetReferenceFsync},
		Concurrency:  []int{4},
		Duration:     200 * time.Millisecond,
		BatchChanges: 5,
		BadSig:       0.2,
		BodyBytes:    2048,
		Dir:          dir,
		Progress:     &progress,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got, want := len(rep.Phases), 4; got != want {
		t.Fatalf("%d phases, want %d (2 targets × (1 concurrency + 1 many-changes phase))", got, want)
	}
	for _, p := range rep.Phases {
		name := p.Label + " " + p.Target
		if p.Acked == 0 || p.AckedPerSec <= 0 || p.AckLatency.N != int(p.Acked) {
			t.Errorf("%s: acked %d at %.0f/s, %d latencies: want some, one latency each", name, p.Acked, p.AckedPerSec, p.AckLatency.N)
		}
		if p.Failed != 0 || p.BadAccepted != 0 {
			t.Errorf("%s: %d failed (first: %s), %d bad signatures accepted; want none", name, p.Failed, p.FirstError, p.BadAccepted)
		}
		if p.Requests != p.Acked+p.Rejected {
			t.Errorf("%s: %d requests, %d acked + %d rejected", name, p.Requests, p.Acked, p.Rejected)
		}
		if p.Statuses[401] != p.Rejected || p.Statuses[200] != p.Acked {
			t.Errorf("%s: statuses %v, want 200: %d and 401: %d", name, p.Statuses, p.Acked, p.Rejected)
		}
		if p.ChangesPerSec != p.AckedPerSec*float64(p.ChangesPerPost) {
			t.Errorf("%s: %.1f changes/s, want %.1f req/s × %d", name, p.ChangesPerSec, p.AckedPerSec, p.ChangesPerPost)
		}
		if len(p.Problems) > 0 {
			t.Errorf("%s: problems %v", name, p.Problems)
		}
	}
	var rejected int64
	for _, p := range rep.Phases {
		rejected += p.Rejected
	}
	if rejected == 0 {
		t.Errorf("no request with a bad signature was sent (bad-sig 0.2)")
	}

	// The fsync reference stored exactly the acknowledged bodies, each padded to 2048 bytes.
	for _, p := range rep.Phases {
		if p.Target != TargetReferenceFsync {
			continue
		}
		matches, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("*-%s-c%d-k%d", p.Target, p.Concurrency, p.ChangesPerPost), "reference.log"))
		if len(matches) != 1 {
			t.Fatalf("%s: %d fsync files", p.Label, len(matches))
		}
		lines, short := countLines(t, matches[0], 2048)
		if lines != int(p.Acked) || short > 0 {
			t.Errorf("%s: fsync file holds %d bodies (%d under 2048 bytes), want %d acknowledged", p.Label, lines, short, p.Acked)
		}
	}
	if n := strings.Count(progress.String(), "\n"); n != len(rep.Phases) {
		t.Errorf("%d progress lines, want one per phase:\n%s", n, progress.String())
	}

	var table, js, svg bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reference-fsync", "c=4, 5 changes/POST", "ack p50 ms"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Phases) != len(rep.Phases) {
		t.Errorf("JSON report does not read back: %v, %d phases", err, len(back.Phases))
	}
	if err := rep.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(svg.String(), "<svg") || !strings.Contains(svg.String(), "reference-fsync") {
		t.Errorf("SVG lacks <svg or the target names: %.200s", svg.String())
	}
}

func countLines(t *testing.T, path string, minLen int) (lines, short int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		lines++
		if len(sc.Bytes()) < minLen {
			short++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines, short
}

func TestOptions_Invalid(t *testing.T) {
	tests := []struct {
		name string
		opt  Options
		want string
	}{
		{"no executable", Options{}, "executable"},
		{"unknown scenario", Options{Exe: "x", Scenario: "soak"}, "scenario"},
		{"unknown target", Options{Exe: "x", Targets: []string{"nginx"}}, "target"},
		{"zero concurrency", Options{Exe: "x", Concurrency: []int{0}}, "concurrency"},
		{"bad-sig fraction of one", Options{Exe: "x", BadSig: 1}, "bad-signature"},
		{"too many changes per POST", Options{Exe: "x", ChangesPerPost: 5000}, "changes per POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(context.Background(), tt.opt)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run: %v, want an error about %q", err, tt.want)
			}
		})
	}
}

func TestOptions_SinkBatchSwapsTarget(t *testing.T) {
	o, err := Options{Exe: "x", SinkBatch: true, Targets: []string{TargetReferenceFsync, TargetHubrelay, TargetHubrelayBatch}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.Targets, ","); got != "reference-fsync,hubrelay-batch" {
		t.Errorf("targets %s, want reference-fsync,hubrelay-batch", got)
	}
}
