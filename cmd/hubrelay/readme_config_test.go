package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestReadme_ConfigErrorSample writes the README's bad.yaml sample (the ```yaml block of the
// Configuration section that starts with its text) to a file, runs `hubrelay check` on it
// and compares what check prints with the README's sample output, so the README shows the
// real messages.
func TestReadme_ConfigErrorSample(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "This `bad.yaml`:")
	if i < 0 {
		t.Fatal("README has no bad.yaml sample (\"This `bad.yaml`:\")")
	}
	m := regexp.MustCompile("(?s)```yaml\n(.*?)```.*?```\n(.*?)```").FindStringSubmatch(s[i:])
	if m == nil {
		t.Fatal("README's bad.yaml sample lacks its ```yaml block or its output block")
	}
	t.Chdir(t.TempDir())
	if err := os.WriteFile("bad.yaml", []byte(m[1]), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"check", "-config", "bad.yaml"}, func(string) string { return "" }, strings.NewReader(""), &stdout, &stderr)
	if exitCode(err) != 1 {
		t.Fatalf("check exit %d (%v), want 1", exitCode(err), err)
	}
	got := stdout.String() + stderr.String()
	if got != m[2] {
		t.Errorf("README's sample output differs from what check prints:\n--- README\n%s--- check\n%s", m[2], got)
	}
}
