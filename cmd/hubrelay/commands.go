package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/relay"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func runVersion(args []string, e env) error {
	if _, err := parseArgs(newFlags("version", e), args, e); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "hubrelay %s\n", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Fprintf(e.stdout, "go: %s\nmodule: %s %s\n", bi.GoVersion, bi.Main.Path, bi.Main.Version)
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision", "vcs.time", "vcs.modified", "GOOS", "GOARCH", "CGO_ENABLED":
				fmt.Fprintf(e.stdout, "%s: %s\n", s.Key, s.Value)
			}
		}
	}
	return nil
}

// runCheck validates a config: every problem on its own line as FILE:LINE:COL: path: what to
// fix, exit 1 if any; a one-line summary and exit 0 when valid.
func runCheck(args []string, e env) error {
	fs := newFlags("check", e)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	if _, err := parseArgs(fs, args, e); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath, env{getenv: e.getenv, stdout: e.stdout, stderr: e.stdout})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: ok: %d app(s), %d sink(s), %d rule(s)\n", *cfgPath, len(cfg.Apps), len(cfg.Sinks), cfg.Rules.Len())
	return nil
}

// routeLine is one line of `hubrelay route -json`.
type routeLine struct {
	ID      string   `json:"id"`
	App     string   `json:"app"`
	Object  string   `json:"object"`
	Field   string   `json:"field"`
	Verb    *string  `json:"verb"`
	EntryID string   `json:"entry_id"`
	Source  string   `json:"source"`
	Rules   []string `json:"rules"`
	Sinks   []string `json:"sinks"`
	// RuleErrors lists the rules that failed to evaluate, with the class of the error.
	RuleErrors []relay.RuleError `json:"rule_errors,omitempty"`
}

// runRoute decodes a payload file and prints, for each change, the rules and sinks it matches.
// It delivers nothing and touches no spool.
func runRoute(args []string, e env) error {
	fs := newFlags("route", e)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	asJSON := fs.Bool("json", false, "one JSON object per change per line")
	appName := fs.String("app", "", "app the payload is for (default: the first app)")
	pos, err := parseArgs(fs, args, e)
	if err != nil {
		return err
	}
	payload := pos[0]
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		return err
	}
	app := ""
	for _, a := range cfg.Apps {
		if *appName == "" || a.Name == *appName {
			app = a.Name
			break
		}
	}
	if app == "" {
		return fmt.Errorf("no app named %q in %s", *appName, *cfgPath)
	}
	body, err := readPayload(payload, e)
	if err != nil {
		return err
	}
	events, err := relay.Decode(body, app, time.Now(), relay.Limits{MaxChanges: cfg.Server.MaxChanges, MaxDepth: cfg.Server.MaxJSONDepth})
	if err != nil {
		return fmt.Errorf("decode %s: %w", payload, err)
	}
	router := newRouter(cfg)
	enc := json.NewEncoder(e.stdout)
	failed := 0
	for i := range events {
		ev := &events[i]
		ev.ID = relay.Key(ev)
		rt := router.Route(ev, func(rule string, err error) {
			// A dry run on the operator's own file: the full error helps fix the rule.
			fmt.Fprintf(e.stderr, "rule %s: evaluation failed: %v\n", rule, err)
		})
		failed += len(rt.Errors)
		sinks := append(append([]string{}, rt.Sinks...), rt.Raw...)
		if *asJSON {
			line := routeLine{ID: ev.ID, App: ev.App, Object: ev.Object, Field: ev.Field, EntryID: ev.Entry.ID,
				Source: ev.Source.String(), Rules: nonNil(rt.Rules), Sinks: nonNil(sinks), RuleErrors: rt.Errors}
			if ev.Verb != "" {
				line.Verb = &ev.Verb
			}
			if err := enc.Encode(line); err != nil {
				return err
			}
			continue
		}
		verb := ev.Verb
		if verb == "" {
			verb = "-"
		}
		fmt.Fprintf(e.stdout, "%s %s %s entry=%s id=%s rules=[%s] sinks=[%s]\n", ev.Object, ev.Field, verb,
			ev.Entry.ID, ev.ID, strings.Join(rt.Rules, ","), strings.Join(sinks, ","))
	}
	if !*asJSON {
		fmt.Fprintf(e.stderr, "%d change(s)\n", len(events))
	}
	if failed > 0 {
		fmt.Fprintf(e.stderr, "%d rule evaluation(s) failed: serve would dead-letter those changes for the %s sink until the rule is fixed\n", failed, relay.RuleErrorSink)
		return fmt.Errorf("%w: %d rule evaluation(s) failed", errReported, failed)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// readPayload reads a payload file, "-" for standard input.
func readPayload(path string, e env) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(e.stdin)
	}
	return os.ReadFile(path)
}

