package front

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// MetaClientCommonName is the subject common name of the client certificate Meta presents
// when it posts webhooks over mutual TLS.
const MetaClientCommonName = "client.webhooks.fbclientcerts.com"

// certCheckInterval is how often GetCertificate looks at the certificate files for changes.
const certCheckInterval = 5 * time.Second

// CertReloader serves a certificate and key pair from files and picks up new files without a
// restart: GetCertificate compares the files' size and modification time at most every few
// seconds, and Reload (for SIGHUP) re-reads them at once. A new pair that does not load is
// logged and the pair already loaded stays in service. It is safe for concurrent use.
type CertReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	interval          time.Duration

	cert      atomic.Pointer[tls.Certificate]
	nextCheck atomic.Int64 // unix nanoseconds

	mu    sync.Mutex // serialises loads; guards stamp
	stamp pairStamp  // the files as last loaded, or as last refused
}

// fileStamp is what cheaply tells a file changed.
type fileStamp struct {
	size    int64
	modTime int64
	missing bool
}

type pairStamp struct{ cert, key fileStamp }

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{missing: true}
	}
	return fileStamp{size: fi.Size(), modTime: fi.ModTime().UnixNano()}
}

// NewCertReloader loads the pair in certFile and keyFile (PEM, as for tls.LoadX509KeyPair);
// the first load must succeed. log may be nil.
func NewCertReloader(certFile, keyFile string, log *slog.Logger) (*CertReloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, log: log, interval: certCheckInterval}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.loadLocked(); err != nil {
		return nil, err
	}
	r.nextCheck.Store(time.Now().Add(r.interval).UnixNano())
	return r, nil
}

// GetCertificate returns the current certificate; it is meant for tls.Config.GetCertificate.
// At most once per check interval it also looks whether the files changed and, if they did,
// loads them; a handshake never waits for another one's check.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := time.Now().UnixNano()
	if now >= r.nextCheck.Load() && r.mu.TryLock() {
		r.nextCheck.Store(now + int64(r.interval))
		if r.stamp != r.stampNow() {
			r.loadLocked() // a failure is logged; the current pair stays
		}
		r.mu.Unlock()
	}
	return r.cert.Load(), nil
}

// Reload re-reads the files now. On error the pair already loaded stays in service; the
// error is also logged.
func (r *CertReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.loadLocked()
}

// Leaf returns the certificate currently served.
func (r *CertReloader) Leaf() *x509.Certificate {
	return r.cert.Load().Leaf
}

func (r *CertReloader) stampNow() pairStamp {
	return pairStamp{cert: stampOf(r.certFile), key: stampOf(r.keyFile)}
}

func (r *CertReloader) loadLocked() error {
	// Stamp before reading: a file replaced while it is read is seen as changed next time.
	st := r.stampNow()
	r.stamp = st // a refused pair is not retried until the files change again
	pair, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err == nil && pair.Leaf == nil {
		pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0])
	}
	if err != nil {
		err = fmt.Errorf("load tls certificate %s: %w", r.certFile, err)
		if r.cert.Load() != nil {
			r.log.Error("tls certificate not reloaded; the current one stays in service",
				"cert_file", r.certFile, "key_file", r.keyFile, "err", err)
		}
		return err
	}
	r.cert.Store(&pair)
	leaf := pair.Leaf
	attrs := []any{"cert_file", r.certFile, "subject", leaf.Subject.String(), "serial", leaf.SerialNumber.String(),
		"dns_names", leaf.DNSNames, "not_after", leaf.NotAfter}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		r.log.Warn("tls certificate loaded, but it has expired", attrs...)
	case now.Before(leaf.NotBefore):
		r.log.Warn("tls certificate loaded, but it is not valid yet", append(attrs, "not_before", leaf.NotBefore)...)
	default:
		r.log.Info("tls certificate loaded", attrs...)
	}
	return nil
}

// TLSOptions configures ServerTLSConfig.
type TLSOptions struct {
	// Certs serves the server certificate. When nil, one is made from CertFile and KeyFile;
	// pass your own to call Reload on it (SIGHUP).
	Certs    *CertReloader
	CertFile string
	KeyFile  string
	// ClientCAFile is a PEM bundle of the CAs that sign acceptable client certificates; it
	// may hold several (Meta's new CA and the old one during a changeover). Empty: no client
	// certificates are asked for.
	ClientCAFile string
	Logger       *slog.Logger
}

