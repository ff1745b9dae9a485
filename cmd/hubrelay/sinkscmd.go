package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
	"github.com/hubrelay/hubrelay/storage/postgres"
)

// runSinks lists, pauses and resumes sinks. Where the state goes depends on the engine:
//
//   - Postgres: straight into the database, whether replicas run or not; every replica reads
//     it within storage.postgres.poll_interval.
//   - embedded spool, relay stopped: straight into the spool (its file lock says no relay
//     holds it); the relay starts with it.
//   - embedded spool, relay running (the spool is locked): through the relay's admin API on
//     admin.listen, with admin.token. Without admin.listen the command says so and changes
//     nothing: a spool a relay holds is never opened by a second process.
func runSinks(ctx context.Context, args []string, e env) error {
	sub, err := subcommand("sinks", args, e)
	if err != nil {
		return err
	}
	fs := newFlags("sinks "+sub, e)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	var asJSON *bool
	if sub == "list" {
		asJSON = fs.Bool("json", false, "print the sinks as JSON lines")
	}
	pos, err := parseArgs(fs, args[1:], e)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		return err
	}
	var configured []string
	for _, s := range cfg.Sinks {
		configured = append(configured, s.Name)
	}
	ctl, err := openSinkControl(ctx, cfg)
	if err != nil {
		return err
	}
	defer ctl.close()
	if sub == "list" {
		views, err := ctl.list(ctx, configured)
		if err != nil {
			return err
		}
		printSinks(e.stdout, views, *asJSON)
		return nil
	}
	name := pos[0]
	paused := sub == "pause"
	if !slices.Contains(configured, name) {
		// A sink no longer configured may still be paused: resuming it is allowed.
		views, err := ctl.list(ctx, nil)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(views, func(v sinkView) bool { return v.Name == name && v.Paused }) {
			fmt.Fprintf(e.stderr, "hubrelay sinks %s: no sink named %q in %s", sub, name, *cfgPath)
			if s := suggest(name, configured); s != "" {
				fmt.Fprintf(e.stderr, " (did you mean %q?)", s)
			} else if len(configured) > 0 {
				fmt.Fprintf(e.stderr, " (its sinks: %s)", strings.Join(configured, ", "))
			}
			fmt.Fprintln(e.stderr)
			return errReported
		}
	}
	ch, err := ctl.set(ctx, name, paused, whoAmI(e))
	if err != nil {
		return err
	}
	state := "resumed"
	if ch.Paused {
		state = "paused"
	}
	if !ch.Changed {
		fmt.Fprintf(e.stdout, "sink %s was already %s (since %s, by %s)\n", name, state, fmtSince(ch.Since), orDash(ch.By))
		return nil
	}
	fmt.Fprintf(e.stdout, "sink %s %s %s; %d ready, %d scheduled\n", name, state, ctl.where, ch.Ready, ch.Scheduled)
	return nil
}

// sinkControl is where `hubrelay sinks` reads and writes the state: storage or the API.
type sinkControl struct {
	where string // for the message: "in the spool (...)", "through the running relay"
	store relay.Store
	api   *adminClient
	close func()
}

func (c *sinkControl) list(ctx context.Context, configured []string) ([]sinkView, error) {
	if c.api != nil {
		return c.api.list(ctx)
	}
	states, err := c.store.SinkStates()
	if states == nil && err != nil {
		return nil, err
	}
	stats, serr := c.store.Stats()
	return sinkViews(configured, states, stats), errors.Join(err, serr)
}

func (c *sinkControl) set(ctx context.Context, name string, paused bool, by string) (sinkChange, error) {
	if c.api != nil {
		return c.api.set(ctx, name, paused, by)
	}
	st, changed, err := c.store.SetPaused(name, paused, time.Now(), by)
	if err != nil {
		return sinkChange{}, err
	}
	stats, _ := c.store.Stats()
	v := sinkViews([]string{name}, map[string]relay.SinkState{name: st}, stats)[0]
	return sinkChange{sinkView: v, Changed: changed}, nil
}

