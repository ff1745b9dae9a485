package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/graph"
)

// The commands that take an app live with Meta: subscribe, subscriptions and unsubscribe.
// They call the Graph API (graph.base_url, graph.version) with the app's tokens:
//   - /{app-id}/subscriptions takes an app access token, app_id|app_secret (every secret of
//     app_secrets is tried in order while Meta answers 190, so a rotation in progress works);
//   - /{waba-id}/subscribed_apps takes apps[].access_token (a system-user token with
//     whatsapp_business_management), or the app token when there is none.

const (
	// callbackCheckTimeout bounds the verification GET subscribe sends before calling Meta.
	callbackCheckTimeout = 10 * time.Second
	// graphCommandTimeout bounds a whole command by default (retries included).
	graphCommandTimeout = 2 * time.Minute
	// objectWABA is the webhook object of WhatsApp Business Accounts.
	objectWABA = "whatsapp_business_account"
)

// graphCmd is what every Graph command shares: the config, the chosen app, a client, and
// the secrets it must never print.
type graphCmd struct {
	cfg    *config.Config
	app    config.App
	client *graph.Client
	e      env
	scrub  *strings.Replacer
	// triedSecrets is how many app secrets the last withAppToken tried.
	triedSecrets int
}

// graphFlags are the flags every Graph command has.
type graphFlags struct {
	cfgPath *string
	appName *string
	timeout *time.Duration
	verbose *bool
}

func addGraphFlags(fs *flag.FlagSet) graphFlags {
	return graphFlags{
		cfgPath: fs.String("config", "hubrelay.yaml", "config `file`"),
		appName: fs.String("app", "", "app `name` in the config (default: the only app)"),
		timeout: fs.Duration("timeout", graphCommandTimeout, "give up after this long, retries included"),
		verbose: fs.Bool("v", false, "log every Graph API call (method, path, status; never a token)"),
	}
}

// open loads the config, picks the app and builds the Graph client.
func (gf graphFlags) open(e env) (*graphCmd, error) {
	cfg, err := loadConfig(*gf.cfgPath, e)
	if err != nil {
		return nil, err
	}
	var app *config.App
	for i := range cfg.Apps {
		if cfg.Apps[i].Name == *gf.appName || (*gf.appName == "" && len(cfg.Apps) == 1) {
			app = &cfg.Apps[i]
			break
		}
	}
	if app == nil {
		names := make([]string, len(cfg.Apps))
		for i, a := range cfg.Apps {
			names[i] = a.Name
		}
		if *gf.appName == "" {
			fmt.Fprintf(e.stderr, "%s has %d apps (%s): pass -app NAME\n", *gf.cfgPath, len(cfg.Apps), strings.Join(names, ", "))
			return nil, errUsage
		}
		return nil, fmt.Errorf("no app named %q in %s (apps: %s)", *gf.appName, *gf.cfgPath, strings.Join(names, ", "))
	}
	level := slog.LevelWarn
	if *gf.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: dropTime}))
	client, err := graph.New(graph.Options{
		BaseURL: cfg.Graph.BaseURL, Version: cfg.Graph.Version, Timeout: cfg.Graph.Timeout,
		MaxAttempts: cfg.Graph.MaxAttempts, MinBackoff: cfg.Graph.MinBackoff, MaxBackoff: cfg.Graph.MaxBackoff,
		Logger: log, UserAgent: "hubrelay/" + version,
	})
	if err != nil {
		return nil, err
	}
	secrets := append([]string{app.VerifyToken, app.AccessToken}, app.AppSecrets...)
	return &graphCmd{cfg: cfg, app: *app, client: client, e: e, scrub: secretScrubber(secrets)}, nil
}

// dropTime removes the time from log lines: these are a command's progress, not a log.
func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// secretScrubber replaces every secret (at least 4 bytes) with REDACTED.
func secretScrubber(secrets []string) *strings.Replacer {
	var args []string
	for _, s := range secrets {
		if len(s) >= 4 {
			args = append(args, s, "REDACTED")
		}
	}
	return strings.NewReplacer(args...)
}

// needAppID reports the missing app_id in words.
func (g *graphCmd) needAppID() error {
	if g.app.AppID == "" {
		return fmt.Errorf("app %s has no app_id: add apps[].app_id, the App ID from the App Dashboard (Settings > Basic)", g.app.Name)
	}
	return nil
}

