package relay_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/rules"
	"github.com/hubrelay/hubrelay/sinks/httpsink"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// benchRules is a realistic rule set: five rules, three with a `when` on the value.
var benchRules = []rules.Spec{
	{Name: "wa-inbound", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"}, When: "value.messages != nil", Sinks: []string{"orders", "archive"}},
	{Name: "wa-failed", Objects: []string{"whatsapp_business_account"}, Fields: []string{"messages"}, When: `any(value.statuses ?? [], .status == "failed")`, Sinks: []string{"ops"}},
	{Name: "photos", Objects: []string{"page"}, Fields: []string{"feed"}, Verbs: []string{"add", "edited"}, When: `value.item == "photo"`, Sinks: []string{"ops"}},
	{Name: "messaging", Objects: []string{"page", "instagram"}, Fields: []string{"messaging"}, Sinks: []string{"bot"}},
	{Name: "archive", Sinks: []string{"archive"}},
}

// waBody is a WhatsApp text message notification with n changes, each with its own message id.
func waBody(tag string, n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.%s.%d","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}}]},"field":"messages"}`, tag, i)
	}
	b.WriteString(`]}]}`)
	return b.Bytes()
}

// BenchmarkRoute measures keying and routing every change of a notification (decode excluded).
func BenchmarkRoute(b *testing.B) {
	set, err := rules.Compile(benchRules)
	if err != nil {
		b.Fatal(err)
	}
	router := relay.NewRouter(set, nil)
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("changes=%d", n), func(b *testing.B) {
			body := waBody("route", n)
			events, err := relay.Decode(body, "shop", time.Now(), relay.Limits{})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				for i := range events {
					events[i].ID = relay.Key(&events[i])
					router.Route(&events[i], nil)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "changes/s")
		})
	}
}

// BenchmarkReceive drives the whole receive path in process — verify, decode, key, route, spool
// commit with fsync — next to a bare net/http handler that does the same HMAC check and JSON
// parse without storing anything, so the ratio of the two is measured in one run.
// b.SetParallelism(16) gives 32 concurrent requests on 2 cores.
func BenchmarkReceive(b *testing.B) {
	const secret = "bench-secret"
	set, err := rules.Compile(benchRules)
	if err != nil {
		b.Fatal(err)
	}
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if !hmac.Equal([]byte(want), []byte(r.Header.Get("X-Hub-Signature-256"))) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var v map[string]any
		if json.Unmarshal(body, &v) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	for _, n := range []int{1, 50} {
		for _, target := range []string{"bare-hmac", "hubrelay"} {
			b.Run(fmt.Sprintf("%s/changes=%d", target, n), func(b *testing.B) {
				var h http.Handler = bare
				if target == "hubrelay" {
					sp, err := spool.Open(filepath.Join(b.TempDir(), "spool.db"), spool.Options{})
					if err != nil {
						b.Fatal(err)
					}
					defer sp.Close()
					h = relay.NewReceiver(relay.ReceiverConfig{
						Apps:         []relay.App{{Name: "shop", Path: "/webhooks", VerifyToken: "t", Verifier: relay.NewVerifier([]string{secret}, false)}},
						MaxBodyBytes: 8 << 20,
						Limits:       relay.Limits{MaxChanges: 5000, MaxDepth: 64},
					}, embedded.New(sp), relay.NewRouter(set, nil), nil, nil, nil)
				}
				var seq atomic.Int64
				b.SetParallelism(16)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						body := waBody(fmt.Sprint("r", seq.Add(1)), n)
						req := httptest.NewRequest(http.MethodPost, "/webhooks", bytes.NewReader(body))
						req.Header.Set("X-Hub-Signature-256", relay.Sign(body, secret))
						rec := httptest.NewRecorder()
						h.ServeHTTP(rec, req)
						if rec.Code != http.StatusOK {
							b.Errorf("status %d", rec.Code)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "changes/s")
			})
		}
	}
}

// BenchmarkEngine measures delivery from the spool to a loopback HTTP sink: one change per
// request, and batched.
func BenchmarkEngine(b *testing.B) {
	for _, batch := range []int{0, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			var got atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n, _ := io.Copy(io.Discard, r.Body)
				_ = n
				if c := r.Header.Get("X-Hubrelay-Batch-Size"); c != "" {
					var k int64
					fmt.Sscan(c, &k)
					got.Add(k)
				} else {
					got.Add(1)
				}
			}))
			defer srv.Close()
			dir := b.TempDir()
			sp, err := spool.Open(filepath.Join(dir, "spool.db"), spool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			items := make([]spool.Item, b.N)
			for i := range items {
				ev := relay.Event{ID: fmt.Sprint("e", i), App: "shop", Object: "page", Field: "feed", Source: relay.SourceChanges,
					Value: json.RawMessage(`{"item":"photo","verb":"add","post_id":"1_2"}`), ReceivedAt: time.Now()}
				items[i] = spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"s"}}
			}
			for i := 0; i < len(items); i += 1000 {
				if _, err := sp.Accept(context.Background(), items[i:min(i+1000, len(items))], time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			sink, _ := httpsink.New(httpsink.Options{Name: "s", URL: srv.URL, Timeout: 5 * time.Second})
			eng := relay.NewEngine(embedded.New(sp), nopDL{}, nil, nil)
			eng.Start()
			b.ResetTimer()
			eng.SetSinks([]relay.SinkConfig{{Sink: sink, Concurrency: 8, Retry: fastRetry(3), Batch: relay.BatchPolicy{MaxChanges: batch, MaxWait: time.Millisecond}}})
			for got.Load() < int64(b.N) {
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "changes/s")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			eng.Close(ctx)
			cancel()
		})
	}
}
