package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// repeatedWord returns a word that two adjacent segments of msg (split at ": ", the way
// wrapped errors are joined) both hold, or "" when none does: "open spool: open spool: …"
// or "listen: listen tcp …" say the same thing twice. Short function words don't count.
func repeatedWord(msg string) string {
	segs := strings.Split(msg, ": ")
	// words are in order, so that the first repeated word is reported whatever the run.
	words := func(s string) []string {
		var out []string
		for _, w := range strings.Fields(strings.ToLower(s)) {
			w = strings.Trim(w, `()"',;.`)
			switch w {
			case "", "a", "an", "the", "of", "to", "in", "on", "or", "and", "is", "it", "no", "not", "for", "at", "by", "with", "be":
				continue
			}
			out = append(out, w)
		}
		return out
	}
	for i := 1; i < len(segs); i++ {
		prev := words(segs[i-1])
		for _, w := range words(segs[i]) {
			if slices.Contains(prev, w) {
				return w
			}
		}
	}
	return ""
}

func TestRepeatedWord(t *testing.T) {
	for msg, want := range map[string]string{
		"open spool: open spool: create directory: mkdir /x: no such file or directory": "open",
		"listen: listen tcp 127.0.0.1:1: bind: address already in use":                  "listen",
		"archive: archive: open: open /a: permission denied":                            "archive",
		"sink archive: create directory: mkdir /x: not a directory":                     "",
		"open spool /d/spool.db: permission denied":                                     "",
	} {
		if got := repeatedWord(msg); got != want {
			t.Errorf("repeatedWord(%q) = %q, want %q", msg, got, want)
		}
	}
}

// TestServe_ErrorsDoNotRepeat starts serve into the common failures (a spool or dead-letter
// directory that cannot be created or opened, a sink file that cannot be opened, the port
// taken, a config file that does not exist), and the operator commands into a spool or
// dead-letter directory they cannot open, and checks that no error line says a word twice
// in adjacent wrap segments.
func TestServe_ErrorsDoNotRepeat(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "a-file") // a regular file: nothing can be created under it
	if err := os.WriteFile(blocker, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	spoolIsDir := filepath.Join(dir, "spooldir")
	if err := os.MkdirAll(filepath.Join(spoolIsDir, "spool.db"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := func(listen, storage, deadLetter, sinkPath string) string {
		s := fmt.Sprintf("server: {listen: %q}\napps: [{name: shop, verify_token: t, app_secrets: [s]}]\n"+
			"storage: {dir: %q}\nsinks: [{name: archive, type: file, path: %q}]\nrules: [{name: all, sinks: [archive]}]\n",
			listen, storage, sinkPath)
		if deadLetter != "" {
			s += fmt.Sprintf("dead_letter: {dir: %q}\n", deadLetter)
		}
		return s
	}
	ok := func(name string) string { return filepath.Join(dir, name) }
	cases := map[string]string{
		"spool dir under a file":       cfg("127.0.0.1:0", filepath.Join(blocker, "data"), "", ok("s1.jsonl")),
		"spool file is a directory":    cfg("127.0.0.1:0", spoolIsDir, "", ok("s2.jsonl")),
		"dead-letter dir under a file": cfg("127.0.0.1:0", ok("d3"), filepath.Join(blocker, "dl"), ok("s3.jsonl")),
		"dead-letter dir is a file":    cfg("127.0.0.1:0", ok("d4"), blocker, ok("s4.jsonl")),
		"sink dir under a file":        cfg("127.0.0.1:0", ok("d5"), "", filepath.Join(blocker, "x", "a.jsonl")),
		"sink file is a directory":     cfg("127.0.0.1:0", ok("d6"), "", dir),
		"port taken":                   cfg(taken.Addr().String(), ok("d7"), "", ok("s7.jsonl")),
		"bad config path":              "",
	}
	commands := map[string][]string{ // run with the "dead-letter dir under a file" config
		"deadletter list":    {"deadletter", "list"},
		"deadletter replay":  {"deadletter", "replay", "-all"},
		"spool verify":       {"spool", "verify"},
		"spool recover":      {"spool", "recover"},
		"check missing file": {"check"},
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, "missing", "hubrelay.yaml")
			if text != "" {
				path = filepath.Join(t.TempDir(), "hubrelay.yaml")
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			err := run(ctx, []string{"serve", "-config", path, "-log-format", "text"}, func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
			if err == nil {
				t.Fatalf("serve started; want a failure\n%s", stderr.String())
			}
			lines := append(strings.Split(strings.TrimSpace(stderr.String()), "\n"), err.Error())
			for _, l := range lines {
				if w := repeatedWord(l); w != "" {
					t.Errorf("%q is said twice in a row in:\n%s", w, l)
				}
			}
			t.Logf("%v", err)
		})
	}
	for name, args := range commands {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hubrelay.yaml")
			text := cfg("127.0.0.1:0", filepath.Join(blocker, "data"), filepath.Join(blocker, "dl"), ok("c.jsonl"))
			if name == "check missing file" {
				path = filepath.Join(dir, "missing", "hubrelay.yaml")
			} else if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append(args, "-config", path), func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
			if err == nil {
				t.Fatalf("%s succeeded; want a failure", name)
			}
			for _, l := range append(strings.Split(strings.TrimSpace(stderr.String()), "\n"), err.Error()) {
				if w := repeatedWord(l); w != "" {
					t.Errorf("%q is said twice in a row in:\n%s", w, l)
				}
			}
			t.Logf("%v", err)
		})
	}
}