// withAppToken runs call with the app access token made of app_id and each app secret in
// turn, moving on only while Meta answers 190 (invalid token), and says when a later secret
// worked: during a rotation the current secret should come first.
func (g *graphCmd) withAppToken(call func(graph.Token) error) error {
	if len(g.app.AppSecrets) == 0 {
		return fmt.Errorf("app %s has no app secret to build the app access token from", g.app.Name)
	}
	var err error
	for i, secret := range g.app.AppSecrets {
		err = call(graph.AppToken(g.app.AppID, secret))
		var ge *graph.Error
		if !errors.As(err, &ge) || ge.Code != graph.CodeInvalidToken || i == len(g.app.AppSecrets)-1 {
			if err == nil && i > 0 {
				refused := "app_secrets[0]"
				if i > 1 {
					refused = fmt.Sprintf("app_secrets[0] to [%d]", i-1)
				}
				fmt.Fprintf(g.e.stdout, "note: Meta refused %s as app secret; app_secrets[%d] worked: list the current secret first\n", refused, i)
			}
			g.triedSecrets = i + 1
			return err
		}
	}
	return err
}

// wabaToken is the token for /{waba-id}/subscribed_apps.
func (g *graphCmd) wabaToken() graph.Token {
	secret := ""
	if len(g.app.AppSecrets) > 0 {
		secret = g.app.AppSecrets[0]
	}
	if g.app.AccessToken != "" {
		return graph.UserToken(g.app.AccessToken, secret)
	}
	return graph.AppToken(g.app.AppID, secret)
}

// metaRefused prints Meta's error in words on stderr and returns errReported; any other
// error is returned scrubbed.
func (g *graphCmd) metaRefused(what string, err error) error {
	var ge *graph.Error
	if !errors.As(err, &ge) {
		return errors.New(g.scrub.Replace(err.Error()))
	}
	w := g.e.stderr
	if ge.Status == 0 && ge.Code == 0 {
		fmt.Fprintf(w, "could not %s (%s %s): %s\n", what, ge.Method, ge.Path, g.scrub.Replace(ge.Cause.Error()))
		fmt.Fprintf(w, "  what to do:    %s\n", g.hint(ge))
		return errReported
	}
	fmt.Fprintf(w, "Meta refused to %s (%s %s):\n", what, ge.Method, ge.Path)
	msg := ge.Message
	if msg == "" && ge.Cause != nil {
		msg = ge.Cause.Error()
	}
	row := func(name, v string) {
		if v == "" || v == "0" {
			v = "-"
		}
		fmt.Fprintf(w, "  %-14s %s\n", name+":", g.scrub.Replace(v))
	}
	row("message", msg)
	if ge.UserTitle != "" || ge.UserMessage != "" {
		row("for people", strings.TrimSpace(ge.UserTitle+": "+ge.UserMessage))
	}
	row("type", ge.Type)
	row("code", fmt.Sprint(ge.Code))
	row("error_subcode", fmt.Sprint(ge.Subcode))
	row("fbtrace_id", ge.FBTraceID)
	row("HTTP status", fmt.Sprint(ge.Status))
	if ge.Attempts > 1 {
		row("attempts", fmt.Sprint(ge.Attempts))
	}
	row("what to do", g.hint(ge))
	return errReported
}

// hint says what to do about a Graph error.
func (g *graphCmd) hint(e *graph.Error) string {
	wabaCall := strings.HasSuffix(e.Path, "/subscribed_apps")
	switch {
	case e.Status == 0 && e.Code == 0:
		return fmt.Sprintf("check that graph.base_url (%s) is reachable from here", g.cfg.Graph.BaseURL)
	case e.Code == graph.CodeInvalidToken && wabaCall && g.app.AccessToken != "":
		return "Meta does not accept apps[].access_token (invalid or expired): create a new system-user token in Business Settings > System users"
	case e.Code == graph.CodeInvalidToken:
		tried := ""
		if g.triedSecrets > 1 {
			tried = fmt.Sprintf(" (all %d app secrets were tried)", g.triedSecrets)
		}
		return "Meta does not accept the app access token app_id|app_secret" + tried + ": check apps[].app_id and apps[].app_secrets against the App Dashboard (Settings > Basic)"
	case e.Code == graph.CodeCallbackFailed:
		return "Meta's own verification GET did not get the challenge back: the callback must be reachable from the internet over https with a certificate from a public CA, and the relay there must run with this app's verify token"
	case e.Code == graph.CodePermission:
		return "the token's app may not do this: is apps[].app_id the app the secret belongs to?"
	case e.Code == 15:
		return "this call needs the app access token (app_id|app_secret), not a user token"
	case e.Code >= graph.CodePermissions && e.Code < 300 && wabaCall:
		return "subscribing an app to a WhatsApp Business Account needs a system-user token with whatsapp_business_management that has the account as an asset: set apps[].access_token (or access_token_file)"
	case e.Code >= graph.CodePermissions && e.Code < 300:
		return "the token lacks a permission this call needs (see the message)"
	case e.RateLimited() && e.RegainAccess > 0:
		return fmt.Sprintf("Meta throttled the app and says it regains access in about %s: run the command again then", e.RegainAccess.Round(time.Minute))
	case e.RateLimited():
		return fmt.Sprintf("Meta throttled the app and %d attempt(s) were not enough: wait a while and run the command again (graph.max_attempts and graph.max_backoff set how long hubrelay waits)", e.Attempts)
	case e.Code == graph.CodeInvalidParameter && e.Subcode == 33:
		return "Meta knows no such object, or the token may not see it: check the ID (app_id, -waba)"
	case e.Code == graph.CodeInvalidParameter:
		return "Meta refused a parameter: check -object, -fields and -callback against Meta's webhooks reference"
	case e.Status >= 500 || e.Retryable():
		return "the Graph API failed on its side: run the command again later"
	}
	return "see Meta's message; give Meta's support the fbtrace_id"
}

