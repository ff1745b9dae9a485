//go:build unix

package front_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/metrics"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/front"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/rules"
	"github.com/hubrelay/hubrelay/storage/embedded"
	"github.com/prometheus/client_golang/prometheus"
)

// ingestBody is a WhatsApp text message as `hubrelay bench` posts it, with message id seq.
func ingestBody(seq int) []byte {
	return fmt.Appendf(nil, `{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Bench Load"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgL%016x","timestamp":"1750000000","type":"text","text":{"body":"bench message"}}]},"field":"messages"}]}]}`, uint64(seq)*0x9e3779b97f4a7c15)
}

// BenchmarkIngestPath posts signed notifications of one change through the webhook listener's
// handler as serve wires it with the default config (the client address, ReadBodies, Limit,
// the Receiver with its metrics and a JSON logger at warn) to a real spool that fsyncs before
// each answer, with the bench's rule and two sinks (never started: the sinks are down). It is
// the whole-request cost of the ingest path without the connection; serial runs one request
// at a time (steady instruction counts under callgrind), c=32 as `hubrelay bench` does.
func BenchmarkIngestPath(b *testing.B) {
	const secret = "bench-secret"
	for _, par := range []int{1, 32} {
		name := "serial"
		if par > 1 {
			name = fmt.Sprintf("c=%d", par)
		}
		b.Run(name, func(b *testing.B) {
			sp, err := spool.Open(filepath.Join(b.TempDir(), "spool.db"), spool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			set, err := rules.Compile([]rules.Spec{{Name: "whatsapp-inbound", Objects: []string{"whatsapp_business_account"},
				Fields: []string{"messages"}, When: "value.messages != nil", Sinks: []string{"sink-a", "sink-b"}}})
			if err != nil {
				b.Fatal(err)
			}
			log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
			m := metrics.New(prometheus.NewRegistry())
			recv := relay.NewReceiver(relay.ReceiverConfig{
				Apps:         []relay.App{{Name: "bench", Path: "/webhooks", VerifyToken: "t", Verifier: relay.NewVerifier([]string{secret}, false)}},
				MaxBodyBytes: 8 << 20,
				Limits:       relay.Limits{MaxChanges: 5000, MaxDepth: 64},
			}, embedded.New(sp), relay.NewRouter(set, nil), func([]string) {}, m, log)
			h := front.Limit(recv, front.LimitOptions{MaxConcurrent: 256, MaxConcurrentPerIP: 64,
				ClientIP: relay.RemoteAddr, Logger: log, Observer: m})
			h = front.ReadBodies(h, front.BodyOptions{MaxBytes: 8 << 20, MinRate: 1 << 10, Grace: 5 * time.Second,
				MaxInFlight: 64 << 20, ReadTimeout: 30 * time.Second, Logger: log, Observer: m})
			h = front.WithClientIP(h, nil)
			bodies, sigs := make([][]byte, b.N), make([]string, b.N)
			for i := range bodies {
				bodies[i] = ingestBody(i)
				sigs[i] = relay.Sign(bodies[i], secret)
			}
			var seq atomic.Int64
			post := func() bool {
				i := seq.Add(1) - 1
				req := httptest.NewRequest(http.MethodPost, "/webhooks", bytes.NewReader(bodies[i]))
				req.RemoteAddr = "192.0.2.7:40000"
				req.Header.Set("X-Hub-Signature-256", sigs[i])
				req.Header.Set("Content-Type", "application/json")
				rec := httptest.NewRecorder()
				h.ServeHTTP(deadlineRecorder{rec}, req)
				if rec.Code != http.StatusOK {
					b.Errorf("status %d: %s", rec.Code, rec.Body)
					return false
				}
				return true
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			if par == 1 {
				for range b.N {
					if !post() {
						return
					}
				}
			} else {
				b.SetParallelism((par + 1) / 2)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if !post() {
							return
						}
					}
				})
			}
			// The process's CPU time (user and system, every goroutine: the journal's and the
			// committer's included) is the figure to compare: the time per op is the fsync's.
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// deadlineRecorder is a recorder that takes read deadlines, as a server's connection does:
// ReadBodies sets them (a bare recorder answers each with a new error).
type deadlineRecorder struct{ *httptest.ResponseRecorder }

func (deadlineRecorder) SetReadDeadline(time.Time) error { return nil }

// processCPU is the CPU time the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
