package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/console"
	"github.com/hubrelay/hubrelay/metrics"
	"github.com/hubrelay/hubrelay/relay"
)

// teeObserver hands the receiver's and the engine's events to the metrics and to the
// console's feed.
type teeObserver struct {
	m *metrics.Metrics
	f *console.Feed
}

func (t teeObserver) Request(app string, o relay.Outcome, d time.Duration) {
	t.m.Request(app, o, d)
	t.f.Request(app, o, d)
}

func (t teeObserver) Change(ev *relay.Event, rt *relay.Route, dup bool) {
	t.m.Change(ev, rt, dup)
	t.f.Change(ev, rt, dup)
}

func (t teeObserver) RuleError(rule string) {
	t.m.RuleError(rule)
	t.f.RuleError(rule)
}

func (t teeObserver) Attempt(sink, outcome string, d time.Duration) { t.m.Attempt(sink, outcome, d) }

func (t teeObserver) Delivered(sink string, attempts int, since time.Duration) {
	t.m.Delivered(sink, attempts, since)
	t.f.Delivered(sink, attempts, since)
}

func (t teeObserver) DeadLettered(sink string) {
	t.m.DeadLettered(sink)
	t.f.DeadLettered(sink)
}

func (t teeObserver) Trace(tr relay.DeliveryTrace) { t.f.Trace(tr) }

func (t teeObserver) RateLimitWait(sink string, d time.Duration) { t.m.RateLimitWait(sink, d) }

// consoleSetup is what the console shows of cfg, with every secret of cfg listed so the
// console can scrub them from error texts.
func consoleSetup(cfg *config.Config) console.Setup {
	s := console.Setup{
		Limits:   relay.Limits{MaxChanges: cfg.Server.MaxChanges, MaxDepth: cfg.Server.MaxJSONDepth},
		Payloads: cfg.Log.Payloads,
	}
	for _, a := range cfg.Apps {
		s.Apps = append(s.Apps, console.App{Name: a.Name, Path: a.Path})
		s.Secrets = append(s.Secrets, a.VerifyToken)
		s.Secrets = append(s.Secrets, a.AppSecrets...)
	}
	for _, sk := range cfg.Sinks {
		s.Sinks = append(s.Sinks, sk.Name)
		s.Secrets = append(s.Secrets, sk.WebhookURL, sk.SignSecret)
		for _, v := range sk.Headers {
			s.Secrets = append(s.Secrets, v)
		}
	}
	if cfg.Admin.Token != "" {
		s.Secrets = append(s.Secrets, cfg.Admin.Token)
	}
	return s
}

// mountConsole adds the console to the admin mux when admin.console is on. rp is the replay
// folder's poller (embedded engine), nil with Postgres.
func (s *server) mountConsole(cfg *config.Config, admin *http.ServeMux, rp *relay.Replayer, log *slog.Logger) error {
	if s.feed == nil {
		return nil
	}
	st := s.storage
	opt := console.Options{
		Token:       cfg.Admin.Token,
		Feed:        s.feed,
		Router:      s.router,
		Stats:       st.store.Stats,
		DeadLetters: st.letters,
		Sinks:       consoleSinks{s.engine},
		Log:         log,
	}
	switch {
	case st.dir != nil && rp != nil:
		// The same path as `hubrelay deadletter replay` beside a running relay: a move into
		// the replay folder, then the poller's step at once instead of within a second.
		opt.LettersAt = st.dir.Path()
		opt.Replay = func(ctx context.Context, ids []string) (int, error) {
			if err := st.dir.QueueReplay(ids...); err != nil {
				return 0, err
			}
			_, err := rp.Once(ctx)
			// The poller may have taken some of them first: count what left the folder.
			pending, perr := st.dir.Pending()
			left := map[string]bool{}
			for _, l := range pending {
				left[l.ID] = true
			}
			n := 0
			for _, id := range ids {
				if !left[id] {
					n++
				}
			}
			return n, errors.Join(err, perr)
		}
	case st.pg != nil:
		opt.LettersAt = "the Postgres database"
		dl := st.pg.DeadLetters()
		opt.Replay = func(ctx context.Context, ids []string) (int, error) {
			n := 0
			for _, id := range ids {
				l, err := dl.Get(id)
				if err != nil {
					return n, err
				}
				if err := dl.Replay(ctx, l, s.router); err != nil {
					return n, err
				}
				s.engine.Notify([]string{l.Sink})
				n++
			}
			return n, nil
		}
	}
	h, err := console.New(opt)
	if err != nil {
		return err
	}
	h.Configure(consoleSetup(cfg))
	s.console = h
	admin.Handle(console.Prefix, h)
	admin.Handle("GET /console", http.RedirectHandler(console.Prefix, http.StatusMovedPermanently))
	return nil
}

// consoleSinks is the console's pause and resume: the engine's, as the admin API's.
type consoleSinks struct{ e *relay.Engine }

func (c consoleSinks) Paused() map[string]bool { return c.e.Paused() }

func (c consoleSinks) Pause(_ context.Context, sink, by string) error {
	_, _, err := c.e.SetPaused(sink, true, by)
	return err
}

func (c consoleSinks) Resume(_ context.Context, sink, by string) error {
	_, _, err := c.e.SetPaused(sink, false, by)
	return err
}
