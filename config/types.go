package config

import (
	"time"

	"github.com/hubrelay/hubrelay/rules"
)

// Config is a loaded, validated hubrelay configuration. Every field has its default applied
// (see Default); durations and sizes are parsed; ${ENV} references and *_file keys are
// resolved; every rule's `when` and every Slack `text` is compiled.
type Config struct {
	// File is the path the config was loaded from.
	File       string
	Server     Server
	Admin      Admin
	Log        Log
	Apps       []App
	Storage    Storage
	DeadLetter DeadLetter
	Sinks      []Sink
	Graph      Graph
	// Rules is the compiled rule set, ready to match changes.
	Rules *rules.Set
	// Routing holds what happens to changes the rules do not route.
	Routing Routing

	where map[string]string
}

// Routing configures what happens to a change no rule matched and to one a rule failed to
// evaluate for.
type Routing struct {
	// UnmatchedSinks get every change no rule matched (a catch-all archive); none by default:
	// such a change is counted and logged.
	UnmatchedSinks []string
	// OnRuleError is dead_letter (default: the change is dead-lettered for the built-in
	// rule-errors sink, to replay once the rule is fixed) or no_match (the rule counts as not
	// matching, as if the change were not for it).
	OnRuleError string
}

// Where returns "FILE:LINE:COL" of the value of the key at path ("server.listen",
// "sinks[0].url") in the file the config was loaded from, or "" when the file does not set
// it (a default applies).
func (c *Config) Where(path string) string {
	return c.where[path]
}

// Server configures the public listener that Meta posts to.
type Server struct {
	Listen            string        // host:port, default 127.0.0.1:8080
	Path              string        // default /webhooks; apps may override with their own path
	MaxBodyBytes      int64         // default 8 MiB
	ReadHeaderTimeout time.Duration // default 10s
	ReadTimeout       time.Duration // default 30s (whole request, body included)
	WriteTimeout      time.Duration // default 30s
	IdleTimeout       time.Duration // default 120s
	ShutdownTimeout   time.Duration // default 30s: drain in-flight requests on SIGTERM
	MaxChanges        int           // cap on changes per POST, default 5000 (Meta sends up to 1000)
	MaxJSONDepth      int           // default 64
	MaxConcurrent     int           // global concurrent requests, default 256
	MaxConcurrentIP   int           // concurrent requests per client IP, default 64
	MaxEventAge       time.Duration // 0 = off: reject notifications whose entry.time is older
	// MaxConnections caps open connections in all (default 4096; lowered at start to what
	// the file descriptor limit allows); MaxConnectionsIP per peer address (default 256;
	// trusted proxies exempt).
	MaxConnections   int
	MaxConnectionsIP int
	// MinBodyRate is the slowest a request body may arrive, in bytes per second, once
	// BodyGrace has passed (default 1 KiB/s after 5s; 0 = off).
	MinBodyRate int64
	BodyGrace   time.Duration
	// MemoryLimit is the Go runtime's soft memory limit (debug.SetMemoryLimit) in bytes; 0
	// (the default) derives one: DefaultMemoryLimit, or twice the live heap plus 16 MiB when
	// that is more, followed as the heap grows; none when GOMEMLIMIT is set.
	MemoryLimit int64
	// MaxBodyBytesInFlight bounds the bytes of all request bodies held at once (default 64 MiB;
	// at least MaxBodyBytes).
	MaxBodyBytesInFlight int64
	TLS                  *TLS          // nil = plain HTTP
	TrustedProxy         *TrustedProxy // nil = off
}

// TLS configures native HTTPS and optional mutual TLS.
type TLS struct {
	CertFile          string
	KeyFile           string
	ClientCAFile      string   // empty = no client certificate required
	ClientCommonNames []string // default [client.webhooks.fbclientcerts.com] when ClientCAFile is set
}

// TrustedProxy accepts the client-certificate subject a load balancer vouches for.
type TrustedProxy struct {
	SubjectHeader string   // default X-Amzn-Mtls-Clientcert-Subject
	CommonNames   []string // default [client.webhooks.fbclientcerts.com]; YAML key common_name (string or list)
	From          []string // CIDRs of the proxies; required, non-empty
}

// Admin configures the optional separate listener for /metrics, /healthz, /readyz and the
// console.
type Admin struct {
	Listen  string // empty = serve them on the main listener
	Console bool   // serve the console at /console/ (needs Listen)
	// Token protects the console (a bearer token, or the password of basic auth); required
	// when Listen is not a loopback address. It is a secret: never log it.
	Token string
}

