package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
)

// metricValue scrapes url and returns the value of the sample whose name and labels match
// (labels in any order), or -1 when absent.
func metricValue(t *testing.T, url, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
next:
	for _, m := range re.FindAllStringSubmatch(string(body), -1) {
		for _, l := range labels {
			if !strings.Contains(m[1], l) {
				continue next
			}
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		return v
	}
	return -1
}

func waPayload(id string) []byte {
	return []byte(fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"messages":[{"from":"16505551234","id":"wamid.%s","timestamp":"1749416383","type":"text","text":{"body":"hi"}}]},"field":"messages"}]}]}`, id))
}

func TestServe_MetricsAfterKnownTraffic(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	r := startRelay(t, dir, writeConfig(t, dir, freeAddr(t), sink.srv.URL))
	hook, metricsURL := r.url+"/webhooks", r.url+"/metrics"
	wa := waPayload("metrics-1")
	post(t, hook, wa, relay.Sign(wa, testSecret))
	post(t, hook, wa, relay.Sign(wa, testSecret))                   // a repeat
	post(t, hook, wa, relay.Sign(wa, "wrong"))                      // bad signature
	post(t, hook, []byte("{"), relay.Sign([]byte("{"), testSecret)) // malformed
	waitFor(t, "delivery", func() bool { return len(sink.ids()) == 1 })
	cases := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hubrelay_requests_total", []string{`outcome="accepted"`, `app="shop"`}, 1},
		{"hubrelay_requests_total", []string{`outcome="duplicate"`}, 1},
		{"hubrelay_requests_total", []string{`outcome="bad_signature"`}, 1},
		{"hubrelay_requests_total", []string{`outcome="malformed"`}, 1},
		{"hubrelay_changes_total", []string{`object="whatsapp_business_account"`, `field="messages"`, `result="accepted"`}, 1},
		{"hubrelay_changes_total", []string{`result="duplicate"`}, 1},
		{"hubrelay_rule_matches_total", []string{`rule="whatsapp-inbound"`}, 1},
	}
	for _, c := range cases {
		if got := metricValue(t, metricsURL, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	waitFor(t, "delivery counted", func() bool {
		return metricValue(t, metricsURL, "hubrelay_deliveries_total", `sink="orders"`, `result="delivered"`) == 1
	})
	if got := metricValue(t, metricsURL, "hubrelay_ack_duration_seconds_count", `outcome="accepted"`); got != 1 {
		t.Errorf("ack latency count %v, want 1", got)
	}
	waitFor(t, "spool gauge back to 0", func() bool {
		return metricValue(t, metricsURL, "hubrelay_spool_pending", `sink="orders"`, `state="ready"`) == 0
	})
}

// TestServe_ReloadWhileRequestsFlow sends SIGHUP with an invalid, then a valid config while a
// client keeps posting: no request fails, the invalid config is reported with its position and
// ignored, the valid one takes effect for new changes.
func TestServe_ReloadWhileRequestsFlow(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, freeAddr(t), sink.srv.URL)
	good, _ := os.ReadFile(cfgPath)
	r := startRelay(t, dir, cfgPath)
	hook := r.url + "/webhooks"

	var sent, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := waPayload(fmt.Sprintf("reload-%d-%d", w, i))
				req, _ := http.NewRequest(http.MethodPost, hook, bytes.NewReader(body))
				req.Header.Set("X-Hub-Signature-256", relay.Sign(body, testSecret))
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				} else {
					sent.Add(1)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	hup := func() {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "traffic", func() bool { return sent.Load() > 20 })

	// Invalid: a rule names a sink that does not exist.
	bad := bytes.Replace(good, []byte("sinks: [orders, archive]"), []byte("sinks: [orderz, archive]"), 1)
	os.WriteFile(cfgPath, bad, 0o600)
	hup()
	waitFor(t, "rejected reload", func() bool {
		return metricValue(t, r.url+"/metrics", "hubrelay_config_reloads_total", `result="error"`) == 1
	})
	if !strings.Contains(r.logs.String(), filepath.Base(cfgPath)+`:`) || !strings.Contains(r.logs.String(), "orderz") {
		t.Errorf("rejected reload not logged with its position:\n%s", r.logs.String())
	}
	before := sent.Load()
	waitFor(t, "traffic after rejected reload", func() bool { return sent.Load() > before+20 })

	// Valid: page photos now also go to orders.
	valid := bytes.Replace(good, []byte("sinks: [archive]\n"), []byte("sinks: [archive, orders]\n"), 1)
	os.WriteFile(cfgPath, valid, 0o600)
	hup()
	waitFor(t, "accepted reload", func() bool {
		return metricValue(t, r.url+"/metrics", "hubrelay_config_reloads_total", `result="ok"`) == 1
	})
	before = sent.Load()
	waitFor(t, "traffic after reload", func() bool { return sent.Load() > before+20 })
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d requests failed during reloads (%d succeeded)", n, sent.Load())
	}
	photo, _ := os.ReadFile("testdata/page_feed_add_photo.json")
	post(t, hook, photo, relay.Sign(photo, testSecret))
	waitFor(t, "every accepted change delivered, and the photo through the new rule", func() bool {
		return int64(len(sink.ids())) == sent.Load()+1
	})
}

func TestReadyz_UnreadyWhenSpoolCannotWrite(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := readyHandler(sp.Check, slog.New(slog.DiscardHandler))
	get := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code
	}
	if st := get(); st != http.StatusOK {
		t.Fatalf("ready spool: %d, want 200", st)
	}
	sp.Close() // the spool can no longer commit
	if st := get(); st != http.StatusServiceUnavailable {
		t.Fatalf("closed spool: %d, want 503", st)
	}
}

func TestWatchFile_ReportsChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("a"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := watchFile(ctx, path, 5*time.Millisecond)
	os.WriteFile(path, []byte("bb"), 0o600)
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("change not reported")
	}
}