// runSend signs a payload's exact bytes as Meta does and POSTs it, printing status and body.
func runSend(ctx context.Context, args []string, e env) error {
	fs := newFlags("send", e)
	url := fs.String("url", "", "webhook `URL` of the relay, e.g. http://127.0.0.1:8080/webhooks")
	secret := fs.String("secret", "", "app `secret` to sign with (visible in ps: prefer -secret-env)")
	secretEnv := fs.String("secret-env", "HUBRELAY_APP_SECRET", "environment `variable` holding the app secret, used when -secret is empty")
	sha1 := fs.Bool("sha1", false, "also send the legacy X-Hub-Signature: sha1= header")
	unique := fs.Bool("unique", false, "make the payload's ids new (message ids, mids, entry ids get a random suffix) so the relay does not drop it as a repeat")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	pos, err := parseArgs(fs, args, e)
	if err != nil {
		return err
	}
	if *url == "" {
		fmt.Fprintln(e.stderr, "hubrelay send: missing -url (the relay's webhook URL, e.g. http://127.0.0.1:8080/webhooks)")
		lookup("send").shortUsage(e.stderr)
		return errUsage
	}
	key := *secret
	if key == "" {
		key = e.getenv(*secretEnv)
	}
	if key == "" {
		return fmt.Errorf("no app secret: pass -secret or set %s", *secretEnv)
	}
	body, err := readPayload(pos[0], e)
	if err != nil {
		return err
	}
	if *unique {
		if body, err = uniquePayload(body); err != nil {
			return fmt.Errorf("-unique %s: %w", pos[0], err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hubrelay-send")
	req.Header.Set("X-Hub-Signature-256", relay.Sign(body, key))
	if *sha1 {
		req.Header.Set("X-Hub-Signature", relay.SignSHA1(body, key))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	fmt.Fprintf(e.stdout, "%s\n", resp.Status)
	if len(respBody) > 0 {
		fmt.Fprintf(e.stdout, "%s\n", bytes.TrimRight(respBody, "\n"))
	}
	if resp.StatusCode == http.StatusOK {
		var ack struct{ Changes, New, Duplicates int }
		if json.Unmarshal(respBody, &ack) == nil && ack.Duplicates > 0 {
			fmt.Fprintf(e.stdout, "%d of %d change(s) already seen within storage.dedup_window: acknowledged, not delivered again (send -unique makes the ids new)\n",
				ack.Duplicates, ack.Changes)
		}
		return nil
	}
	if hint := sendHint(resp.StatusCode); hint != "" {
		fmt.Fprintln(e.stderr, "hint: "+hint)
	}
	return fmt.Errorf("%w: status %d", errReported, resp.StatusCode)
}

// sendHint explains a refusal of send's request.
func sendHint(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "the signature did not match: the secret must be one of apps[].app_secrets of the app on this path (-secret or $HUBRELAY_APP_SECRET), and the file is sent byte for byte"
	case http.StatusForbidden:
		return "refused by the relay's client checks (mutual TLS or trusted_proxy), not by the signature"
	case http.StatusNotFound:
		return "no app on this path: the URL's path must be server.path or an apps[].path (the relay logs the valid paths)"
	case http.StatusMethodNotAllowed:
		return "the relay answers GET (verification) and POST (notifications) only"
	case http.StatusBadRequest:
		return "the body is not a Meta notification (object + entry array), or too old (server.max_event_age)"
	case http.StatusRequestEntityTooLarge:
		return "over server.max_body_bytes or server.max_changes"
	}
	return ""
}

// uniquePayload returns the payload with a random suffix on every "id" and "mid" string, and
// a hubrelay_unique key in every change value, so that its changes get new dedup keys (for trying things: a re-sent
// sample is otherwise a repeat). The JSON is re-encoded.
func uniquePayload(body []byte) ([]byte, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("parse json: %w", err)
	}
	var b [6]byte
	rand.Read(b[:])
	suffix := "-" + hex.EncodeToString(b[:])
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, val := range x {
				if s, ok := val.(string); ok && (k == "id" || k == "mid") {
					x[k] = s + suffix
					continue
				}
				if m, ok := val.(map[string]any); ok && k == "value" {
					m["hubrelay_unique"] = suffix[1:] // a new hash for changes without natural ids
				}
				walk(val)
			}
		case []any:
			for _, val := range x {
				walk(val)
			}
		}
	}
	walk(v)
	return json.Marshal(v)
}
