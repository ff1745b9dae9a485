package config

import (
	"path/filepath"
	"time"

	"github.com/hubrelay/hubrelay/rules"
)

// Defaults that have no better home than a constant.
const (
	// DefaultClientCommonName is the common name of the client certificate Meta presents
	// for webhooks over mutual TLS.
	DefaultClientCommonName = "client.webhooks.fbclientcerts.com"
	// DefaultSubjectHeader is the header AWS load balancers use to pass on the subject of a
	// verified client certificate.
	DefaultSubjectHeader = "X-Amzn-Mtls-Clientcert-Subject"
	// DefaultSlackText is the Slack `text` expression used when a Slack sink sets none.
	DefaultSlackText = `object + "/" + field + " " + verb + " entry " + entry.id`
)

// Default returns the configuration used for every key a file leaves out. It is the one
// place defaults come from; DefaultSink gives the defaults of one sink. Relative paths are
// relative to the current directory of the process.
func Default() Config {
	const storageDir = "./data"
	return Config{
		Server: Server{
			Listen:               "127.0.0.1:8080",
			Path:                 "/webhooks",
			MaxBodyBytes:         8 << 20,
			ReadHeaderTimeout:    10 * time.Second,
			ReadTimeout:          30 * time.Second,
			WriteTimeout:         30 * time.Second,
			IdleTimeout:          120 * time.Second,
			ShutdownTimeout:      30 * time.Second,
			MaxChanges:           5000,
			MaxJSONDepth:         64,
			MaxConcurrent:        256,
			MaxConcurrentIP:      64,
			MaxConnections:       4096,
			MaxConnectionsIP:     256,
			MinBodyRate:          1 << 10,
			BodyGrace:            5 * time.Second,
			MaxBodyBytesInFlight: 64 << 20,
		},
		Log: Log{Level: "info", Format: "auto"},
		Storage: Storage{
			Dir:           storageDir,
			DedupWindow:   168 * time.Hour,
			MaxBatchDelay: 0, // commit as soon as the previous commit ends
		},
		DeadLetter: DeadLetter{Dir: defaultDeadLetterDir(storageDir)},
		Graph:      defaultGraph(),
		Rules:      emptyRules,
		Routing:    Routing{OnRuleError: OnRuleErrorDeadLetter},
	}
}

// defaultDeadLetterDir returns the dead-letter directory used when only storage.dir is set.
func defaultDeadLetterDir(storageDir string) string {
	return filepath.Join(storageDir, "dead-letter")
}

// DefaultSink returns the defaults of a sink of the given type (SinkHTTP, SinkSlack or
// SinkFile). A Slack sink's default Text is the compiled DefaultSlackText.
func DefaultSink(typ string) Sink {
	s := Sink{
		Type:        typ,
		Concurrency: 4,
		Retry: Retry{
			MaxAttempts: 10,
			MinBackoff:  time.Second,
			MaxBackoff:  5 * time.Minute,
			MaxAge:      24 * time.Hour,
			InProcess:   2,
		},
	}
	switch typ {
	case SinkHTTP:
		s.Method = "POST"
		s.Timeout = 10 * time.Second
		s.Body = BodyEnvelope
	case SinkSlack:
		s.Timeout = 10 * time.Second
		s.Text = defaultSlackText
	case SinkFile:
		s.Concurrency = 1
		s.MaxBytes = 100 << 20
		s.MaxFiles = 10
	}
	return s
}

// HTTP sink bodies.
const (
	BodyEnvelope = "envelope" // the change wrapped in a Meta-shaped JSON envelope (default)
	BodyRaw      = "raw"      // the change's raw JSON value, byte for byte
)

var (
	emptyRules       = mustRules(rules.Compile(nil))
	defaultSlackText = mustTemplate(rules.CompileText(DefaultSlackText))
)

func mustRules(s *rules.Set, err error) *rules.Set {
	if err != nil {
		panic(err)
	}
	return s
}

func mustTemplate(t *rules.Template, err error) *rules.Template {
	if err != nil {
		panic(err)
	}
	return t
}
