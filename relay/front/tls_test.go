package front

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// pkiCA is a throwaway certificate authority for tests.
type pkiCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newPKICA(t *testing.T, cn string) *pkiCA {
	t.Helper()
	key := newPKIKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"hubrelay test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &pkiCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func newPKIKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// pkiLeaf is an issued certificate with its key, as PEM and as a tls.Certificate.
type pkiLeaf struct {
	certPEM, keyPEM []byte
	pair            tls.Certificate
}

// issue signs tmpl, filling in what a test does not care about.
func (ca *pkiCA) issue(t *testing.T, tmpl *x509.Certificate) pkiLeaf {
	t.Helper()
	key := newPKIKey(t)
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	l := pkiLeaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	if l.pair, err = tls.X509KeyPair(l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	return l
}

// intermediate issues a CA certificate under ca.
func (ca *pkiCA) intermediate(t *testing.T, cn string) *pkiCA {
	t.Helper()
	l := ca.issue(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	})
	return &pkiCA{cert: l.pair.Leaf, key: l.pair.PrivateKey.(*ecdsa.PrivateKey), pem: l.certPEM}
}

func serverLeaf(t *testing.T, ca *pkiCA, serial int64) pkiLeaf {
	return ca.issue(t, &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "hubrelay.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

func clientLeaf(t *testing.T, ca *pkiCA, cn string) pkiLeaf {
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"Meta Platforms, Inc."}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writePair writes l to cert.pem and key.pem in dir and returns their paths.
func writePair(t *testing.T, dir string, l pkiLeaf) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certFile, l.certPEM)
	writeFile(t, keyFile, l.keyPEM)
	return certFile, keyFile
}

// logSink collects JSON log lines for assertions; safe for concurrent use.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// count returns how many lines contain every one of subs.
func (s *logSink) count(subs ...string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(s.buf.Bytes()))
	sc.Buffer(nil, 1<<20)
next:
	for sc.Scan() {
		for _, sub := range subs {
			if !strings.Contains(sc.Text(), sub) {
				continue next
			}
		}
		n++
	}
	return n
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitLog polls until a line contains every one of subs: the server logs a failed handshake
// on its own goroutine, possibly after the client has seen the failure.
func (s *logSink) waitLog(t *testing.T, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.count(subs...) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q; log:\n%s", subs, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startTLSServer serves h over TLS on loopback the way serve.go does: http.Server with
// TLSConfig, ServeTLS without files, HTTPErrorLog.
func startTLSServer(t *testing.T, cfg *tls.Config, h http.Handler, log *slog.Logger) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: cfg, ErrorLog: HTTPErrorLog(log), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return "https://" + ln.Addr().String()
}

// tlsGet makes a GET on a new connection (so a new handshake) trusting roots and presenting
// cert, if given, whatever CAs the server says it accepts (a Go client on its own would not
// send a certificate from another CA).
func tlsGet(url string, roots *x509.CertPool, cert ...tls.Certificate) (*http.Response, string, error) {
	cfg := &tls.Config{RootCAs: roots}
	if len(cert) > 0 {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert[0], nil }
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

func poolOf(cas ...*pkiCA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.cert)
	}
	return p
}

