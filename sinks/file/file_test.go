package file

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/sinks/sinktest"
)

func testEvent(id string) *relay.Event {
	return &relay.Event{
		ID: id, App: "shop", Object: "whatsapp_business_account", Entry: relay.Entry{ID: "102290129340398"},
		Field:      "messages",
		Value:      json.RawMessage(`{"messaging_product":"whatsapp","messages":[{"id":"` + id + `","text":{"body":"caf\u00e9 café \ud83d\udc4d"}}]}`),
		ReceivedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

func newSink(t testing.TB, o Options) *Sink {
	t.Helper()
	if o.Name == "" {
		o.Name = "archive"
	}
	if o.Path == "" {
		o.Path = filepath.Join(t.TempDir(), "sub", "dir", "events.jsonl")
	}
	s, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

// readIDs returns the id of every line of the files, in order, failing on a line that is not
// one JSON envelope.
func readIDs(t *testing.T, paths ...string) []string {
	t.Helper()
	var ids []string
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var env struct {
				ID    string          `json:"id"`
				Value json.RawMessage `json:"value"`
			}
			if err := json.Unmarshal(sc.Bytes(), &env); err != nil {
				t.Fatalf("%s: line %q: %v", p, sc.Text(), err)
			}
			ids = append(ids, env.ID)
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		_ = f.Close()
	}
	return ids
}

func TestSink_Deliver(t *testing.T) {
	s := newSink(t, Options{})
	prettyValue := json.RawMessage("{\n  \"item\": \"photo\",\r\n  \"message\": \"line\\nbreak\"\n}")
	events := []*relay.Event{
		testEvent("a"),
		testEvent("b"),
		{ID: "pretty", Object: "page", Entry: relay.Entry{ID: "1", Time: 2}, Field: "feed", Verb: "add", Value: prettyValue},
		{ID: "no-value", Object: "user", Entry: relay.Entry{ID: "7", UID: "7"}, Field: "photos"},
	}
	for _, ev := range events {
		if err := s.Deliver(context.Background(), ev); err != nil {
			t.Fatalf("Deliver %s: %v", ev.ID, err)
		}
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != len(events) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(events), data)
	}
	for i, line := range lines {
		ev := events[i]
		var env struct {
			ID    string          `json:"id"`
			Value json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(line, &env); err != nil {
			t.Fatalf("line %d %q: %v", i, line, err)
		}
		if env.ID != ev.ID {
			t.Errorf("line %d id = %q, want %q", i, env.ID, ev.ID)
		}
		// Values are byte-exact except raw line breaks, which became spaces.
		want := []byte(strings.NewReplacer("\r", " ", "\n", " ").Replace(string(ev.Value)))
		if !bytes.Equal(env.Value, want) {
			t.Errorf("line %d value = %s, want %s", i, env.Value, want)
		}
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o640 != 0 {
		t.Errorf("file mode %v, want at most 0640", perm)
	}
}

func TestSink_ConcurrentGroupCommit(t *testing.T) {
	const goroutines, each = 32, 40
	s := newSink(t, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				if err := s.Deliver(context.Background(), testEvent(fmt.Sprintf("g%d-%d", g, i))); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Deliver: %v", err)
	}
	ids := readIDs(t, s.path)
	if len(ids) != goroutines*each {
		t.Fatalf("got %d lines, want %d", len(ids), goroutines*each)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("line %s written twice", id)
		}
		seen[id] = true
	}
	syncs := s.syncs.Load()
	t.Logf("%d deliveries, %d fsyncs", len(ids), syncs)
	if syncs >= int64(len(ids)) {
		t.Errorf("%d fsyncs for %d deliveries: no group commit", syncs, len(ids))
	}
}

func TestSink_Rotation(t *testing.T) {
	lineLen := int64(len(appendLine(nil, testEvent("e000"))))
	tests := []struct {
		name       string
		maxFiles   int
		concurrent bool
	}{
		{"keeps every line", 100, false},
		{"keeps every line, concurrent", 100, true},
		{"drops the oldest files", 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const n = 50
			maxBytes := 3*lineLen + lineLen/2 // three lines per file
			s := newSink(t, Options{MaxBytes: maxBytes, MaxFiles: tt.maxFiles})
			var want []string
			for i := range n {
				want = append(want, fmt.Sprintf("e%03d", i))
			}
			if tt.concurrent {
				var wg sync.WaitGroup
				for _, id := range want {
					wg.Go(func() {
						if err := s.Deliver(context.Background(), testEvent(id)); err != nil {
							t.Errorf("Deliver: %v", err)
						}
					})
				}
				wg.Wait()
			} else {
				for _, id := range want {
					if err := s.Deliver(context.Background(), testEvent(id)); err != nil {
						t.Fatalf("Deliver: %v", err)
					}
				}
			}
			// Oldest first: path.k … path.1, path.
			var files []string
			for i := tt.maxFiles; i >= 1; i-- {
				if _, err := os.Stat(s.rotated(i)); err == nil {
					files = append(files, s.rotated(i))
				}
			}
			files = append(files, s.path)
			if _, err := os.Stat(s.rotated(tt.maxFiles + 1)); err == nil {
				t.Errorf("%s exists, want at most %d rotated files", s.rotated(tt.maxFiles+1), tt.maxFiles)
			}
			for _, f := range files {
				if fi, _ := os.Stat(f); fi.Size() > maxBytes {
					t.Errorf("%s holds %d bytes, more than MaxBytes %d", f, fi.Size(), maxBytes)
				}
			}
			got := readIDs(t, files...)
			if tt.maxFiles < n {
				if len(files) != tt.maxFiles+1 {
					t.Errorf("got %d files, want %d", len(files), tt.maxFiles+1)
				}
				want = want[len(want)-len(got):] // the newest lines, contiguous
			}
			if tt.concurrent {
				sortStrings(got)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("lines across files:\n got %v\nwant %v", got, want)
			}
		})
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestSink_Close(t *testing.T) {
	s := newSink(t, Options{})
	if err := s.Deliver(context.Background(), testEvent("before")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	err := s.Deliver(context.Background(), testEvent("after"))
	if !errors.Is(err, ErrClosed) || errors.Is(err, relay.ErrPermanent) {
		t.Fatalf("Deliver after Close: err = %v, want non-permanent ErrClosed", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if ids := readIDs(t, s.path); fmt.Sprint(ids) != "[before]" {
		t.Errorf("lines = %v, want [before]", ids)
	}
}

func TestSink_ReopenAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	// A crash left a partial line behind.
	if err := os.WriteFile(path, append(appendLine(nil, testEvent("old")), `{"id":"cut`...), 0o640); err != nil {
		t.Fatal(err)
	}
	s := newSink(t, Options{Path: path})
	if err := s.Deliver(context.Background(), testEvent("new")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != 3 || string(lines[1]) != `{"id":"cut` || !json.Valid(lines[2]) {
		t.Fatalf("file:\n%s\nwant the old line, the partial line alone, the new line", data)
	}
}

func TestSink_ContextCancelled(t *testing.T) {
	s := newSink(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Deliver(ctx, testEvent("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	// Many callers giving up at random moments: no deadlock, and every line reported as
	// written is in the file.
	const n = 400
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok []string
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(200))*time.Microsecond)
			defer cancel()
			id := "c" + strconv.Itoa(i)
			if err := s.Deliver(ctx, testEvent(id)); err == nil {
				mu.Lock()
				ok = append(ok, id)
				mu.Unlock()
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Deliver: %v", err)
			}
		})
	}
	wg.Wait()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	written := map[string]bool{}
	for _, id := range readIDs(t, s.path) {
		written[id] = true
	}
	for _, id := range ok {
		if !written[id] {
			t.Errorf("Deliver(%s) returned nil but the line is missing", id)
		}
	}
	t.Logf("%d of %d deliveries completed before their deadline", len(ok), n)
}

func TestSink_WriteErrorNotPermanent(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	s, err := New(Options{Name: "archive", Path: "/dev/full"})
	if err != nil {
		t.Skipf("open /dev/full: %v", err)
	}
	defer s.Close(context.Background())
	err = s.Deliver(context.Background(), testEvent("x"))
	if err == nil || errors.Is(err, relay.ErrPermanent) {
		t.Fatalf("err = %v, want a non-permanent write error", err)
	}
	t.Log(err)
}

func TestNew_Invalid(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    Options
	}{
		{"no name", Options{Path: filepath.Join(dir, "x")}},
		{"no path", Options{Name: "a"}},
		{"negative max bytes", Options{Name: "a", Path: filepath.Join(dir, "x"), MaxBytes: -1}},
		{"negative max files", Options{Name: "a", Path: filepath.Join(dir, "x"), MaxFiles: -1}},
		{"parent is a file", Options{Name: "a", Path: filepath.Join(notDir, "x")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := New(tt.o); err == nil {
				_ = s.Close(context.Background())
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}

func BenchmarkSink_Deliver(b *testing.B) {
	for _, p := range []int{1, 8} { // goroutines per GOMAXPROCS
		b.Run(fmt.Sprintf("parallelism=%d", p), func(b *testing.B) { benchmarkDeliver(b, p) })
	}
}

func benchmarkDeliver(b *testing.B, parallelism int) {
	s := newSink(b, Options{Path: filepath.Join(b.TempDir(), "events.jsonl")})
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ev := testEvent("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=")
		for pb.Next() {
			if err := s.Deliver(context.Background(), ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(s.syncs.Load())/float64(b.N), "fsyncs/op")
}

// batchOf returns n changes with ids prefix-000, prefix-001, …
func batchOf(prefix string, n int) []*relay.Event {
	evs := make([]*relay.Event, n)
	for i := range evs {
		evs[i] = testEvent(fmt.Sprintf("%s-%03d", prefix, i))
	}
	return evs
}

func ids(evs []*relay.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

// filesOldestFirst returns path.k … path.1, path: the files that exist, oldest first.
func filesOldestFirst(s *Sink) []string {
	var files []string
	for i := s.maxFiles; i >= 1; i-- {
		if _, err := os.Stat(s.rotated(i)); err == nil {
			files = append(files, s.rotated(i))
		}
	}
	return append(files, s.path)
}

func TestSink_DeliverBatch(t *testing.T) {
	tests := []struct {
		name string
		n    int
	}{
		{"one change", 1},
		{"several changes", 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSink(t, Options{})
			evs := batchOf("b", tt.n)
			evs[0].Value = json.RawMessage("{\n \"pretty\": true\n}")
			if err := s.DeliverBatch(context.Background(), evs); err != nil {
				t.Fatalf("DeliverBatch: %v", err)
			}
			var want []byte
			for _, ev := range evs {
				want = appendLine(want, ev)
			}
			got, err := os.ReadFile(s.path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("file:\n%s\nwant:\n%s", got, want)
			}
			if fmt.Sprint(readIDs(t, s.path)) != fmt.Sprint(ids(evs)) {
				t.Errorf("ids %v, want %v", readIDs(t, s.path), ids(evs))
			}
			if n := s.syncs.Load(); n != 1 {
				t.Errorf("%d fsyncs, want 1", n)
			}
		})
	}
}

func TestSink_DeliverBatchEdges(t *testing.T) {
	s := newSink(t, Options{})
	if err := s.DeliverBatch(context.Background(), nil); err != nil {
		t.Errorf("empty batch: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.DeliverBatch(ctx, batchOf("x", 2)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v, want context.Canceled", err)
	}
	if fi, err := os.Stat(s.path); err != nil || fi.Size() != 0 {
		t.Errorf("file after empty and cancelled batches: %v, %v; want empty", fi, err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.DeliverBatch(context.Background(), batchOf("y", 2)); !errors.Is(err, ErrClosed) || errors.Is(err, relay.ErrPermanent) {
		t.Errorf("after Close: err = %v, want non-permanent ErrClosed", err)
	}
}

func TestSink_ConcurrentDeliverBatch(t *testing.T) {
	const callers, each = 3, 100
	s := newSink(t, Options{})
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			if err := s.DeliverBatch(context.Background(), batchOf(fmt.Sprintf("c%d", c), each)); err != nil {
				t.Errorf("DeliverBatch: %v", err)
			}
		})
	}
	wg.Wait()
	got := readIDs(t, s.path)
	if len(got) != callers*each {
		t.Fatalf("got %d lines, want %d", len(got), callers*each)
	}
	// Each batch is contiguous and in order.
	for i := 0; i < len(got); i += each {
		prefix, _, _ := strings.Cut(got[i], "-")
		if want := ids(batchOf(prefix, each)); fmt.Sprint(got[i:i+each]) != fmt.Sprint(want) {
			t.Errorf("lines %d…%d = %v, want batch %s whole and in order", i, i+each-1, got[i:i+each], prefix)
		}
	}
	syncs := s.syncs.Load()
	t.Logf("%d batches of %d, %d fsyncs", callers, each, syncs)
	if syncs > callers {
		t.Errorf("%d fsyncs for %d batches, want at most one per batch", syncs, callers)
	}
}

func TestSink_RotationBatches(t *testing.T) {
	lineLen := int64(len(appendLine(nil, testEvent("b00-000"))))
	maxBytes := 10*lineLen + lineLen/2 // ten lines per file
	type call struct {
		prefix string
		n      int
	}
	tests := []struct {
		name  string
		calls []call
		whole bool // every batch in one file
	}{
		// 4+4 fit, the third batch of 4 would make 12 lines: rotate before it.
		{"batches stay whole", []call{{"b00", 4}, {"b01", 4}, {"b02", 4}, {"b03", 1}, {"b04", 4}, {"b05", 4}, {"b06", 10}, {"b07", 3}}, true},
		// 25 lines exceed MaxBytes alone: split line by line, filling each file.
		{"oversized batch is split", []call{{"b00", 3}, {"b01", 25}, {"b02", 2}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSink(t, Options{MaxBytes: maxBytes, MaxFiles: 100})
			var want []string
			for _, c := range tt.calls {
				evs := batchOf(c.prefix, c.n)
				want = append(want, ids(evs)...)
				if err := s.DeliverBatch(context.Background(), evs); err != nil {
					t.Fatalf("DeliverBatch: %v", err)
				}
			}
			files := filesOldestFirst(s)
			var got []string
			batchFile := map[string]int{} // batch prefix → file index holding it
			for i, f := range files {
				fi, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() > maxBytes {
					t.Errorf("%s holds %d bytes, more than MaxBytes %d", f, fi.Size(), maxBytes)
				}
				for _, id := range readIDs(t, f) {
					got = append(got, id)
					prefix, _, _ := strings.Cut(id, "-")
					if j, ok := batchFile[prefix]; ok && j != i && tt.whole {
						t.Errorf("batch %s split across %s and %s", prefix, files[j], f)
					}
					batchFile[prefix] = i
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("lines across files:\n got %v\nwant %v", got, want)
			}
			t.Logf("%d files", len(files))
			if len(files) < 3 {
				t.Errorf("got %d files: the test did not rotate", len(files))
			}
		})
	}
}

// BenchmarkDeliverBatch_100 compares one DeliverBatch of 100 changes with 100 Deliver calls,
// one after the other (each waiting for its fsync).
func BenchmarkDeliverBatch_100(b *testing.B) {
	const n = 100
	evs := batchOf("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=", n)
	run := func(b *testing.B, deliver func(s *Sink) error) {
		s := newSink(b, Options{Path: filepath.Join(b.TempDir(), "events.jsonl")})
		b.ReportAllocs()
		for b.Loop() {
			if err := deliver(s); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "changes/s")
		b.ReportMetric(float64(s.syncs.Load())/float64(n*b.N), "fsyncs/change")
	}
	ctx := context.Background()
	b.Run("DeliverBatch", func(b *testing.B) {
		run(b, func(s *Sink) error { return s.DeliverBatch(ctx, evs) })
	})
	b.Run("100xDeliver", func(b *testing.B) {
		run(b, func(s *Sink) error {
			for _, ev := range evs {
				if err := s.Deliver(ctx, ev); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

// TestConformance runs the sink contract's suite (sinks/sinktest) against a file in a
// temporary directory. A local file cannot be made to refuse, fail for now or hang, so those
// cases are the HTTP sinks' only.
func TestConformance(t *testing.T) {
	sinktest.Run(t, func(t *testing.T) *sinktest.Target {
		path := filepath.Join(t.TempDir(), "events.jsonl")
		s := newSink(t, Options{Path: path})
		return &sinktest.Target{Sink: s, Received: func() []string {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			var ids []string
			for l := range bytes.SplitSeq(bytes.TrimSpace(b), []byte("\n")) {
				var env struct{ ID string }
				if json.Unmarshal(l, &env) == nil && env.ID != "" {
					ids = append(ids, env.ID)
				}
			}
			return ids
		}}
	})
}