// runSubscribe subscribes the app to an object's webhooks after checking the callback
// itself, and with -waba also subscribes the app to a WhatsApp Business Account.
func runSubscribe(ctx context.Context, args []string, e env) error {
	fs := newFlags("subscribe", e)
	gf := addGraphFlags(fs)
	object := fs.String("object", "", "webhook `object`: page, user, permissions, instagram, whatsapp_business_account, ...")
	fieldList := fs.String("fields", "", "comma-separated `fields` to subscribe to, e.g. feed,photos")
	callback := fs.String("callback", "", "public callback `URL` Meta will call, e.g. https://relay.example.com/webhooks")
	includeValues := fs.Bool("include-values", false, "ask for the changed values (changes[]), not only changed_fields")
	insecure := fs.Bool("insecure-callback", false, "allow a plain http callback (to try things locally; Meta itself requires https)")
	skipPath := fs.Bool("skip-path-check", false, "do not require the callback path to be one the app serves (a proxy rewrites it)")
	skipVerify := fs.Bool("skip-verify-check", false, "do not send the verification GET before calling Meta")
	waba := fs.String("waba", "", "also subscribe the app to this WhatsApp Business Account `ID` (object whatsapp_business_account)")
	override := fs.Bool("override-callback", false, "with -waba: send this account's webhooks to -callback (override_callback_uri) instead of the app's callback")
	if _, err := parseArgs(fs, args, e); err != nil {
		return err
	}
	fields := splitList(*fieldList)
	switch {
	case fs.NArg() != 0 || *object == "" || len(fields) == 0 || *callback == "":
		fmt.Fprintln(e.stderr, "usage: hubrelay subscribe -config FILE [-app NAME] -object OBJECT -fields F1,F2 -callback https://HOST/PATH [-include-values] [-waba ID [-override-callback]]")
		return errUsage
	case *waba != "" && *object != objectWABA:
		fmt.Fprintf(e.stderr, "hubrelay subscribe: -waba needs -object %s (got %q)\n", objectWABA, *object)
		return errUsage
	case *override && *waba == "":
		fmt.Fprintln(e.stderr, "hubrelay subscribe: -override-callback needs -waba ID")
		return errUsage
	}
	g, err := gf.open(e)
	if err != nil {
		return err
	}
	if err := g.needAppID(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *gf.timeout)
	defer cancel()
	if err := g.checkCallback(ctx, *callback, *insecure, *skipPath, *skipVerify); err != nil {
		return err
	}
	for _, f := range fields {
		if !routed(g.cfg.Rules.Selectors(), *object, f) {
			fmt.Fprintf(e.stdout, "note: no rule routes %s field %s: its changes will be accepted and logged as unmatched\n", *object, f)
		}
	}
	sub := graph.Subscribe{Object: *object, CallbackURL: *callback, Fields: fields, IncludeValues: *includeValues, VerifyToken: g.app.VerifyToken}
	err = g.withAppToken(func(tok graph.Token) error { return g.client.Subscribe(ctx, tok, g.app.AppID, sub) })
	if err != nil {
		return g.metaRefused("subscribe the app", err)
	}
	fmt.Fprintf(e.stdout, "subscribed app %s (%s) to %s fields %s, include_values %t, Graph API %s: Meta verified %s\n",
		g.app.Name, g.app.AppID, *object, strings.Join(fields, ", "), *includeValues, g.client.Version(), *callback)
	if *waba == "" {
		return nil
	}
	overrideURI := ""
	if *override {
		overrideURI = *callback
	}
	if err := g.client.SubscribeWABA(ctx, g.wabaToken(), *waba, overrideURI, g.app.VerifyToken); err != nil {
		return g.metaRefused("subscribe the app to WhatsApp Business Account "+*waba, err)
	}
	if *override {
		fmt.Fprintf(e.stdout, "subscribed app %s to WhatsApp Business Account %s with override callback %s: Meta verified it\n", g.app.Name, *waba, overrideURI)
	} else {
		fmt.Fprintf(e.stdout, "subscribed app %s to WhatsApp Business Account %s (webhooks go to the app's callback)\n", g.app.Name, *waba)
	}
	return nil
}

