package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool"
)

// TestSpool_DamagedFileRefusedThenRecovered: serve refuses a truncated spool.db with an error
// that names the file and the recovery command (no crash), spool verify reports the damage,
// spool recover rebuilds the file and keeps the damaged one, and verify is then clean.
func TestSpool_DamagedFileRefusedThenRecovered(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, freeAddr(t), "http://127.0.0.1:1")
	path := filepath.Join(dir, "data", spoolFile)
	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Accept(context.Background(), []spool.Item{{Key: "k1", Data: []byte("change 1"), Sinks: []string{"orders"}}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	// Cut inside the pages in use (the file is larger than them: bbolt grows it in steps).
	if err := os.Truncate(path, 3*4096+100); err != nil {
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"serve", "-config", cfg}, testGetenv, strings.NewReader(""), &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "hubrelay spool recover") {
		t.Fatalf("serve on a truncated spool.db: %v, want an error naming %s and hubrelay spool recover", err, path)
	}
	stdout.Reset()
	err = run(context.Background(), []string{"spool", "verify", "-config", cfg}, testGetenv, strings.NewReader(""), &stdout, &stderr)
	if err == nil || !strings.Contains(stdout.String(), "damaged: "+path) {
		t.Fatalf("spool verify: %v, output:\n%s", err, stdout.String())
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"spool", "recover", "-config", cfg}, testGetenv, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("spool recover: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "recovered:") {
		t.Fatalf("spool recover output:\n%s", stdout.String())
	}
	kept, _ := filepath.Glob(filepath.Join(path+".damaged", "*", spoolFile))
	if len(kept) != 1 {
		t.Fatalf("the damaged spool.db is not kept: %v", kept)
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"spool", "verify", "-config", cfg}, testGetenv, strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatalf("spool verify after recover: %v\n%s", err, stdout.String())
	}
}
