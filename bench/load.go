package bench

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// benchApp is the app name in the relay's config: part of every change id.
const benchApp = "bench"

// generator makes the bench's notifications: WhatsApp text messages, k changes of one entry
// per notification, each message with a wamid unique to the run, phase and sequence number
// (and as random-looking as Meta's, see appendWamid),
// the first message's text padded so the body is at least pad bytes. A notification is a
// pure function of its sequence number, so the ids of the acknowledged ones can be computed
// after the load instead of during it.
type generator struct {
	tag string // unique per run and phase
	k   int    // changes per notification
	pad int    // minimum body size in bytes
}

// body appends notification seq to dst.
func (g *generator) body(dst []byte, seq uint64) []byte {
	start := len(dst)
	dst = g.appendBody(dst, seq, 0)
	if n := len(dst) - start; n < g.pad {
		dst = g.appendBody(dst[:start], seq, g.pad-n)
	}
	return dst
}

func (g *generator) appendBody(dst []byte, seq uint64, pad int) []byte {
	ts := strconv.FormatInt(1750000000+int64(seq%1e6), 10)
	dst = append(dst, `{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[`...)
	for j := range g.k {
		if j > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Bench Load"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.`...)
		dst = g.appendWamid(dst, seq, j)
		dst = append(dst, `","timestamp":"`...)
		dst = append(dst, ts...)
		dst = append(dst, `","type":"text","text":{"body":"bench message`...)
		if j == 0 {
			for range pad {
				dst = append(dst, '.')
			}
		}
		dst = append(dst, `"}}]},"field":"messages"}`...)
	}
	return append(dst, `]}]}`...)
}

// appendWamid appends the part of message j of notification seq's id after "wamid.". Meta's
// ids are base64 of an opaque value ("HBgL..."), effectively random, so a relay's dedup index
// receives them in random order; a counter would put them in key order and flatter it. The
// first 8 bytes are a bijection (splitmix64) of a number unique to the tag, seq and j, so ids
// never repeat within a run.
func (g *generator) appendWamid(dst []byte, seq uint64, j int) []byte {
	h := fnv.New64a()
	h.Write([]byte(g.tag))
	x := h.Sum64() + seq<<10 + uint64(j) // j < 1024: at most 1000 changes per notification
	var raw [24]byte
	binary.BigEndian.PutUint64(raw[0:], splitmix64(x))
	binary.BigEndian.PutUint64(raw[8:], splitmix64(x^0x9e3779b97f4a7c15))
	binary.BigEndian.PutUint64(raw[16:], splitmix64(x^0xbf58476d1ce4e5b9))
	dst = append(dst, "HBgL"...)
	return base64.StdEncoding.AppendEncode(dst, raw[:])
}

// splitmix64 is the finalizer of SplitMix64: a bijection on uint64 that scatters its input.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// ids appends the change ids the relay gives notification seq, computed as the relay does:
// relay.Decode and relay.Key on the bytes sent.
func (g *generator) ids(dst []string, seq uint64) ([]string, error) {
	body := g.body(nil, seq)
	evs, err := relay.Decode(body, benchApp, time.Time{}, relay.Limits{})
	if err != nil {
		return dst, fmt.Errorf("decode notification %d: %w", seq, err)
	}
	for i := range evs {
		dst = append(dst, relay.Key(&evs[i]))
	}
	return dst, nil
}

// loadSpec is one load: where to post, how hard and for how long.
type loadSpec struct {
	url         string
	secret      string
	gen         *generator
	concurrency int           // connections (closed loop) or bound on requests in flight (rate)
	rate        int           // requests per second; 0 = closed loop, each connection back to back
	duration    time.Duration // 0 = until maxRequests
	maxRequests int64         // 0 = until duration
	badSig      float64       // fraction of requests sent with a wrong signature
	timeout     time.Duration // per request
}

// loadResult is what a load measured.
type loadResult struct {
	start, end  time.Time
	requests    int64 // requests sent
	acked       int64 // good signature, answered 200
	rejected    int64 // bad signature, answered 401 (as they must be)
	badAccepted int64 // bad signature, answered 200: a bug in the target
	failed      int64 // everything else: other statuses, transport errors
	statuses    map[int]int64
	firstErr    string
	ackedSeqs   []uint64        // sequence numbers of the acknowledged notifications
	ackLatency  []time.Duration // of every acknowledged request
}

// worker is one sender's state.
type worker struct {
	spec   *loadSpec
	client *http.Client
	good   hash.Hash
	bad    hash.Hash
	rng    *rand.Rand
	sig    []byte

	res loadResult
}