// Log configures logging.
type Log struct {
	Level    string // debug | info | warn | error, default info
	Format   string // auto (text when standard error is a terminal, else json) | json | text; default auto
	Payloads bool   // log message text and phone numbers; default false
}

// App is one Meta app whose notifications the relay accepts.
type App struct {
	Name        string
	Path        string // default Server.Path; two apps may share a path (tried in order)
	VerifyToken string
	AppSecrets  []string // at least one; several while rotating
	AllowSHA1   bool     // accept the legacy X-Hub-Signature: sha1= header when no sha256 header
	// AppID is the app's ID in Meta's App Dashboard; needed only by `hubrelay subscribe` and
	// its siblings (see graph.go).
	AppID string
	// AccessToken is an optional system-user token for Graph API calls; never log it.
	AccessToken string
}

// Storage configures the spool.
type Storage struct {
	Dir           string        // default ./data
	DedupWindow   time.Duration // default 168h
	MaxBatchDelay time.Duration // extra wait before each group commit, default 0
	// Postgres, when set, replaces the embedded spool (and the dead-letter directory) with a
	// PostgreSQL database that several replicas share.
	Postgres *Postgres
}

// Postgres configures the PostgreSQL storage engine (storage.postgres).
type Postgres struct {
	// URL is a libpq URL or key=value string (url or url_file). It may hold a password: never
	// log it.
	URL string
	// Schema holds hubrelay's tables; default "hubrelay".
	Schema string
	// MaxConns is the connection pool size; default 16.
	MaxConns int
	// Lease is how long a replica's claims outlive its last heartbeat; default 30s.
	Lease time.Duration
	// PollInterval is how often a replica looks for deliveries other replicas accepted;
	// default 500ms.
	PollInterval time.Duration
	// SinkGrace is how long a sink must have been missing from every replica's config before
	// a replica that lacks it dead-letters its deliveries as not configured; default
	// DefaultSinkGrace. A rolling config change that adds or removes a sink finishes within it.
	SinkGrace time.Duration
}

// DefaultMemoryLimit is the floor of the soft memory limit the relay derives when
// server.memory_limit is not set: with the spool's pages bounded (8 MiB) and the binary's
// own (~20 MiB), it keeps a relay with a small heap under 100 MB resident.
const DefaultMemoryLimit = 64 << 20

// DefaultSinkGrace is the default of storage.postgres.sink_grace.
const DefaultSinkGrace = 10 * time.Minute

// DeadLetter configures where abandoned deliveries are written.
type DeadLetter struct {
	Dir string // default <storage.dir>/dead-letter
}

// Sink types.
const (
	SinkHTTP  = "http"
	SinkSlack = "slack"
	SinkFile  = "file"
)

// Sink is one configured destination. Which fields apply depends on Type.
type Sink struct {
	Name        string
	Type        string // http | slack | file
	Concurrency int    // parallel deliveries, default 4 (file: 1)
	Retry       Retry
	Batch       Batch
	Rate        Rate
	// OrderBy is the compiled order_by expression: changes with the same key are delivered
	// one at a time, in acceptance order; nil = no ordering.
	OrderBy *rules.Key

	// http
	URL        string
	Method     string            // default POST
	Headers    map[string]string // values may hold secrets: never log them
	Timeout    time.Duration     // per attempt, default 10s
	Body       string            // envelope (default) | raw
	SignSecret string            // adds X-Hubrelay-Signature-256 when set

	// slack (Timeout applies too)
	WebhookURL string
	Text       *rules.Template // compiled `text` expression; default a short summary
	Blocks     *rules.Template // optional compiled `blocks` expression returning a list

	// file
	Path     string
	MaxBytes int64 // rotate when the file would exceed this; 0 = never, default 100 MiB
	MaxFiles int   // rotated files to keep, default 10
}

// Retry is a sink's retry budget.
type Retry struct {
	MaxAttempts int           // total attempts before dead-lettering, default 10
	MinBackoff  time.Duration // default 1s
	MaxBackoff  time.Duration // default 5m
	MaxAge      time.Duration // give up when the change is older than this, default 24h
	InProcess   int           // quick in-process retries inside one attempt, default 2
}

// Rate limits a sink's requests (a batch is one request) across its workers. Zero = no limit.
type Rate struct {
	PerSecond float64 // sustained requests per second
	Burst     int     // requests that may go at once after a quiet spell, default max(1, PerSecond)
}

// Batch groups several changes into one request (http) or one write (file). Zero = off.
type Batch struct {
	MaxChanges int
	MaxBytes   int64
	MaxWait    time.Duration
}