// openSinkControl picks where the state goes (see runSinks).
func openSinkControl(ctx context.Context, cfg *config.Config) (*sinkControl, error) {
	if p := cfg.Storage.Postgres; p != nil {
		pg, err := openPostgres(ctx, cfg, slog.New(slog.DiscardHandler), postgres.Open)
		if err != nil {
			return nil, err
		}
		poll := p.PollInterval
		if poll <= 0 {
			poll = postgres.DefaultPollInterval
		}
		return &sinkControl{store: pg, close: func() { pg.Close() },
			where: fmt.Sprintf("in the database (every replica within its poll interval, %s, plus attempts under way)", poll)}, nil
	}
	path := filepath.Join(cfg.Storage.Dir, spoolFile)
	sp, err := embedded.Open(path, spool.Options{OpenTimeout: 200 * time.Millisecond, DedupWindow: cfg.Storage.DedupWindow})
	if errors.Is(err, spool.ErrLocked) {
		if cfg.Admin.Listen == "" {
			return nil, fmt.Errorf("the spool %s is held by a running relay, and admin.listen is not set: set admin.listen (and admin.token) in the config and reload or restart the relay, then run this again; or stop the relay first", path)
		}
		return &sinkControl{api: newAdminClient(cfg.Admin.Listen, cfg.Admin.Token), close: func() {},
			where: "through the running relay (admin api on " + cfg.Admin.Listen + ")"}, nil
	}
	if errors.Is(err, spool.ErrDamaged) {
		return nil, fmt.Errorf("%w; %s (hubrelay spool recover -config FILE)", err, spool.RecoverHint)
	}
	if err != nil {
		return nil, fmt.Errorf("open spool: %w", err)
	}
	return &sinkControl{store: sp, close: func() { sp.Close() },
		where: "in the spool (no relay is running: it starts with this state)"}, nil
}

// adminClient calls the admin API of a running relay.
type adminClient struct {
	base  string
	token string
	hc    *http.Client
}

// newAdminClient reaches listen (admin.listen) on loopback when it names every address.
func newAdminClient(listen, token string) *adminClient {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		host, port = listen, ""
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return &adminClient{base: "http://" + net.JoinHostPort(host, port), token: token, hc: &http.Client{Timeout: 30 * time.Second}}
}

func (c *adminClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("User-Agent", "hubrelay-sinks")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("the spool is held by a running relay, but its admin api does not answer: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return fmt.Errorf("admin api %s %s: status %d: %s", method, path, resp.StatusCode, e.Error)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("admin api %s %s: %w", method, path, err)
	}
	return nil
}

func (c *adminClient) list(ctx context.Context) ([]sinkView, error) {
	var out struct{ Sinks []sinkView }
	err := c.do(ctx, http.MethodGet, "/api/sinks", nil, &out)
	return out.Sinks, err
}

func (c *adminClient) set(ctx context.Context, name string, paused bool, by string) (sinkChange, error) {
	action := "resume"
	if paused {
		action = "pause"
	}
	var out sinkChange
	err := c.do(ctx, http.MethodPost, "/api/sinks/"+url.PathEscape(name)+"/"+action, map[string]string{"by": by}, &out)
	return out, err
}

// whoAmI is "cli: user@host", for the stored state and the relay's log.
func whoAmI(e env) string {
	name := e.getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, _ := os.Hostname()
	return "cli: " + orDash(name) + "@" + orDash(host)
}

func printSinks(w io.Writer, views []sinkView, asJSON bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, v := range views {
			enc.Encode(v)
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SINK\tSTATE\tSINCE\tBY\tREADY\tSCHEDULED\tOLDEST WAITING")
	for _, v := range views {
		state := "delivering"
		if v.Paused {
			state = "paused"
		}
		if !v.Configured {
			state += " (not configured)"
		}
		oldest := "-"
		if !v.OldestWaiting.IsZero() {
			oldest = v.OldestWaiting.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", v.Name, state, fmtSince(v.Since), orDash(v.By), v.Ready, v.Scheduled, oldest)
	}
	tw.Flush()
}

func fmtSince(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
