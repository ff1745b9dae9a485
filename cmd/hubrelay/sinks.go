package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/rules"
	"github.com/hubrelay/hubrelay/sinks/file"
	"github.com/hubrelay/hubrelay/sinks/httpsink"
	"github.com/hubrelay/hubrelay/sinks/slack"
)

// sinkSet builds sinks from config and keeps them across reloads: a sink whose configuration did
// not change is reused as is, so its queue keeps running undisturbed.
type sinkSet struct {
	log     *slog.Logger
	mu      sync.Mutex
	current map[string]builtSink
	retired []relay.Sink
}

type builtSink struct {
	fingerprint string
	cfg         relay.SinkConfig
}

func newSinkSet(log *slog.Logger) *sinkSet {
	return &sinkSet{log: log, current: map[string]builtSink{}}
}

// update returns the engine configuration for cfgs, building only new or changed sinks.
func (ss *sinkSet) update(cfgs []config.Sink) ([]relay.SinkConfig, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	next := map[string]builtSink{}
	out := make([]relay.SinkConfig, 0, len(cfgs))
	for _, c := range cfgs {
		fp := fingerprint(c)
		if old, ok := ss.current[c.Name]; ok && old.fingerprint == fp {
			next[c.Name] = old
			out = append(out, old.cfg)
			continue
		}
		sk, err := buildSink(c, ss.log)
		if err != nil {
			for name, b := range next { // close what this failed update built
				if ss.current[name].cfg.Sink != b.cfg.Sink {
					ss.closeSink(b.cfg.Sink)
				}
			}
			return nil, fmt.Errorf("sink %w", err) // the sink packages' errors start with the sink's name
		}
		b := builtSink{fingerprint: fp, cfg: relay.SinkConfig{
			Sink:        sk,
			Concurrency: c.Concurrency,
			Retry:       retryPolicy(c.Retry),
			Batch: relay.BatchPolicy{
				MaxChanges: c.Batch.MaxChanges,
				MaxBytes:   int(c.Batch.MaxBytes),
				MaxWait:    c.Batch.MaxWait,
			},
			Rate: relay.RatePolicy{PerSecond: c.Rate.PerSecond, Burst: c.Rate.Burst},
		}}
		next[c.Name] = b
		out = append(out, b.cfg)
	}
	for name, old := range ss.current {
		if n, ok := next[name]; !ok || n.cfg.Sink != old.cfg.Sink {
			ss.retired = append(ss.retired, old.cfg.Sink)
		}
	}
	ss.current = next
	return out, nil
}

// closeRetired closes sinks replaced by the last update (after the engine stopped using them).
func (ss *sinkSet) closeRetired() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, s := range ss.retired {
		ss.closeSink(s)
	}
	ss.retired = nil
}

// names lists the configured sinks (for metrics).
func (ss *sinkSet) names() []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]string, 0, len(ss.current))
	for n := range ss.current {
		out = append(out, n)
	}
	return out
}

func (ss *sinkSet) closeAll() {
	ss.closeRetired()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, b := range ss.current {
		ss.closeSink(b.cfg.Sink)
	}
	ss.current = map[string]builtSink{}
}

// closeTimeout bounds how long closing one sink may take (a file sink on a hung disk).
const closeTimeout = 10 * time.Second

// closeSink closes a replaced, removed or shut-down sink that implements relay.SinkCloser.
func (ss *sinkSet) closeSink(s relay.Sink) {
	if c, ok := s.(relay.SinkCloser); ok {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			ss.log.Warn("close sink", "sink", s.Name(), "err", err)
		}
	}
}

// fingerprint identifies a sink configuration; compiled templates count by their source.
func fingerprint(c config.Sink) string {
	text, blocks := "", ""
	if c.Text != nil {
		text = c.Text.Source()
	}
	if c.Blocks != nil {
		blocks = c.Blocks.Source()
	}
	c.Text, c.Blocks = nil, nil
	return fmt.Sprintf("%#v|%q|%q", c, text, blocks)
}

func buildSink(c config.Sink, log *slog.Logger) (relay.Sink, error) {
	l := log.With("component", "sink") // each sink adds its own name
	quickLo, quickHi := retryPolicy(c.Retry).Quick()
	switch c.Type {
	case config.SinkHTTP:
		return httpsink.New(httpsink.Options{
			Name: c.Name, URL: c.URL, Method: c.Method, Headers: c.Headers, Timeout: c.Timeout,
			Raw: c.Body == config.BodyRaw, SignSecret: c.SignSecret,
			InProcessRetries: c.Retry.InProcess, MinBackoff: quickLo, MaxBackoff: quickHi,
			Logger: l,
		})
	case config.SinkSlack:
		o := slack.Options{
			Name: c.Name, WebhookURL: c.WebhookURL, Timeout: c.Timeout,
			InProcessRetries: c.Retry.InProcess, MinBackoff: quickLo, MaxBackoff: quickHi,
			Logger: l,
		}
		if c.Text != nil {
			t := c.Text
			o.Text = func(ev *relay.Event) (string, error) { return t.String(ruleEnv(ev)) }
		}
		if c.Blocks != nil {
			t := c.Blocks
			o.Blocks = func(ev *relay.Event) (any, error) { return t.Eval(ruleEnv(ev)) }
		}
		return slack.New(o)
	case config.SinkFile:
		return file.New(file.Options{Name: c.Name, Path: c.Path, MaxBytes: c.MaxBytes, MaxFiles: c.MaxFiles, Logger: l})
	}
	return nil, fmt.Errorf("unknown sink type %q", c.Type)
}

// retryPolicy is a sink's retry configuration as relay's policy (relay/retry.go), which also
// bounds the sink's quick retries inside one attempt (RetryPolicy.Quick).
func retryPolicy(r config.Retry) relay.RetryPolicy {
	return relay.RetryPolicy{MaxAttempts: r.MaxAttempts, MinBackoff: r.MinBackoff, MaxBackoff: r.MaxBackoff, MaxAge: r.MaxAge}
}

// ruleEnv is the expression environment of one change, as templates see it.
func ruleEnv(ev *relay.Event) *rules.Env {
	return relay.RuleEnv(ev, true)
}
