package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/metrics"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/front"
)

// The webhook listener's front door (relay/front), wired from the config: TLS and its
// certificate reload, the connection limiter, the request guards and the http.Server.

// serverCerts is the TLS side of the webhook listener: its configuration, and the reloader
// SIGHUP tells to re-read the certificate files.
type serverCerts struct {
	config *tls.Config
	certs  *front.CertReloader
}

// reload re-reads the certificate files (SIGHUP); it logs its own errors and keeps the old
// pair. A nil serverCerts (no TLS) does nothing.
func (c *serverCerts) reload() {
	if c != nil {
		c.certs.Reload()
	}
}

// serverTLS returns the TLS side of the webhook listener, or nil when server.tls is not set.
func serverTLS(cfg *config.Config, log *slog.Logger) (*serverCerts, error) {
	t := cfg.Server.TLS
	if t == nil {
		return nil, nil
	}
	tlsLog := log.With("component", "tls")
	certs, err := front.NewCertReloader(t.CertFile, t.KeyFile, tlsLog)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc, err := front.ServerTLSConfig(front.TLSOptions{Certs: certs, ClientCAFile: t.ClientCAFile, Logger: tlsLog})
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &serverCerts{config: tc, certs: certs}, nil
}

func newHTTPServer(cfg *config.Config, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		ReadTimeout:       cfg.Server.ReadTimeout,
		WriteTimeout:      cfg.Server.WriteTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          front.HTTPErrorLog(log.With("component", "http")),
	}
}

// guard wraps the webhook receiver in the request guards, outermost first: concurrency limits
// (global, per client address), then the caller's identity — Meta's client certificate when
// hubrelay terminates mutual TLS, or the subject a trusted load balancer vouches for. Health
// and metrics endpoints stay outside.
func guard(cfg *config.Config, recv http.Handler, obs front.Observer, log *slog.Logger) (http.Handler, error) {
	h := recv
	var trusted []netip.Prefix
	mtlsLog := log.With("component", "mtls")
	switch {
	case cfg.Server.TLS != nil && cfg.Server.TLS.ClientCAFile != "":
		h = front.RequireClientCert(h, front.ClientCertOptions{
			CommonNames: cfg.Server.TLS.ClientCommonNames, Logger: mtlsLog, Observer: obs})
	case cfg.Server.TrustedProxy != nil:
		tp := cfg.Server.TrustedProxy
		var err error
		if trusted, err = front.ParseCIDRs(tp.From); err != nil {
			return nil, fmt.Errorf("trusted_proxy.from: %w", err)
		}
		if h, err = front.TrustedProxy(h, front.ProxyOptions{SubjectHeader: tp.SubjectHeader,
			CommonNames: tp.CommonNames, From: tp.From, Logger: mtlsLog, Observer: obs}); err != nil {
			return nil, err
		}
	}
	h = front.Limit(h, front.LimitOptions{
		MaxConcurrent:      cfg.Server.MaxConcurrent,
		MaxConcurrentPerIP: cfg.Server.MaxConcurrentIP,
		ClientIP:           relay.RemoteAddr,
		Logger:             log.With("component", "ingest"),
		Observer:           obs,
	})
	// Bodies are read before a concurrency slot is taken, under their own budget: a slow
	// body holds no slot a fast request needs.
	h = front.ReadBodies(h, front.BodyOptions{
		MaxBytes:    cfg.Server.MaxBodyBytes,
		MinRate:     cfg.Server.MinBodyRate,
		Grace:       cfg.Server.BodyGrace,
		MaxInFlight: cfg.Server.MaxBodyBytesInFlight,
		ReadTimeout: cfg.Server.ReadTimeout,
		Logger:      log.With("component", "ingest"),
		Observer:    obs,
	})
	// Outermost: the client address (X-Forwarded-For believed only from trusted proxies) for
	// the per-address limit and every log line.
	return front.WithClientIP(h, trusted), nil
}

// fdReserve is how many file descriptors are kept for everything but client connections:
// the spool and its journal, dead letters, file sinks, and connections to sinks.
const fdReserve = 256

// connLimiter raises the soft limit on open files to the hard limit and returns the limiter of
// the webhook listener's connections, with server.max_connections lowered, and a warning
// logged, when the limit leaves too few descriptors for it.
func connLimiter(cfg *config.Config, log *slog.Logger, m *metrics.Metrics) (*front.ConnLimiter, error) {
	limit := cfg.Server.MaxConnections
	soft, hard, raised, err := raiseFileLimit()
	if err != nil {
		log.Warn("raise the open file limit", "err", err)
	}
	if soft > 0 {
		log.Info("open file limit", "soft", soft, "hard", hard, "raised", raised, "max_connections", limit)
		if room := int(min(soft, 1<<30)) - fdReserve; limit > room {
			limit = max(room, 1)
			log.Warn("max_connections lowered to fit the open file limit; raise the limit (ulimit -n, LimitNOFILE=) to allow more",
				"max_connections", cfg.Server.MaxConnections, "lowered_to", limit, "soft_limit", soft, "reserved", fdReserve)
		}
	}
	var exempt []netip.Prefix
	if tp := cfg.Server.TrustedProxy; tp != nil {
		var err error
		if exempt, err = front.ParseCIDRs(tp.From); err != nil {
			return nil, fmt.Errorf("trusted_proxy.from: %w", err)
		}
	}
	var observe func(reason string) // set below, before the listener accepts anything
	l := front.NewConnLimiter(front.ConnLimitOptions{
		Max:      limit,
		MaxPerIP: cfg.Server.MaxConnectionsIP,
		Exempt:   exempt,
		Logger:   log.With("component", "http"),
		Observe:  func(reason string) { observe(reason) },
	})
	observe = m.WatchConnections(l.Open)
	return l, nil
}