func newWorker(spec *loadSpec, i int) *worker {
	return &worker{
		spec: spec,
		client: &http.Client{Timeout: spec.timeout, Transport: &http.Transport{
			MaxIdleConnsPerHost: 4,
			DisableCompression:  true,
			IdleConnTimeout:     30 * time.Second,
		}},
		good: hmac.New(sha256.New, []byte(spec.secret)),
		bad:  hmac.New(sha256.New, []byte("not-"+spec.secret)),
		rng:  rand.New(rand.NewPCG(uint64(i), 0x62656e6368)),
		sig:  make([]byte, 0, len("sha256=")+2*sha256.Size),
		res:  loadResult{statuses: map[int]int64{}},
	}
}

// post sends notification seq, scheduled at sched (latency counts from it), and records the
// outcome.
func (w *worker) post(ctx context.Context, seq uint64, sched time.Time) {
	body := w.spec.gen.body(nil, seq)
	bad := w.spec.badSig > 0 && w.rng.Float64() < w.spec.badSig
	h := w.good
	if bad {
		h = w.bad
	}
	h.Reset()
	h.Write(body)
	var sum [sha256.Size]byte
	w.sig = append(w.sig[:0], "sha256="...)
	w.sig = hex.AppendEncode(w.sig, h.Sum(sum[:0]))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.spec.url, bytes.NewReader(body))
	if err != nil {
		w.fail(err.Error())
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", string(w.sig))
	w.res.requests++
	resp, err := w.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			w.fail(err.Error())
		} else {
			w.res.failed++
		}
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	took := time.Since(sched)
	w.res.statuses[resp.StatusCode]++
	switch {
	case !bad && resp.StatusCode == http.StatusOK:
		w.res.acked++
		w.res.ackedSeqs = append(w.res.ackedSeqs, seq)
		w.res.ackLatency = append(w.res.ackLatency, took)
	case bad && resp.StatusCode == http.StatusUnauthorized:
		w.res.rejected++
	case bad && resp.StatusCode == http.StatusOK:
		w.res.badAccepted++
	default:
		w.fail(fmt.Sprintf("status %d", resp.StatusCode))
	}
}

func (w *worker) fail(msg string) {
	w.res.failed++
	if w.res.firstErr == "" {
		w.res.firstErr = msg
	}
}

// runLoad runs a load to its end (duration, maxRequests or ctx) and merges what every
// worker measured.
func runLoad(ctx context.Context, spec *loadSpec) *loadResult {
	workers := make([]*worker, spec.concurrency)
	for i := range workers {
		workers[i] = newWorker(spec, i)
	}
	var next atomic.Uint64
	claim := func() (uint64, bool) {
		seq := next.Add(1)
		return seq, spec.maxRequests == 0 || int64(seq) <= spec.maxRequests
	}
	start := time.Now()
	var deadline time.Time
	if spec.duration > 0 {
		deadline = start.Add(spec.duration)
	}
	over := func() bool {
		return ctx.Err() != nil || (!deadline.IsZero() && !time.Now().Before(deadline))
	}
	var wg sync.WaitGroup
	if spec.rate <= 0 {
		for _, w := range workers {
			wg.Go(func() {
				for !over() {
					seq, ok := claim()
					if !ok {
						return
					}
					w.post(ctx, seq, time.Now())
				}
			})
		}
	} else {
		// Fixed rate: a pacer hands out send times; a sender that starts late still counts
		// its latency from the planned time, so a slow target cannot hide its queueing.
		slots := make(chan time.Time, spec.concurrency)
		for _, w := range workers {
			wg.Go(func() {
				for sched := range slots {
					seq, ok := claim()
					if !ok {
						continue
					}
					w.post(ctx, seq, sched)
				}
			})
		}
		interval := time.Second / time.Duration(spec.rate)
	pace:
		for i := int64(0); !over(); i++ {
			if spec.maxRequests > 0 && int64(next.Load()) >= spec.maxRequests {
				break
			}
			at := start.Add(time.Duration(i) * interval)
			if d := time.Until(at); d > 0 {
				time.Sleep(d)
			}
			select {
			case slots <- at:
			case <-ctx.Done():
				break pace
			}
		}
		close(slots)
	}
	wg.Wait()
	res := &loadResult{start: start, end: time.Now(), statuses: map[int]int64{}}
	for _, w := range workers {
		r := &w.res
		res.requests += r.requests
		res.acked += r.acked
		res.rejected += r.rejected
		res.badAccepted += r.badAccepted
		res.failed += r.failed
		for st, n := range r.statuses {
			res.statuses[st] += n
		}
		if res.firstErr == "" {
			res.firstErr = r.firstErr
		}
		res.ackedSeqs = append(res.ackedSeqs, r.ackedSeqs...)
		res.ackLatency = append(res.ackLatency, r.ackLatency...)
		w.client.CloseIdleConnections()
	}
	return res
}