// ServerTLSConfig returns the tls.Config of the public listener: TLS 1.2 or later, Go's
// defaults otherwise, the certificate from a CertReloader.
//
// With a ClientCAFile, the server asks for a client certificate and, when one is given,
// verifies its chain against the bundle during the handshake (tls.VerifyClientCertIfGiven):
// an untrusted, expired or otherwise invalid certificate fails the handshake, and
// HTTPErrorLog logs why. A connection without a certificate is let through the handshake so
// that the decision is made per request by RequireClientCert, which logs it and answers 403 —
// and so that /healthz and /readyz keep working for probes without a certificate. The client
// certificate's common name is checked by RequireClientCert as well, for the same reason.
//
// The CA bundle is read once; a changed bundle takes a restart.
func ServerTLSConfig(o TLSOptions) (*tls.Config, error) {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	certs := o.Certs
	if certs == nil {
		var err error
		if certs, err = NewCertReloader(o.CertFile, o.KeyFile, lg); err != nil {
			return nil, err
		}
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: certs.GetCertificate,
	}
	if o.ClientCAFile != "" {
		pool, cas, err := loadCABundle(o.ClientCAFile)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		for _, ca := range cas {
			attrs := []any{"file", o.ClientCAFile, "subject", ca.Subject.String(), "not_after", ca.NotAfter}
			if now.After(ca.NotAfter) {
				lg.Warn("client ca has expired; certificates it signed are refused", attrs...)
			} else {
				lg.Info("client ca trusted", attrs...)
			}
		}
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.ClientCAs = pool
	}
	return cfg, nil
}

// loadCABundle reads every CERTIFICATE block of a PEM file; a block that does not parse, or a
// file with none, is an error.
func loadCABundle(path string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read client ca file: %w", err)
	}
	pool := x509.NewCertPool()
	var cas []*x509.Certificate
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("client ca file %s: pem block %d: %w", path, n, err)
		}
		pool.AddCert(c)
		cas = append(cas, c)
	}
	if len(cas) == 0 {
		return nil, nil, fmt.Errorf("client ca file %s: no PEM certificates", path)
	}
	return pool, cas, nil
}

// HTTPErrorLog returns a logger for http.Server.ErrorLog that turns the server's TLS
// handshake errors into structured records: a refused client certificate is logged at warn
// as "client certificate refused" with the remote address and a reason ("untrusted chain",
// "expired or not yet valid certificate", …); other handshake failures (scanners, old
// clients) at info; anything else the server logs at warn.
func HTTPErrorLog(lg *slog.Logger) *log.Logger {
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return log.New(errorLogWriter{lg, relay.NewLogSampler(relay.DefaultLogEvery)}, "", 0)
}

// errorLogWriter turns http.Server's error lines into sampled slog lines: a client can cause
// one per connection (a failed handshake), so they are rate-limited like refusals.
type errorLogWriter struct {
	log    *slog.Logger
	sample *relay.LogSampler
}

const handshakePrefix = "http: TLS handshake error from "

func (w errorLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	rest, ok := strings.CutPrefix(line, handshakePrefix)
	if !ok {
		w.sample.Log(w.log, slog.LevelWarn, errorLineKind(line), line)
		return len(p), nil
	}
	remote, errText, _ := strings.Cut(rest, ": ")
	if reason, ok := certificateRefusal(errText); ok {
		w.sample.Log(w.log, slog.LevelWarn, "tls/"+reason, "client certificate refused", "reason", reason, "remote", remote, "err", errText)
	} else {
		w.sample.Log(w.log, slog.LevelInfo, "tls", "tls handshake failed", "remote", remote, "err", errText)
	}
	return len(p), nil
}

// errorLineKind groups http.Server error lines for sampling by their first two words
// ("http: Accept", "http: superfluous"), which name the kind of error without the addresses
// and values that follow.
func errorLineKind(line string) string {
	f := strings.SplitN(line, " ", 3)
	if len(f) > 2 {
		f = f[:2]
	}
	return "http/" + strings.Join(f, " ")
}

// certificateRefusal names why a handshake error refused a client certificate, if it did.
// It works on the error text because that is all http.Server hands its ErrorLog.
func certificateRefusal(errText string) (string, bool) {
	switch {
	case strings.Contains(errText, "certificate signed by unknown authority"):
		return "untrusted chain", true
	case strings.Contains(errText, "certificate has expired or is not yet valid"):
		return "expired or not yet valid certificate", true
	case strings.Contains(errText, "incompatible key usage"):
		return "certificate not valid for client authentication", true
	case strings.Contains(errText, "tls: failed to verify certificate"):
		return "invalid certificate", true
	}
	return "", false
}