func TestServerTLSConfig_ClientCertificates(t *testing.T) {
	dir := t.TempDir()
	serverCA := newPKICA(t, "server ca")
	metaCA := newPKICA(t, "meta ca new")
	oldCA := newPKICA(t, "meta ca old")
	otherCA := newPKICA(t, "someone else")
	certFile, keyFile := writePair(t, dir, serverLeaf(t, serverCA, 1))
	bundle := filepath.Join(dir, "client-ca.pem")
	writeFile(t, bundle, append(append([]byte("two CAs during a changeover\n"), metaCA.pem...), oldCA.pem...))

	logs := &logSink{}
	cfg, err := ServerTLSConfig(TLSOptions{CertFile: certFile, KeyFile: keyFile, ClientCAFile: bundle, Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Fatalf("MinVersion %x ClientAuth %v", cfg.MinVersion, cfg.ClientAuth)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.Handle("/", RequireClientCert(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "reached")
	}), ClientCertOptions{Logger: logs.logger()}))
	url := startTLSServer(t, cfg, mux, logs.logger())

	inter := metaCA.intermediate(t, "meta intermediate")
	viaInter := clientLeaf(t, inter, MetaClientCommonName)
	viaInter.pair.Certificate = append(viaInter.pair.Certificate, inter.cert.Raw) // leaf + intermediate, as Meta sends
	expired := metaCA.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: MetaClientCommonName},
		NotBefore:   time.Now().Add(-48 * time.Hour),
		NotAfter:    time.Now().Add(-24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	serverOnly := metaCA.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: MetaClientCommonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})

	tests := []struct {
		name     string
		path     string
		certs    []tls.Certificate
		status   int      // 0: the request must fail (handshake refused)
		body     string   // checked when status is 200
		logWants []string // a log line containing all of these
	}{
		{name: "right CN", certs: []tls.Certificate{clientLeaf(t, metaCA, MetaClientCommonName).pair}, status: 200, body: "reached"},
		{name: "right CN, second CA of the bundle", certs: []tls.Certificate{clientLeaf(t, oldCA, MetaClientCommonName).pair}, status: 200, body: "reached"},
		{name: "right CN via intermediate", certs: []tls.Certificate{viaInter.pair}, status: 200, body: "reached"},
		{name: "wrong CN", certs: []tls.Certificate{clientLeaf(t, metaCA, "evil.example.com").pair}, status: 403,
			logWants: []string{`"msg":"client certificate refused"`, `"reason":"wrong common name evil.example.com"`, `"cn":"evil.example.com"`}},
		{name: "no client certificate", status: 403,
			logWants: []string{`"msg":"client certificate refused"`, `"reason":"no client certificate"`}},
		{name: "no client certificate on health check", path: "/healthz", status: 200, body: "ok"},
		{name: "expired", certs: []tls.Certificate{expired.pair},
			logWants: []string{`"msg":"client certificate refused"`, `"reason":"expired or not yet valid certificate"`, `"remote":"127.0.0.1:`}},
		{name: "other CA", certs: []tls.Certificate{clientLeaf(t, otherCA, MetaClientCommonName).pair},
			logWants: []string{`"msg":"client certificate refused"`, `"reason":"untrusted chain"`, `"remote":"127.0.0.1:`}},
		{name: "not a client-auth certificate", certs: []tls.Certificate{serverOnly.pair},
			logWants: []string{`"msg":"client certificate refused"`, `"reason":"certificate not valid for client authentication"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.path
			if path == "" {
				path = "/webhooks"
			}
			resp, body, err := tlsGet(url+path, poolOf(serverCA), tt.certs...)
			switch {
			case tt.status == 0 && err == nil:
				t.Fatalf("request succeeded with %d, want a refused handshake", resp.StatusCode)
			case tt.status != 0 && err != nil:
				t.Fatalf("request: %v", err)
			case tt.status != 0 && resp.StatusCode != tt.status:
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tt.status, body)
			case tt.status == 200 && body != tt.body:
				t.Fatalf("body %q, want %q", body, tt.body)
			}
			if tt.logWants != nil {
				logs.waitLog(t, tt.logWants...)
			}
		})
	}
}

func TestServerTLSConfig_MinVersion(t *testing.T) {
	dir := t.TempDir()
	ca := newPKICA(t, "server ca")
	certFile, keyFile := writePair(t, dir, serverLeaf(t, ca, 1))
	cfg, err := ServerTLSConfig(TLSOptions{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("ClientAuth %v without a client CA file", cfg.ClientAuth)
	}
	url := startTLSServer(t, cfg, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), nil)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: poolOf(ca), MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}
	defer tr.CloseIdleConnections()
	if _, err := (&http.Client{Transport: tr}).Get(url); err == nil {
		t.Fatal("TLS 1.1 client accepted")
	}
	if resp, _, err := tlsGet(url, poolOf(ca)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("TLS 1.2+ client: %v", err)
	}
}

func TestServerTLSConfig_Errors(t *testing.T) {
	dir := t.TempDir()
	ca := newPKICA(t, "ca")
	certFile, keyFile := writePair(t, dir, serverLeaf(t, ca, 1))
	empty := filepath.Join(dir, "empty.pem")
	writeFile(t, empty, []byte("# no certificates here\n"))
	corrupt := filepath.Join(dir, "corrupt.pem")
	writeFile(t, corrupt, append(ca.pem, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})...))
	keyOnly := filepath.Join(dir, "keyonly.pem")
	writeFile(t, keyOnly, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))

	tests := []struct {
		name string
		o    TLSOptions
		want string
	}{
		{"missing cert file", TLSOptions{CertFile: filepath.Join(dir, "nope.pem"), KeyFile: keyFile}, "load tls certificate"},
		{"missing client ca file", TLSOptions{CertFile: certFile, KeyFile: keyFile, ClientCAFile: filepath.Join(dir, "nope.pem")}, "read client ca file"},
		{"bundle without certificates", TLSOptions{CertFile: certFile, KeyFile: keyFile, ClientCAFile: empty}, "no PEM certificates"},
		{"bundle with only a key", TLSOptions{CertFile: certFile, KeyFile: keyFile, ClientCAFile: keyOnly}, "no PEM certificates"},
		{"corrupt certificate in bundle", TLSOptions{CertFile: certFile, KeyFile: keyFile, ClientCAFile: corrupt}, "pem block 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ServerTLSConfig(tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// servedSerial makes a new connection and returns the serial of the certificate the server
// presented.
func servedSerial(t *testing.T, url string, roots *x509.CertPool) int64 {
	t.Helper()
	resp, _, err := tlsGet(url, roots)
	if err != nil {
		t.Fatal(err)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
}

func TestCertReloader_Reload(t *testing.T) {
	dir := t.TempDir()
	ca := newPKICA(t, "server ca")
	certFile, keyFile := writePair(t, dir, serverLeaf(t, ca, 1))
	logs := &logSink{}
	r, err := NewCertReloader(certFile, keyFile, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ServerTLSConfig(TLSOptions{Certs: r})
	if err != nil {
		t.Fatal(err)
	}
	url := startTLSServer(t, cfg, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), nil)
	roots := poolOf(ca)
	if got := servedSerial(t, url, roots); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}

	writePair(t, dir, serverLeaf(t, ca, 2))
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, url, roots); got != 2 {
		t.Fatalf("after Reload: serial %d, want 2", got)
	}
	if r.Leaf().SerialNumber.Int64() != 2 {
		t.Fatalf("Leaf serial %v", r.Leaf().SerialNumber)
	}

	// A key that does not match the certificate: refused, logged, serial 2 stays.
	writeFile(t, certFile, serverLeaf(t, ca, 3).certPEM)
	if err := r.Reload(); err == nil || !strings.Contains(err.Error(), "load tls certificate") {
		t.Fatalf("Reload with a mismatched key: %v", err)
	}
	logs.waitLog(t, `"level":"ERROR"`, `"msg":"tls certificate not reloaded; the current one stays in service"`, `private key does not match public key`)
	if got := servedSerial(t, url, roots); got != 2 {
		t.Fatalf("after a bad pair: serial %d, want 2", got)
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Fatal("key material in the log")
	}
}

func TestCertReloader_FilesChanged(t *testing.T) {
	dir := t.TempDir()
	ca := newPKICA(t, "server ca")
	certFile, keyFile := writePair(t, dir, serverLeaf(t, ca, 1))
	logs := &logSink{}
	r, err := NewCertReloader(certFile, keyFile, logs.logger())
	if err != nil {
		t.Fatal(err)
	}
	r.interval = 0 // look at the files on every handshake
	r.nextCheck.Store(0)
	cfg, err := ServerTLSConfig(TLSOptions{Certs: r})
	if err != nil {
		t.Fatal(err)
	}
	url := startTLSServer(t, cfg, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), nil)
	roots := poolOf(ca)

	touch := func(at time.Time) {
		for _, f := range []string{certFile, keyFile} {
			if err := os.Chtimes(f, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A broken pair: refused once, not on every handshake, and the old certificate serves.
	writeFile(t, keyFile, serverLeaf(t, ca, 9).keyPEM)
	touch(time.Now().Add(time.Minute))
	for range 3 {
		if got := servedSerial(t, url, roots); got != 1 {
			t.Fatalf("with a broken pair on disk: serial %d, want 1", got)
		}
	}
	if n := logs.count(`"msg":"tls certificate not reloaded`); n != 1 {
		t.Fatalf("%d reload failures logged, want 1:\n%s", n, logs)
	}

	// A good pair is picked up without Reload.
	writePair(t, dir, serverLeaf(t, ca, 2))
	touch(time.Now().Add(2 * time.Minute))
	if got := servedSerial(t, url, roots); got != 2 {
		t.Fatalf("after the files changed: serial %d, want 2", got)
	}
	logs.waitLog(t, `"msg":"tls certificate loaded"`, `"serial":"2"`)
}

func TestCertReloader_New(t *testing.T) {
	dir := t.TempDir()
	ca := newPKICA(t, "server ca")
	l := serverLeaf(t, ca, 7)
	certFile, keyFile := writePair(t, dir, l)
	if _, err := NewCertReloader(certFile, filepath.Join(dir, "missing.pem"), nil); err == nil {
		t.Fatal("missing key file accepted")
	}
	if _, err := NewCertReloader(keyFile, certFile, nil); err == nil {
		t.Fatal("swapped files accepted")
	}
	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || c.Leaf.SerialNumber.Int64() != 7 {
		t.Fatalf("GetCertificate: %v, %v", c, err)
	}
}

func TestHTTPErrorLog(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{"http: TLS handshake error from 192.0.2.1:4711: tls: failed to verify certificate: x509: certificate signed by unknown authority",
			[]string{`"level":"WARN"`, `"msg":"client certificate refused"`, `"reason":"untrusted chain"`, `"remote":"192.0.2.1:4711"`}},
		{"http: TLS handshake error from [2001:db8::1]:443: tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time",
			[]string{`"msg":"client certificate refused"`, `"reason":"expired or not yet valid certificate"`, `"remote":"[2001:db8::1]:443"`}},
		{"http: TLS handshake error from 192.0.2.1:1: EOF",
			[]string{`"level":"INFO"`, `"msg":"tls handshake failed"`, `"err":"EOF"`}},
		{"http: superfluous response.WriteHeader call",
			[]string{`"level":"WARN"`, `"msg":"http: superfluous response.WriteHeader call"`}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			logs := &logSink{}
			HTTPErrorLog(logs.logger()).Print(tt.line)
			if logs.count(tt.want...) != 1 {
				t.Fatalf("want one line with %q, got:\n%s", tt.want, logs)
			}
		})
	}
}
