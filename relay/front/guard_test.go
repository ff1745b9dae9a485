package front

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// guardObserver records the outcomes reported to it.
type guardObserver struct {
	mu       sync.Mutex
	outcomes []relay.Outcome
}

func (o *guardObserver) Request(app string, oc relay.Outcome, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.outcomes = append(o.outcomes, oc)
}

func (o *guardObserver) count(oc relay.Outcome) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, x := range o.outcomes {
		if x == oc {
			n++
		}
	}
	return n
}

var reached = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "reached") })

func TestRequireClientCert_Decisions(t *testing.T) {
	cert := func(cn string) *x509.Certificate { return &x509.Certificate{Subject: pkix.Name{CommonName: cn}} }
	tests := []struct {
		name   string
		names  []string
		state  *tls.ConnectionState
		status int
		reason string
	}{
		{name: "plain http", status: 403, reason: `"reason":"no client certificate"`},
		{name: "tls without certificate", state: &tls.ConnectionState{}, status: 403, reason: `"reason":"no client certificate"`},
		{name: "certificate not verified", state: &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert(MetaClientCommonName)}},
			status: 403, reason: `"reason":"untrusted chain"`},
		{name: "verified, default name", state: &tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{cert(MetaClientCommonName)},
			VerifiedChains:   [][]*x509.Certificate{{cert(MetaClientCommonName)}}}, status: 200},
		{name: "verified, name differs in case only", state: &tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{cert("Client.Webhooks.FBClientCerts.com")},
			VerifiedChains:   [][]*x509.Certificate{{cert("Client.Webhooks.FBClientCerts.com")}}}, status: 200},
		{name: "verified, configured names", names: []string{"a.example", "b.example"}, state: &tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{cert("b.example")},
			VerifiedChains:   [][]*x509.Certificate{{cert("b.example")}}}, status: 200},
		{name: "verified, not a configured name", names: []string{"a.example"}, state: &tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{cert(MetaClientCommonName)},
			VerifiedChains:   [][]*x509.Certificate{{cert(MetaClientCommonName)}}},
			status: 403, reason: `"reason":"wrong common name client.webhooks.fbclientcerts.com"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs, obs := &logSink{}, &guardObserver{}
			h := RequireClientCert(reached, ClientCertOptions{CommonNames: tt.names, Logger: logs.logger(), Observer: obs})
			req := httptest.NewRequest("POST", "/webhooks", nil)
			req.TLS = tt.state
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d", rec.Code, tt.status)
			}
			if tt.status == 200 {
				if rec.Body.String() != "reached" || obs.count(relay.OutcomeForbidden) != 0 {
					t.Fatalf("body %q, forbidden %d", rec.Body, obs.count(relay.OutcomeForbidden))
				}
				return
			}
			if logs.count(`"msg":"client certificate refused"`, tt.reason) != 1 || obs.count(relay.OutcomeForbidden) != 1 {
				t.Fatalf("want one refusal logged with %s and one observed (%d); log:\n%s", tt.reason, obs.count(relay.OutcomeForbidden), logs)
			}
		})
	}
}

const albSubject = `CN=client.webhooks.fbclientcerts.com,O=Meta Platforms\, Inc.,L=Menlo Park,ST=California,C=US`

func TestTrustedProxy(t *testing.T) {
	tests := []struct {
		name    string
		o       ProxyOptions
		remote  string
		headers map[string][]string
		status  int
		logs    []string
	}{
		{name: "trusted peer, Meta subject", remote: "10.1.2.3:5555",
			headers: map[string][]string{DefaultSubjectHeader: {albSubject}}, status: 200},
		{name: "trusted IPv6 peer, custom header and names",
			o:       ProxyOptions{SubjectHeader: "x-client-dn", CommonNames: []string{"a.example", "b.example"}, From: []string{"fd00::/8"}},
			remote:  "[fd00::7]:443",
			headers: map[string][]string{"X-Client-Dn": {"CN=b.example,O=B"}}, status: 200},
		{name: "trusted peer, wrong CN", remote: "10.1.2.3:5555",
			headers: map[string][]string{DefaultSubjectHeader: {"CN=evil.example.com,O=Evil"}}, status: 403,
			logs: []string{`"reason":"wrong common name evil.example.com"`, `"cn":"evil.example.com"`}},
		{name: "escaped comma does not smuggle a CN", remote: "10.1.2.3:5555",
			headers: map[string][]string{DefaultSubjectHeader: {`CN=evil\,CN=client.webhooks.fbclientcerts.com,O=Evil`}}, status: 403,
			logs: []string{`"reason":"wrong common name evil,CN=client.webhooks.fbclientcerts.com"`}},
		{name: "untrusted peer with a good header", remote: "192.0.2.1:5555",
			headers: map[string][]string{DefaultSubjectHeader: {albSubject}}, status: 403,
			logs: []string{`"reason":"peer not a trusted proxy"`, `"remote":"192.0.2.1:5555"`}},
		{name: "untrusted peer inside a bigger network", remote: "11.0.0.1:5555",
			headers: map[string][]string{DefaultSubjectHeader: {albSubject}}, status: 403,
			logs: []string{`"reason":"peer not a trusted proxy"`}},
		{name: "trusted peer, no header", remote: "10.1.2.3:5555", status: 403,
			logs: []string{`"reason":"no client certificate subject"`}},
		{name: "trusted peer, empty header", remote: "10.1.2.3:5555",
			headers: map[string][]string{DefaultSubjectHeader: {""}}, status: 403,
			logs: []string{`"reason":"no client certificate subject"`}},
		{name: "trusted peer, header twice", remote: "10.1.2.3:5555",
			headers: map[string][]string{DefaultSubjectHeader: {albSubject, "CN=x"}}, status: 403,
			logs: []string{`"reason":"malformed client certificate subject"`, `"err":"header repeated"`}},
		{name: "trusted peer, subject without CN", remote: "10.1.2.3:5555",
			headers: map[string][]string{DefaultSubjectHeader: {"O=Meta Platforms,C=US"}}, status: 403,
			logs: []string{`"reason":"malformed client certificate subject"`, `"err":"no common name"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs, obs := &logSink{}, &guardObserver{}
			o := tt.o
			if o.From == nil {
				o.From = []string{"10.0.0.0/8", "192.168.1.1"}
			}
			o.Logger, o.Observer = logs.logger(), obs
			h, err := TrustedProxy(reached, o)
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest("POST", "/webhooks", nil)
			req.RemoteAddr = tt.remote
			for k, vs := range tt.headers {
				req.Header[k] = vs
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d", rec.Code, tt.status)
			}
			if tt.status == 200 {
				if rec.Body.String() != "reached" {
					t.Fatalf("body %q", rec.Body)
				}
				return
			}
			if logs.count(append([]string{`"msg":"client certificate refused"`}, tt.logs...)...) != 1 || obs.count(relay.OutcomeForbidden) != 1 {
				t.Fatalf("want one refusal logged with %q and one observed; log:\n%s", tt.logs, logs)
			}
		})
	}
}

