package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLI_MisuseGolden runs hubrelay with the command-line mistakes and help requests a
// newcomer makes and compares what it prints, and its exit code, with
// testdata/cli/<case>.golden (-update rewrites them). A mistake must say what is wrong and
// how to get help; help goes to standard output and exits 0.
func TestCLI_MisuseGolden(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no-command", nil},
		{"help", []string{"-h"}},
		{"typo-command", []string{"sever"}},
		{"config-without-flag", []string{"serve", "config.example.yaml"}},
		{"serve-help", []string{"serve", "-h"}},
		{"check-unknown-flag", []string{"check", "-confg", "x.yaml"}},
		{"route-help", []string{"route", "--help"}},
		{"route-no-payload", []string{"route", "-config", "config.example.yaml"}},
		{"route-two-payloads", []string{"route", "-config", "config.example.yaml", "a.json", "b.json"}},
		{"route-flag-without-dash", []string{"route", "-config", "config.example.yaml", "a.json", "json"}},
		{"send-no-url", []string{"send", "-secret", "s", "a.json"}},
		{"deadletter-help", []string{"deadletter", "--help"}},
		{"deadletter-none", []string{"deadletter"}},
		{"deadletter-typo", []string{"deadletter", "lst"}},
		{"deadletter-bogus", []string{"deadletter", "bogus"}},
		{"deadletter-show-help", []string{"deadletter", "show", "-h"}},
		{"deadletter-show-no-id", []string{"deadletter", "show", "-config", "x.yaml"}},
		{"deadletter-replay-nothing", []string{"deadletter", "replay", "-config", "x.yaml"}},
		{"version-help", []string{"version", "-h"}},
		{"version-stray", []string{"version", "now"}},
		{"help-route", []string{"help", "route"}},
		{"sinks-help", []string{"sinks", "-h"}},
		{"sinks-none", []string{"sinks"}},
		{"sinks-typo", []string{"sinks", "paus"}},
		{"sinks-pause-help", []string{"sinks", "pause", "-h"}},
		{"sinks-pause-no-name", []string{"sinks", "pause", "-config", "x.yaml"}},
		{"sinks-list-stray", []string{"sinks", "list", "-config", "x.yaml", "orders"}},
		{"spool-none", []string{"spool"}},
		{"spool-typo", []string{"spool", "recovr"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
			got := fmt.Sprintf("$ hubrelay %s\nexit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(tt.args, " "), exitCode(err), stdout.String(), stderr.String())
			golden := filepath.Join("testdata", "cli", tt.name+".golden")
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
		})
	}
}

// TestParseArgs_Interspersed checks that flags after the positional arguments are parsed,
// and that "--" ends the flags.
func TestParseArgs_Interspersed(t *testing.T) {
	tests := []struct {
		args     []string
		wantJSON bool
		wantPos  []string
	}{
		{[]string{"-json", "p.json"}, true, []string{"p.json"}},
		{[]string{"p.json", "-json"}, true, []string{"p.json"}},
		{[]string{"-config", "c.yaml", "p.json", "-app", "shop", "-json"}, true, []string{"p.json"}},
		{[]string{"--", "-json"}, false, []string{"-json"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			e := env{stdout: &stdout, stderr: &stderr}
			fs := newFlags("route", e)
			asJSON := fs.Bool("json", false, "")
			fs.String("config", "", "")
			fs.String("app", "", "")
			pos, err := parseArgs(fs, tt.args, e)
			if err != nil {
				t.Fatalf("parseArgs: %v\n%s", err, stderr.String())
			}
			if *asJSON != tt.wantJSON || strings.Join(pos, " ") != strings.Join(tt.wantPos, " ") {
				t.Errorf("json=%v pos=%q, want json=%v pos=%q", *asJSON, pos, tt.wantJSON, tt.wantPos)
			}
		})
	}
}

// TestCommands_Help checks that every visible command and subcommand prints its own help,
// naming itself and its usage, and exits 0.
func TestCommands_Help(t *testing.T) {
	for _, c := range commands {
		if c.hidden {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append(strings.Fields(c.name), "-h")
			err := run(context.Background(), args, func(string) string { return "" }, nil, &stdout, &stderr)
			if err != nil || !strings.Contains(stdout.String(), c.usageLine()) || !strings.Contains(stdout.String(), upperFirst(c.summary)) {
				t.Errorf("%v: err=%v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
			}
		})
	}
}
