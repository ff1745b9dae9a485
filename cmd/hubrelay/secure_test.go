package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/front"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and key for cn, for a server (with IP SANs) or a client.
func (ca *testCA) issue(t *testing.T, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServe_MutualTLS runs serve with native TLS and Meta's client certificate required, and
// drives real handshakes: only Meta's common name under the configured CA gets through, for
// the verification GET and for notifications; every refusal is logged with its reason.
func TestServe_MutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA, metaCA, otherCA := newTestCA(t, "server CA"), newTestCA(t, "Meta CA"), newTestCA(t, "other CA")
	sc, sk := serverCA.issue(t, "127.0.0.1", true)
	certFile := writeFile(t, filepath.Join(dir, "tls.crt"), sc)
	keyFile := writeFile(t, filepath.Join(dir, "tls.key"), sk)
	caFile := writeFile(t, filepath.Join(dir, "meta-ca.pem"), metaCA.pem)

	sink := newCollector(t)
	cfgPath := writeConfig(t, dir, freeAddr(t), sink.srv.URL)
	cfg, _ := os.ReadFile(cfgPath)
	cfg = bytes.Replace(cfg, []byte("  max_body_bytes: 65536\n"), []byte(fmt.Sprintf(
		"  max_body_bytes: 65536\n  tls:\n    cert_file: %s\n    key_file: %s\n    client_ca_file: %s\n", certFile, keyFile, caFile)), 1)
	writeFile(t, cfgPath, cfg)
	r := startRelayTLS(t, dir, cfgPath, serverCA)
	hook := strings.Replace(r.url, "http://", "https://", 1) + "/webhooks"

	client := func(ca *testCA, cn string) *http.Client {
		roots := x509.NewCertPool()
		roots.AddCert(serverCA.cert)
		tc := &tls.Config{RootCAs: roots}
		if ca != nil {
			c, k := ca.issue(t, cn, false)
			pair, err := tls.X509KeyPair(c, k)
			if err != nil {
				t.Fatal(err)
			}
			// Present the certificate whatever CAs the server names, as a client that ignores
			// the list would: the untrusted chain must then fail the handshake.
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
	}
	wa := waPayload("mtls-1")
	cases := []struct {
		name   string
		client *http.Client
		status int // 0: the handshake or request fails
		log    string
	}{
		{"Meta's certificate", client(metaCA, front.MetaClientCommonName), 200, ""},
		{"wrong common name", client(metaCA, "evil.example.com"), 403, "evil.example.com"},
		{"no client certificate", client(nil, ""), 403, "no client certificate"},
		{"untrusted CA", client(otherCA, front.MetaClientCommonName), 0, "client certificate refused"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				req, _ := http.NewRequest(method, hook+"?hub.mode=subscribe&hub.verify_token=verify-me-42&hub.challenge=7", bytes.NewReader(wa))
				req.Header.Set("X-Hub-Signature-256", relay.Sign(wa, testSecret))
				resp, err := c.client.Do(req)
				status := 0
				if err == nil {
					status = resp.StatusCode
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if status != c.status {
					t.Errorf("%s: status %d (%v), want %d", method, status, err, c.status)
				}
			}
			if c.log != "" {
				waitFor(t, "refusal logged with its reason", func() bool { return strings.Contains(r.logs.String(), c.log) })
			}
		})
	}
	waitFor(t, "delivery of the mTLS-authenticated change", func() bool { return len(sink.ids()) == 1 })
}

// startRelayTLS is startRelay for an HTTPS listener: /healthz is polled over TLS.
func startRelayTLS(t *testing.T, dir, cfgPath string, serverCA *testCA) *relayUnderTest {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	prev := http.DefaultTransport
	http.DefaultTransport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer func() { http.DefaultTransport = prev }()
	addr := listenAddr(cfgPath)
	return startServe(t, dir, cfgPath, serveOptions{args: []string{"-log-level", "debug"}, health: "https://" + addr + "/healthz",
		client: &http.Client{Transport: http.DefaultTransport, Timeout: 2 * time.Second}})
}

// TestServe_NoSecretInLogs posts every kind of bad request with known secrets configured, at
// debug level, and asserts that no secret, verify token or MAC appears in any log line.
func TestServe_NoSecretInLogs(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, freeAddr(t), sink.srv.URL+"/?token=sink-token-in-url")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "-config", cfgPath, "-log-level", "debug"}, testGetenv, nil, io.Discard, logs)
	}()
	base := "http://" + listenAddr(cfgPath)
	waitFor(t, "healthy", func() bool {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	hook := base + "/webhooks"
	wa := waPayload("secrets-1")
	good := relay.Sign(wa, testSecret)
	macs := []string{good[7:], relay.Sign(wa, "guess")[7:]}
	http.Get(hook + "?hub.mode=subscribe&hub.verify_token=verify-me-42&hub.challenge=1")
	http.Get(hook + "?hub.mode=subscribe&hub.verify_token=wrong-token-guess&hub.challenge=1")
	post(t, hook, wa, "sha256="+macs[1])
	post(t, hook, wa, "sha256=zz")
	post(t, hook, []byte(`{"object":1}`), relay.Sign([]byte(`{"object":1}`), testSecret))
	post(t, hook, wa, good)
	waitFor(t, "delivery", func() bool { return len(sink.ids()) == 1 })
	cancel()
	<-done
	secrets := append([]string{testSecret, "verify-me-42", "wrong-token-guess", "sink-token-in-url", "old-secret-rotated-out"}, macs...)
	for i, line := range strings.Split(logs.String(), "\n") {
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log line %d holds secret %q: %s", i+1, s, line)
			}
		}
	}
}
