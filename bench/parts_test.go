package bench

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

func TestGenerator_UniqueDecodableIDs(t *testing.T) {
	tests := []struct {
		name string
		gen  generator
	}{
		{"one change", generator{tag: "t1", k: 1}},
		{"fifty changes", generator{tag: "t2", k: 50}},
		{"padded", generator{tag: "t3", k: 2, pad: 4096}},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for seq := uint64(1); seq <= 20; seq++ {
				body := tt.gen.body(nil, seq)
				if len(body) < tt.gen.pad {
					t.Fatalf("body of %d bytes, want at least %d", len(body), tt.gen.pad)
				}
				if again := tt.gen.body(nil, seq); !bytes.Equal(body, again) {
					t.Fatalf("notification %d differs between calls", seq)
				}
				ids, err := tt.gen.ids(nil, seq)
				if err != nil {
					t.Fatal(err)
				}
				if len(ids) != tt.gen.k {
					t.Fatalf("notification %d: %d ids, want %d", seq, len(ids), tt.gen.k)
				}
				for _, id := range ids {
					if !strings.HasPrefix(id, "wa:msg:"+benchApp+":wamid.") {
						t.Errorf("id %q is not a WhatsApp message key", id)
					}
					if seen[id] {
						t.Fatalf("id %q generated twice", id)
					}
					seen[id] = true
				}
			}
		})
	}
}

// TestReceiver_RecordsAndAccounts feeds a receiver single and batched envelopes over HTTP,
// with one acknowledged change never sent and one sent twice, and checks the accounting.
func TestReceiver_RecordsAndAccounts(t *testing.T) {
	rc, err := startReceiver(context.Background(), "sink-a")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	post := func(body string) int {
		t.Helper()
		resp, err := http.Post(rc.url, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	at := time.Now().UTC().Format(time.RFC3339Nano)
	env := func(id string) string {
		return `{"id":"` + id + `","app":"bench","object":"whatsapp_business_account","entry":{"id":"1"},"field":"messages","value":{"x":1},"received_at":"` + at + `"}`
	}
	steps := []struct {
		body    string
		failing bool
		want    int
	}{
		{env("a"), false, http.StatusOK},
		{"[" + env("b") + "," + env("c") + "]", false, http.StatusOK},
		{env("c"), false, http.StatusOK},                // a duplicate
		{env("d"), true, http.StatusServiceUnavailable}, // refused while down: not received
		{`{"app":"bench"}`, false, http.StatusBadRequest},
		{`[]`, false, http.StatusBadRequest},
	}
	for i, s := range steps {
		rc.failing.Store(s.failing)
		if got := post(s.body); got != s.want {
			t.Errorf("step %d: status %d, want %d", i, got, s.want)
		}
	}
	st := rc.snapshot(true)
	got := Account([]string{"a", "b", "c", "d"}, st.counts)
	want := Tally{Expected: 4, Delivered: 3, Lost: 1, Duplicated: 1, LostIDs: []string{"d"}}
	if got.Expected != want.Expected || got.Delivered != want.Delivered || got.Lost != want.Lost ||
		got.Duplicated != want.Duplicated || strings.Join(got.LostIDs, ",") != "d" {
		t.Errorf("Account = %+v, want %+v", got, want)
	}
	if st.refused != 1 || st.requests != 3 || st.nProblems != 2 {
		t.Errorf("refused %d, requests %d, problems %d (%v); want 1, 3, 2", st.refused, st.requests, st.nProblems, st.problems)
	}
	if a := st.arrivals["a"]; a.accepted == 0 || a.at < a.accepted-int64(time.Second) {
		t.Errorf("arrival of a: %+v, want its received_at recorded", a)
	}
}

// TestServeReference_Statuses checks the reference answers as a Meta receiver must and that
// its fsync variant stores exactly the accepted bodies.
func TestServeReference_Statuses(t *testing.T) {
	dir := t.TempDir()
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseReferenceArgs(ReferenceArgs(ReferenceConfig{Listen: addr, FsyncFile: filepath.Join(dir, "ref.log")}),
		func(k string) string {
			if k == DefaultSecretEnv {
				return "s3cret"
			}
			return ""
		}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeReference(ctx, cfg) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeReference: %v", err)
		}
	}()
	url := "http://" + addr + "/webhooks"
	waitFor(t, func() bool {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	good := (&generator{tag: "ref", k: 1}).body(nil, 1)
	tests := []struct {
		name string
		body []byte
		sig  string
		want int
	}{
		{"signed", good, relay.Sign(good, "s3cret"), http.StatusOK},
		{"wrong secret", good, relay.Sign(good, "other"), http.StatusUnauthorized},
		{"no signature", good, "", http.StatusUnauthorized},
		{"signed but not JSON", []byte("nope"), relay.Sign([]byte("nope"), "s3cret"), http.StatusBadRequest},
		{"signed JSON, not an envelope", []byte(`{"a":1}`), relay.Sign([]byte(`{"a":1}`), "s3cret"), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, url, bytes.NewReader(tt.body))
			req.RequestURI = ""
			req.Header.Set("X-Hub-Signature-256", tt.sig)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
	stored, err := os.ReadFile(cfg.FsyncFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := string(good) + "\n"; string(stored) != want {
		t.Errorf("fsync file holds %q, want the one accepted body", stored)
	}
}

func TestParseReferenceArgs_NeedsSecret(t *testing.T) {
	_, err := ParseReferenceArgs([]string{"-listen", "127.0.0.1:0"}, func(string) string { return "" }, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), DefaultSecretEnv) {
		t.Errorf("err %v, want one naming %s", err, DefaultSecretEnv)
	}
}

func TestReadProc_Self(t *testing.T) {
	u, err := readProc(os.Getpid())
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	if u.rss <= 0 || u.peak < u.rss {
		t.Errorf("rss %d, peak %d: want 0 < rss <= peak", u.rss, u.peak)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
