package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/console"
	"github.com/hubrelay/hubrelay/metrics"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/rules"
)

// spoolFile is the name of the spool inside storage.dir.
const spoolFile = "spool.db"

func runServe(ctx context.Context, args []string, e env) error {
	fs := newFlags("serve", e)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	logFormat := fs.String("log-format", "", "json or text (overrides log.format)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (overrides log.level)")
	watch := fs.Duration("watch", 0, "also reload when the config file changes, checking every `interval` (e.g. 2s; 0 = only on SIGHUP)")
	if _, err := parseArgs(fs, args, e); err != nil {
		return err
	}
	stopProfile := startCPUProfile(e) // HUBRELAY_CPUPROFILE=FILE, used by `hubrelay bench -cpuprofile`
	defer stopProfile()
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		return err
	}
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
	}
	log, err := newLogger(cfg.Log, e.stderr)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, *cfgPath, *watch, log, e)
}

// loadConfig loads the config and prints every problem; a config with problems is errReported.
func loadConfig(path string, e env) (*config.Config, error) {
	cfg, err := config.Load(path, e.getenv)
	if err == nil {
		return cfg, nil
	}
	var probs config.Problems
	if errors.As(err, &probs) {
		for _, p := range probs {
			fmt.Fprintln(e.stderr, p.Error())
		}
		return nil, errReported
	}
	return nil, err
}

// newLogger builds the root logger from the log config. Format auto is text when w is a
// terminal (a person is watching) and JSON lines otherwise (a log collector is). Durations
// are logged as strings ("168h0m0s"), not as integer nanoseconds.
func newLogger(c config.Log, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", c.Level)
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsStrings}
	format := c.Format
	if format == "auto" || format == "" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: use auto, json or text", c.Format)
}