func TestTrustedProxy_Config(t *testing.T) {
	for _, from := range [][]string{nil, {}, {"10.0.0.0/33"}, {"proxy.internal"}} {
		if _, err := TrustedProxy(reached, ProxyOptions{From: from}); err == nil || !strings.HasPrefix(err.Error(), "trusted proxy: ") {
			t.Errorf("From %q: err %v", from, err)
		}
	}
}

func TestSubjectCommonName(t *testing.T) {
	tests := []struct {
		dn, want, err string
	}{
		{dn: albSubject, want: MetaClientCommonName},
		{dn: `C=US,ST=California,O=Meta Platforms\, Inc.,CN=client.webhooks.fbclientcerts.com`, want: MetaClientCommonName},
		{dn: `cn=host.example`, want: "host.example"},
		{dn: `commonName=host.example`, want: "host.example"},
		{dn: `2.5.4.3=host.example,O=x`, want: "host.example"},
		{dn: `OID.2.5.4.3=host.example`, want: "host.example"},
		{dn: ` CN = host.example , O = x `, want: "host.example"},
		{dn: `OU=ops+CN=host.example,O=x`, want: "host.example"},
		{dn: `CN=a\2Cb,O=x`, want: "a,b"},
		{dn: `CN=caf\C3\A9`, want: "café"},
		{dn: `CN="Meta, Inc",O=x`, want: "Meta, Inc"},
		{dn: `CN="say \"hi\""`, want: `say "hi"`},
		{dn: `CN=host\ `, want: "host "},
		{dn: `CN=a\+b\;c\=d\\e`, want: `a+b;c=d\e`},
		{dn: `O=x;CN=host.example`, want: "host.example"},
		{dn: ``, err: "has no '='"},
		{dn: `O=Meta`, err: "no common name"},
		{dn: `CN=a,CN=b`, err: "more than one common name"},
		{dn: `CN=a,`, err: "has no '='"},
		{dn: `CN=a\`, err: "backslash at the end"},
		{dn: `CN="abc`, err: "unterminated quoted value"},
		{dn: `CN=a"b`, err: "unescaped quote"},
		{dn: `CN="a"b`, err: "after a quoted value"},
		{dn: `=x`, err: "bad type"},
	}
	for _, tt := range tests {
		t.Run(tt.dn, func(t *testing.T) {
			got, err := SubjectCommonName(tt.dn)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func FuzzSubjectCommonName(f *testing.F) {
	for _, s := range []string{albSubject, `CN="a\"b",O=x`, `OU=a+CN=b\2C`, `CN=\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, dn string) {
		SubjectCommonName(dn) // must not panic
	})
}

func TestParseCIDRs(t *testing.T) {
	nets, err := ParseCIDRs([]string{"10.0.0.0/8", " 192.0.2.1 ", "::1", "fd00::/8", "::ffff:198.51.100.1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.1/32", "::1/128", "fd00::/8", "198.51.100.1/32"}
	for i, n := range nets {
		if n.String() != want[i] {
			t.Errorf("net %d: %s, want %s", i, n, want[i])
		}
	}
	for _, bad := range []string{"nope", "10.0.0.0/33", "", "10.0.0.1/8/2"} {
		if _, err := ParseCIDRs([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestClientIP(t *testing.T) {
	trusted, err := ParseCIDRs([]string{"10.0.0.0/8", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		remote  string
		xff     []string
		trusted bool
		want    string
	}{
		{name: "untrusted peer ignores the header", remote: "192.0.2.1:1", xff: []string{"203.0.113.7"}, trusted: true, want: "192.0.2.1"},
		{name: "no trusted proxies", remote: "10.0.0.1:1", xff: []string{"203.0.113.7"}, want: "10.0.0.1"},
		{name: "one hop", remote: "10.0.0.1:1", xff: []string{"203.0.113.7"}, trusted: true, want: "203.0.113.7"},
		{name: "client-written entries are skipped", remote: "10.0.0.1:1", xff: []string{"1.1.1.1, 203.0.113.7, 10.0.0.5"}, trusted: true, want: "203.0.113.7"},
		{name: "several header lines", remote: "10.0.0.1:1", xff: []string{"1.1.1.1", "203.0.113.7"}, trusted: true, want: "203.0.113.7"},
		{name: "no header", remote: "10.0.0.1:1", trusted: true, want: "10.0.0.1"},
		{name: "only trusted hops", remote: "10.0.0.1:1", xff: []string{"10.0.0.9"}, trusted: true, want: "10.0.0.9"},
		{name: "garbage stops the walk", remote: "10.0.0.1:1", xff: []string{"junk, 10.0.0.9"}, trusted: true, want: "10.0.0.9"},
		{name: "entry with a port", remote: "10.0.0.1:1", xff: []string{"203.0.113.7:4711"}, trusted: true, want: "203.0.113.7"},
		{name: "IPv6 peer and client", remote: "[::1]:80", xff: []string{"2001:db8::1"}, trusted: true, want: "2001:db8::1"},
		{name: "IPv4-mapped peer", remote: "[::ffff:10.0.0.1]:80", xff: []string{"203.0.113.7"}, trusted: true, want: "203.0.113.7"},
		{name: "peer without port", remote: "weird", trusted: true, want: "weird"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("POST", "/", nil)
			req.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				req.Header.Add("X-Forwarded-For", v)
			}
			tr := trusted
			if !tt.trusted {
				tr = nil
			}
			if got := ClientIP(req, tr); got != tt.want {
				t.Fatalf("ClientIP %q, want %q", got, tt.want)
			}
		})
	}
}

// heldServer serves Limit around a handler that blocks until release is closed.
type heldServer struct {
	url     string
	lim     *limiter
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	logs    *logSink
	obs     *guardObserver
	client  *http.Client
}

func newHeldServer(t *testing.T, o LimitOptions) *heldServer {
	t.Helper()
	h := &heldServer{entered: make(chan struct{}, 100), release: make(chan struct{}), logs: &logSink{}, obs: &guardObserver{}}
	o.Logger, o.Observer = h.logs.logger(), h.obs
	h.lim = Limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.entered <- struct{}{}
		select {
		case <-h.release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "done")
	}), o).(*limiter)
	srv := httptest.NewServer(h.lim)
	tr := &http.Transport{MaxIdleConnsPerHost: 100}
	h.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	t.Cleanup(func() {
		h.releaseAll()
		tr.CloseIdleConnections()
		srv.Close()
	})
	h.url = srv.URL
	return h
}

func (h *heldServer) releaseAll() { h.once.Do(func() { close(h.release) }) }

func (h *heldServer) get(t *testing.T, client string) (int, string) {
	req, err := http.NewRequest("GET", h.url, nil)
	if err != nil {
		t.Error(err)
		return 0, ""
	}
	req.Header.Set("X-Test-Client", client)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Error(err)
		return 0, ""
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// hold starts n requests from client and waits until all are inside the handler.
func (h *heldServer) hold(t *testing.T, wg *sync.WaitGroup, n int, client string) {
	t.Helper()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _ := h.get(t, client); code != 200 {
				t.Errorf("held request from %s: status %d", client, code)
			}
		}()
	}
	for range n {
		select {
		case <-h.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("held requests did not reach the handler")
		}
	}
}

func (h *heldServer) perIPLen() int {
	h.lim.mu.Lock()
	defer h.lim.mu.Unlock()
	return len(h.lim.perIP)
}

func byHeader(r *http.Request) string { return r.Header.Get("X-Test-Client") }

func TestLimit_Global(t *testing.T) {
	h := newHeldServer(t, LimitOptions{MaxConcurrent: 3, MaxConcurrentPerIP: 3, ClientIP: byHeader})
	var wg sync.WaitGroup
	h.hold(t, &wg, 2, "a")
	h.hold(t, &wg, 1, "b")
	if code, ra := h.get(t, "c"); code != http.StatusServiceUnavailable || ra != "1" {
		t.Fatalf("over the global limit: status %d, Retry-After %q; want 503, 1", code, ra)
	}
	h.releaseAll()
	wg.Wait()
	if code, _ := h.get(t, "c"); code != 200 {
		t.Fatalf("after release: status %d", code)
	}
	if n := h.lim.inFlight.Load(); n != 0 {
		t.Fatalf("in flight %d after all requests ended", n)
	}
	if n := h.perIPLen(); n != 0 {
		t.Fatalf("per-address map holds %d entries after all requests ended", n)
	}
	if h.obs.count(relay.OutcomeOverloaded) != 1 {
		t.Fatalf("overloaded observed %d times", h.obs.count(relay.OutcomeOverloaded))
	}
	h.logs.waitLog(t, `"msg":"request refused"`, `"reason":"too many concurrent requests"`, `"status":503`)
}

func TestLimit_PerIP(t *testing.T) {
	h := newHeldServer(t, LimitOptions{MaxConcurrent: 3, MaxConcurrentPerIP: 2, ClientIP: byHeader})
	var wg sync.WaitGroup
	h.hold(t, &wg, 2, "a")
	if code, ra := h.get(t, "a"); code != http.StatusTooManyRequests || ra != "1" {
		t.Fatalf("over the per-address limit: status %d, Retry-After %q; want 429, 1", code, ra)
	}
	h.hold(t, &wg, 1, "b") // the refused request took no global slot
	if code, _ := h.get(t, "a"); code != http.StatusTooManyRequests {
		t.Fatalf("full everywhere, from a: status %d, want 429", code)
	}
	if code, _ := h.get(t, "c"); code != http.StatusServiceUnavailable {
		t.Fatalf("full everywhere, from c: status %d, want 503", code)
	}
	if n := h.perIPLen(); n != 2 {
		t.Fatalf("per-address map holds %d entries with a and b in flight", n)
	}
	h.releaseAll()
	wg.Wait()
	if n := h.perIPLen(); n != 0 {
		t.Fatalf("per-address map holds %d entries after all requests ended", n)
	}
	if h.obs.count(relay.OutcomeRateLimited) != 2 || h.obs.count(relay.OutcomeOverloaded) != 1 {
		t.Fatalf("observed %v", h.obs.outcomes)
	}
	// Two 429s within a second: one line.
	if n := h.logs.count(`"reason":"too many concurrent requests from one address"`, `"client":"a"`); n != 1 {
		t.Fatalf("%d rate-limit lines logged, want 1:\n%s", n, h.logs)
	}
}

func TestLimit_Off(t *testing.T) {
	lim := Limit(reached, LimitOptions{}).(*limiter)
	for range 3 {
		rec := httptest.NewRecorder()
		lim.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		if rec.Code != 200 {
			t.Fatalf("status %d", rec.Code)
		}
	}
	if len(lim.perIP) != 0 || lim.inFlight.Load() != 0 {
		t.Fatal("limits off, yet requests were counted")
	}
}

func TestRefuser_Sampling(t *testing.T) {
	logs, obs := &logSink{}, &guardObserver{}
	f := newRefuser(logs.logger(), obs, "request refused")
	now := time.Now()
	f.sample = relay.NewLogSamplerClock(time.Hour, func() time.Time { return now }) // no end-of-interval line during the test
	refuse := func(reason string) {
		f.refuse(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil), now, 503, relay.OutcomeOverloaded, reason, "")
	}
	for range 5 {
		refuse(ReasonOverloaded)
	}
	refuse(ReasonRateLimited) // another reason is not held back
	if n := logs.count(`"msg":"request refused"`); n != 2 {
		t.Fatalf("%d lines, want 2:\n%s", n, logs)
	}
	now = now.Add(time.Hour)
	refuse(ReasonOverloaded)
	if logs.count(`"reason":"too many concurrent requests"`, `"suppressed":4`) != 1 {
		t.Fatalf("no line counting the 4 unlogged refusals:\n%s", logs)
	}
	if obs.count(relay.OutcomeOverloaded) != 7 {
		t.Fatalf("observed %d refusals, want every one (7)", obs.count(relay.OutcomeOverloaded))
	}
}

func BenchmarkGuards(b *testing.B) {
	proxy, err := TrustedProxy(reached, ProxyOptions{From: []string{"10.0.0.0/8"}})
	if err != nil {
		b.Fatal(err)
	}
	trusted, _ := ParseCIDRs([]string{"10.0.0.0/8"})
	h := Limit(proxy, LimitOptions{MaxConcurrent: 1 << 20, MaxConcurrentPerIP: 1 << 20,
		ClientIP: func(r *http.Request) string { return ClientIP(r, trusted) }})
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequest("POST", "/webhooks", nil)
		req.RemoteAddr = "10.1.2.3:5555"
		req.Header.Set(DefaultSubjectHeader, albSubject)
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		w := httptest.NewRecorder()
		for pb.Next() {
			w.Body.Reset()
			h.ServeHTTP(w, req)
		}
	})
}
