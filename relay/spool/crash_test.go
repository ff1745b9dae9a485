package spool

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// helperEnv names the spool path a TestHelperProcess child writes to; with helperTinyEnv set
// the child applies frames at once and keeps a tiny dedup index, so that it is killed in the
// middle of flushes and merges.
const (
	helperEnv     = "HUBRELAY_SPOOL_HELPER_PATH"
	helperTinyEnv = "HUBRELAY_SPOOL_HELPER_TINY"
)

// crashOptions are the options of the helper process (and of the reopen after it).
func crashOptions(tiny bool) Options {
	if tiny {
		return Options{ApplyDelay: time.Nanosecond, dedup: tinyDedup}
	}
	return Options{}
}

// TestHelperProcess is not a test: TestSpool_CrashKill runs the test binary again with this
// test selected and helperEnv set. The child accepts items from several goroutines and prints
// "ack <key>" after each Accept returns, until it is killed.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process for TestSpool_CrashKill")
	}
	s, err := Open(path, crashOptions(os.Getenv(helperTinyEnv) != ""))
	if err != nil {
		fmt.Fprintf(os.Stdout, "error %v\n", err)
		os.Exit(2)
	}
	var out sync.Mutex
	// The parent kills the child; the deadline only stops an orphan.
	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				item := Item{Key: key, Data: []byte("data " + key), Sinks: []string{"a", "b"}}
				if _, err := s.Accept(context.Background(), []Item{item}, t0); err != nil {
					fmt.Fprintf(os.Stdout, "error %v\n", err)
					os.Exit(2)
				}
				out.Lock()
				fmt.Fprintf(os.Stdout, "ack %s\n", key)
				out.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}

// TestSpool_CrashKill kills (SIGKILL) a process in the middle of accepting and checks that
// every item it acknowledged survives, with its dedup key: with the defaults (most frames
// still in the journal), and with frames applied at once to a tiny dedup index (killed in the
// middle of applies, flushes and merges).
func TestSpool_CrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	for _, tiny := range []bool{false, true} {
		t.Run(fmt.Sprint("tiny_index=", tiny), func(t *testing.T) { crashKill(t, tiny) })
	}
}

func crashKill(t *testing.T, tiny bool) {
	path := filepath.Join(t.TempDir(), "spool.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+path)
	if tiny {
		cmd.Env = append(cmd.Env, helperTinyEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	want := 300
	if tiny {
		want = 1000 // long enough for dozens of applies, flushes and merges before the kill
	}
	var acked []string
	sc := bufio.NewScanner(stdout)
	for len(acked) < want && sc.Scan() {
		line := sc.Text()
		if key, ok := strings.CutPrefix(line, "ack "); ok {
			acked = append(acked, key)
		} else if strings.HasPrefix(line, "error ") {
			t.Fatalf("child: %s", line)
		}
	}
	if len(acked) < want {
		t.Fatalf("child stopped after %d acks: %v", len(acked), sc.Err())
	}
	// Kill while the writers are still going; acks printed after this point are not read.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	if cmd.ProcessState.Success() {
		t.Fatal("child exited normally; it should have been killed")
	}

	s, err := Open(path, crashOptions(tiny))
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer s.Close()
	for _, sink := range []string{"a", "b"} {
		stored := map[string]bool{}
		for _, d := range mustReady(t, s, sink, 0, 1<<20) {
			stored[string(d.Data)] = true
		}
		for _, key := range acked {
			if !stored["data "+key] {
				t.Fatalf("sink %s: acknowledged item %s lost in the crash (%d stored)", sink, key, len(stored))
			}
		}
		t.Logf("sink %s: %d acknowledged, %d stored", sink, len(acked), len(stored))
	}
	items := make([]Item, len(acked))
	for i, key := range acked {
		items[i] = Item{Key: key, Data: []byte("again"), Sinks: []string{"a"}}
	}
	for i, d := range mustAccept(t, s, t0, items...) {
		if !d {
			t.Fatalf("dedup key %s lost in the crash", acked[i])
		}
	}
	if tiny {
		checkDedupCounts(t, s)
	}
}