// durationsAsStrings is a slog ReplaceAttr that writes time.Duration values as Go duration
// strings.
func durationsAsStrings(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// isTerminal reports whether w is a character device (a terminal), not a file or pipe.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// listen binds addr, the value of the config key key. Its error names the key and where the
// config sets it, so the person knows what to change.
func listen(cfg *config.Config, key, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	where := cfg.Where(key)
	if where == "" {
		where = "the default"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err // "bind: address already in use", without "listen tcp ADDR" said again
	}
	hint := ""
	if errors.Is(err, syscall.EADDRINUSE) {
		hint = ": another process listens there (another hubrelay, or an example still running): stop it or change " + key
	}
	return nil, fmt.Errorf("%s %s (%s): %w%s", key, addr, where, err, hint)
}

// logStartup logs what the relay runs with: the config file and version, each app's path,
// each sink's type and destination (secret-free), each rule, and the dead-letter dir.
func logStartup(log *slog.Logger, cfg *config.Config, cfgPath, storage string) {
	log.Info("hubrelay starting", "version", version, "config", cfgPath, "storage", storage,
		"dead_letter_dir", cfg.DeadLetter.Dir, "dedup_window", cfg.Storage.DedupWindow)
	for _, a := range cfg.Apps {
		path := a.Path
		if path == "" {
			path = cfg.Server.Path
		}
		log.Info("app", "app", a.Name, "path", path, "secrets", len(a.AppSecrets))
	}
	for _, sk := range cfg.Sinks {
		log.Info("sink", "sink", sk.Name, "type", sk.Type, "to", sinkDestination(sk))
	}
	for _, r := range cfg.Rules.Summaries() {
		log.Info("rule", "rule", r.Name, "sinks", r.Sinks)
	}
}

// server is one running relay: everything serve wires together.
type server struct {
	log      *slog.Logger
	cfgPath  string
	getenv   func(string) string
	storage  *storage
	engine   *relay.Engine
	router   *relay.Router
	recv     *relay.Receiver
	sinks    *sinkSet
	sinkCfgs []relay.SinkConfig // the sinks the engine was last given (without the built-in one)
	http     *http.Server
	admin    *http.Server
	metrics  *metrics.Metrics
	feed     *console.Feed    // nil unless admin.console
	console  *console.Handler // nil unless admin.console
	ready    func() error
	shutdown time.Duration
	memLimit *memoryLimiter // server.memory_limit; nil: none
	// abandoned is set when deliveries did not end at shutdown: the spool and the sinks are
	// then left for the process exit to close (see drainCtx).
	abandoned bool
}

func serve(ctx context.Context, cfg *config.Config, cfgPath string, watch time.Duration, log *slog.Logger, e env) error {
	s := &server{log: log, cfgPath: cfgPath, getenv: e.getenv, shutdown: cfg.Server.ShutdownTimeout,
		memLimit: newMemoryLimiter(cfg.Server, e.getenv)}
	// Bind first: a taken port is the most common start-up failure, and it must not be
	// preceded by opening (and closing) the spool.
	ln, err := listen(cfg, "server.listen", cfg.Server.Listen)
	if err != nil {
		return err
	}
	defer ln.Close() // after Shutdown, a second Close is harmless
	var aln net.Listener
	if cfg.Admin.Listen != "" {
		if aln, err = listen(cfg, "admin.listen", cfg.Admin.Listen); err != nil {
			return err
		}
		defer aln.Close()
	}
	st, err := openStorage(ctx, cfg, log)
	if err != nil {
		return err
	}
	s.storage = st
	defer func() {
		if !s.abandoned {
			st.close()
		}
	}()
	s.sinks = newSinkSet(log)
	defer func() {
		if !s.abandoned {
			s.sinks.closeAll()
		}
	}()
	w, err := s.wire(cfg)
	if err != nil {
		return err
	}
	admin, mux, err := s.handlers(cfg, w)
	if err != nil {
		return err
	}
	certs, serveErr, err := s.startHTTP(cfg, ln, aln, admin, mux)
	if err != nil {
		return err
	}

	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	go s.maintain(bg)
	if w.replayer != nil {
		go w.replayer.Run(bg, time.Second)
	}
	if err := s.loop(ctx, bg, watch, certs, w, serveErr); err != nil {
		stopBG()
		s.drain()
		return err
	}
	log.Info("shutting down", "timeout", s.shutdown)
	stopBG()
	shutCtx, cancel := context.WithTimeout(context.Background(), s.shutdown)
	defer cancel()
	if err := s.http.Shutdown(shutCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if s.admin != nil {
		s.admin.Close()
	}
	s.drainCtx(shutCtx)
	log.Info("stopped")
	return nil
}

// wiring is what wire builds besides the server's own fields.
type wiring struct {
	reg      *prometheus.Registry
	replayer *relay.Replayer // nil in Postgres mode
	// storeUp and storeFatal tell the loop that the store came up (apply the sinks again) or
	// failed for good.
	storeUp    <-chan struct{}
	storeFatal <-chan error
}

// wire builds the relay on the open storage: sinks, metrics, the delivery engine, the router,
// the receiver and the dead-letter replayer.
func (s *server) wire(cfg *config.Config) (*wiring, error) {
	st, log := s.storage, s.log
	sp := st.store
	sinkCfgs, err := s.sinks.update(cfg.Sinks)
	if err != nil {
		return nil, err
	}
	w := &wiring{reg: prometheus.NewRegistry()}
	s.metrics = metrics.New(w.reg)
	s.metrics.SetBuildInfo(version)
	s.metrics.WatchSpool(sp.Stats, sp.DedupLen, st.letters.Count, s.sinks.names)
	if st.pg != nil {
		registerPostgresMetrics(w.reg, st.pg)
	}
	var obs interface {
		relay.Observer
		relay.DeliveryObserver
	} = s.metrics
	if cfg.Admin.Console {
		s.feed = console.NewFeed(cfg.Log.Payloads)
		obs = teeObserver{s.metrics, s.feed}
	}
	s.engine = relay.NewEngine(sp, st.letters, obs, log)
	s.engine.Start()
	s.metrics.WatchPaused(s.engine.Paused)
	s.metrics.WatchOrder(s.engine.OrderStats)
	w.storeUp, w.storeFatal = st.pending() // before SetSinks: it reads the store's pending sinks
	if err := s.applySinks(sinkCfgs); err != nil {
		return nil, err
	}
	s.router = newRouter(cfg)
	s.recv = relay.NewReceiver(receiverConfig(cfg), sp, s.router, s.engine.Notify, obs, log)
	if st.dir != nil {
		// Postgres mode needs no replay folder: `deadletter replay` writes to the database.
		w.replayer = &relay.Replayer{DL: st.dir, Spool: sp, Router: s.router, Notify: s.engine.Notify, Log: log.With("component", "replay")}
	}
	return w, nil
}

// handlers returns the admin mux (health, readiness, metrics, console, the sink API) and the
// webhook listener's mux: the guarded receiver, and the admin endpoints when there is no
// admin listener of its own.
func (s *server) handlers(cfg *config.Config, w *wiring) (admin, mux *http.ServeMux, err error) {
	sp, log := s.storage.store, s.log
	admin = http.NewServeMux()
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	admin.Handle("GET /readyz", readyHandler(sp.Check, log))
	admin.Handle("GET /metrics", s.metrics.Handler(w.reg))
	if err := s.mountConsole(cfg, admin, w.replayer, log); err != nil {
		return nil, nil, fmt.Errorf("console: %w", err)
	}
	if cfg.Admin.Listen != "" {
		api := &sinkAPI{engine: s.engine, stats: sp.Stats, names: s.sinks.names, token: cfg.Admin.Token, log: log.With("component", "admin"),
			sample: relay.NewLogSampler(relay.DefaultLogEvery)}
		api.mount(admin)
	}
	mux = http.NewServeMux()
	if cfg.Admin.Listen == "" {
		mux.Handle("/healthz", admin)
		mux.Handle("/readyz", admin)
		mux.Handle("/metrics", admin)
	}
	webhook, err := guard(cfg, s.recv, s.metrics, log)
	if err != nil {
		return nil, nil, err
	}
	mux.Handle("/", webhook)
	return admin, mux, nil
}

// startHTTP serves mux on ln (connection-limited, TLS when configured) and admin on aln when
// there is one, and logs the start-up lines. serveErr reports the webhook server's end.
func (s *server) startHTTP(cfg *config.Config, ln, aln net.Listener, admin, mux http.Handler) (certs *serverCerts, serveErr <-chan error, err error) {
	log := s.log
	conns, err := connLimiter(cfg, log, s.metrics)
	if err != nil {
		return nil, nil, err
	}
	ln = conns.Listener(ln)
	s.http = newHTTPServer(cfg, mux, log)
	s.http.ConnState = conns.ConnState
	if certs, err = serverTLS(cfg, log); err != nil {
		return nil, nil, err
	}
	if certs != nil {
		s.http.TLSConfig = certs.config
	}
	if aln != nil {
		s.admin = newHTTPServer(cfg, admin, log)
		go s.admin.Serve(aln)
		log.Info("admin listening", "addr", aln.Addr().String())
	}
	errc := make(chan error, 1)
	useTLS := s.http.TLSConfig != nil // read before Serve starts mutating the server
	go func() {
		if useTLS {
			errc <- s.http.ServeTLS(ln, "", "") // certificates come from the reloader
		} else {
			errc <- s.http.Serve(ln)
		}
	}()
	st := s.storage
	logStartup(log, cfg, s.cfgPath, st.where)
	log.Info("hubrelay listening", "addr", ln.Addr().String(), "tls", useTLS, "paths", s.recv.Paths(),
		"storage", st.where, "sinks", len(cfg.Sinks), "rules", cfg.Rules.Len(), "version", version)
	return certs, errc, nil
}

// loop runs until ctx ends (nil: shut down gracefully) or the server or the store fails (the
// error), reloading on SIGHUP and, with watch, when the config file changes.
func (s *server) loop(ctx, bg context.Context, watch time.Duration, certs *serverCerts, w *wiring, serveErr <-chan error) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	changed := watchFile(bg, s.cfgPath, watch)
	storeUp := w.storeUp
	for {
		select {
		case <-hup:
			certs.reload() // logs its own errors and keeps the old pair
			s.reload()
		case <-changed:
			s.log.Info("config file changed")
			s.reload()
		case <-storeUp:
			storeUp = nil
			if err := s.applySinks(s.sinkCfgs); err != nil {
				s.log.Error("apply sinks once storage is up", "err", err)
			}
		case err := <-w.storeFatal:
			return err
		case err := <-serveErr:
			return fmt.Errorf("http server: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *server) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), s.shutdown)
	defer cancel()
	s.drainCtx(ctx)
}

// stuckGrace is how long shutdown waits, once shutdown_timeout has passed and the deliveries
// in flight have been cancelled, for them to end before it gives up on them.
const stuckGrace = 2 * time.Second

// drainCtx lets in-flight deliveries finish (until ctx ends) before the spool closes. A
// delivery that ignores its cancelled context — a worker stuck in a system call, writing to a
// named pipe nobody reads or to a hung network filesystem — gets stuckGrace more; then
// shutdown goes on without it, and the spool and sinks are not closed (closing would wait for
// the stuck worker). That is safe: every acknowledged change is already in the spool's
// journal, and a delivery not marked done is delivered again after restart, as after kill -9.
func (s *server) drainCtx(ctx context.Context) {
	closed := make(chan error, 1)
	go func() { closed <- s.engine.Close(ctx) }()
	var err error
	select {
	case err = <-closed:
	case <-ctx.Done():
		select {
		case err = <-closed:
		case <-time.After(stuckGrace):
			s.abandoned = true
			s.log.Error("deliveries still running after shutdown_timeout did not end when cancelled; exiting without them (they are delivered again after restart)",
				"shutdown_timeout", s.shutdown, "grace", stuckGrace)
			return
		}
	}
	if err != nil {
		s.log.Warn("deliveries still in flight at shutdown were cancelled; they resume on restart", "err", err)
	}
}

// reload re-reads the config; a valid one replaces apps, rules and sinks, an invalid one is
// reported and the running config stays.
func (s *server) reload() {
	cfg, err := config.Load(s.cfgPath, s.getenv)
	if err != nil {
		s.metrics.Reload(false)
		var probs config.Problems
		if errors.As(err, &probs) {
			for _, p := range probs {
				s.log.Error("config reload rejected", "problem", p.Error())
			}
		} else {
			s.log.Error("config reload rejected", "err", err)
		}
		return
	}
	sinkCfgs, err := s.sinks.update(cfg.Sinks)
	if err != nil {
		s.metrics.Reload(false)
		s.log.Error("config reload rejected", "err", err)
		return
	}
	// Sinks first, then rules: a change routed with the new rules always finds its sink
	// running; one routed with the old rules to a sink just removed is dead-lettered (the
	// engine runs a stand-in for it), to be replayed.
	if err := s.applySinks(sinkCfgs); err != nil {
		s.metrics.Reload(false)
		s.log.Error("config reload: sinks", "err", err)
		return
	}
	s.sinks.closeRetired()
	s.router.Configure(cfg.Rules, rawSinks(cfg), routeOptions(cfg))
	s.recv.Configure(receiverConfig(cfg))
	if s.console != nil {
		s.console.Configure(consoleSetup(cfg))
	}
	s.metrics.Reload(true)
	s.log.Info("config reloaded", "rules", cfg.Rules.Len(), "sinks", len(cfg.Sinks), "apps", len(cfg.Apps))
}

// withRuleErrors adds the built-in sink that dead-letters changes a rule failed to evaluate
// for (relay.RuleErrorSink) to the configured ones.
func withRuleErrors(cfgs []relay.SinkConfig) []relay.SinkConfig {
	return append(cfgs[:len(cfgs):len(cfgs)], relay.RuleErrorSinkConfig())
}

// newRouter returns the router of cfg's rules and routing options.
func newRouter(cfg *config.Config) *relay.Router {
	r := relay.NewRouter(nil, nil)
	r.Configure(cfg.Rules, rawSinks(cfg), routeOptions(cfg))
	return r
}

func routeOptions(cfg *config.Config) relay.RouteOptions {
	opts := relay.RouteOptions{
		Unmatched:        cfg.Routing.UnmatchedSinks,
		IgnoreRuleErrors: cfg.Routing.OnRuleError == config.OnRuleErrorNoMatch,
	}
	for _, sk := range cfg.Sinks {
		if sk.OrderBy != nil {
			if opts.OrderBy == nil {
				opts.OrderBy = map[string]*rules.Key{}
			}
			opts.OrderBy[sk.Name] = sk.OrderBy
		}
	}
	return opts
}

func rawSinks(cfg *config.Config) []string {
	var out []string
	for _, sk := range cfg.Sinks {
		if sk.Type == config.SinkHTTP && sk.Body == config.BodyRaw {
			out = append(out, sk.Name)
		}
	}
	return out
}

func receiverConfig(cfg *config.Config) relay.ReceiverConfig {
	rc := relay.ReceiverConfig{
		MaxBodyBytes: cfg.Server.MaxBodyBytes,
		Limits:       relay.Limits{MaxChanges: cfg.Server.MaxChanges, MaxDepth: cfg.Server.MaxJSONDepth},
		LogPayloads:  cfg.Log.Payloads,
		MaxEventAge:  cfg.Server.MaxEventAge,
	}
	for _, a := range cfg.Apps {
		rc.Apps = append(rc.Apps, relay.App{
			Name:        a.Name,
			Path:        a.Path,
			VerifyToken: a.VerifyToken,
			Verifier:    relay.NewVerifier(a.AppSecrets, a.AllowSHA1),
		})
	}
	return rc
}

// readyHandler answers 200 while check (a tiny spool write) succeeds, else 503: a relay whose
// spool cannot commit would answer Meta 503 anyway, so it should get no traffic.
// Its failures are logged through a LogSampler: a probe every second against a full disk
// must not fill the same disk with log lines.
func readyHandler(check func(context.Context) error, log *slog.Logger) http.Handler {
	sample := relay.NewLogSampler(relay.DefaultLogEvery)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := check(ctx); err != nil {
			sample.Log(log, slog.LevelWarn, "not ready", "not ready", "err", err)
			http.Error(w, "spool not writable", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
}

// sinkDestination describes where a sink delivers, without secrets: an http sink's scheme,
// host and path (no credentials, no query), a Slack webhook's host only (its path is the
// secret), a file sink's path.
func sinkDestination(sk config.Sink) string {
	switch sk.Type {
	case config.SinkFile:
		return sk.Path
	case config.SinkSlack:
		if u, err := url.Parse(sk.WebhookURL); err == nil && u.Host != "" {
			return "slack incoming webhook at " + u.Host
		}
		return "slack incoming webhook"
	default:
		u, err := url.Parse(sk.URL)
		if err != nil || u.Host == "" {
			return "(unparsable url)"
		}
		return u.Scheme + "://" + u.Host + u.Path
	}
}