// checkCallback checks the callback before Meta does: https (unless insecure), a path the
// app serves, and a verification GET, as Meta sends it, that gets the challenge back.
func (g *graphCmd) checkCallback(ctx context.Context, callback string, insecure, skipPath, skipVerify bool) error {
	u, err := url.Parse(callback)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("callback %q: use an absolute https URL like https://relay.example.com%s", callback, g.app.Path)
	}
	if u.Scheme == "http" && !insecure {
		return fmt.Errorf("callback %s: must be https, Meta calls only https callbacks (-insecure-callback allows http, to try it locally)", callback)
	}
	if u.User != nil || u.Fragment != "" {
		return fmt.Errorf("callback %s://%s: must not hold credentials or a #fragment", u.Scheme, u.Host)
	}
	path := u.Path
	if path == "" {
		path = "/"
	}
	if !skipPath && path != g.app.Path {
		return fmt.Errorf("callback path %s is not served by app %s, which answers on %s (apps[].path, default server.path); if a proxy rewrites the path, pass -skip-path-check", path, g.app.Name, g.app.Path)
	}
	w := g.e.stdout
	if skipVerify {
		fmt.Fprintln(w, "callback: verification GET skipped (-skip-verify-check); Meta verifies it anyway")
		return nil
	}
	if t := g.cfg.Server.TLS; (t != nil && t.ClientCAFile != "") || g.cfg.Server.TrustedProxy != nil {
		fmt.Fprintln(w, "callback: verification GET skipped: the relay requires Meta's client certificate, which hubrelay does not have; Meta verifies it anyway")
		return nil
	}
	n, err := rand.Int(rand.Reader, big.NewInt(1<<31))
	if err != nil {
		return fmt.Errorf("make challenge: %w", err)
	}
	challenge := n.String()
	q := u.Query()
	q.Set("hub.mode", "subscribe")
	q.Set("hub.challenge", challenge)
	q.Set("hub.verify_token", g.app.VerifyToken)
	check := *u
	check.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, callbackCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, check.String(), nil)
	if err != nil {
		return fmt.Errorf("callback %s: %s", callback, g.scrub.Replace(unwrapURLError(err)))
	}
	req.Header.Set("User-Agent", "hubrelay/"+version+" (subscribe check)")
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	if err != nil {
		hint := "Meta must reach it from the internet; this check runs from here"
		if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
			hint = "Meta needs a certificate from a public CA"
		} else if _, ok := errors.AsType[x509.HostnameError](err); ok {
			hint = "the certificate does not name this host"
		} else if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
			hint = "Meta refuses an expired or invalid certificate too"
		}
		return fmt.Errorf("callback %s: verification GET failed: %s (%s); -skip-verify-check leaves the check to Meta", callback, g.scrub.Replace(unwrapURLError(err)), hint)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch {
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("callback %s: verification GET answered 403: the relay there refused app %s's verify token; does it run this config?", callback, g.app.Name)
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return fmt.Errorf("callback %s: verification GET answered %s (to %s): give Meta the final URL", callback, resp.Status, resp.Header.Get("Location"))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("callback %s: verification GET answered %s, not 200 with the challenge", callback, resp.Status)
	case string(body) != challenge:
		return fmt.Errorf("callback %s: verification GET answered 200 but not with the challenge: is hubrelay serving this URL?", callback)
	}
	fmt.Fprintf(w, "callback %s: path served by app %s; verification GET answered the challenge\n", callback, g.app.Name)
	return nil
}

// unwrapURLError returns an error's message without the URL url.Error repeats (its query
// holds the verify token).
func unwrapURLError(err error) string {
	if uerr, ok := errors.AsType[*url.Error](err); ok {
		return uerr.Err.Error()
	}
	return err.Error()
}
