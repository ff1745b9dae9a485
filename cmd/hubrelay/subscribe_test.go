package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hubrelay/hubrelay/graph"
	"github.com/hubrelay/hubrelay/graph/graphtest"
)

const (
	testAppID       = "1234567890"
	testAccessToken = "EAAtestsystemusertoken0123456789"
	testWABA        = "102290129340398"
	graphVersion    = "v23.0"
)

// graphConfig writes a config for the relay at addr whose Graph API is graphURL.
// With rotated set the app's first secret is an old one Meta no longer accepts.
func graphConfig(t *testing.T, dir, name, addr, graphURL, verifyToken string, rotated bool) string {
	t.Helper()
	secrets := "${TEST_APP_SECRET}"
	if rotated {
		secrets = "old-secret-rotated-out, ${TEST_APP_SECRET}"
	}
	tokenFile := filepath.Join(dir, "access_token")
	if err := os.WriteFile(tokenFile, []byte(testAccessToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`server:
  listen: %s
  path: /webhooks
apps:
  - name: shop
    app_id: "%s"
    verify_token: %s
    app_secrets: [%s]
    access_token_file: %s
storage:
  dir: %s
graph:
  base_url: %s
  version: %s
  max_attempts: 3
  min_backoff: 1ms
  max_backoff: 5ms
sinks:
  - name: archive
    type: file
    path: %s
rules:
  - name: whatsapp-inbound
    object: whatsapp_business_account
    field: messages
    sinks: [archive]
  - name: page-photos
    object: page
    field: feed
    verb: [add, edited]
    when: 'value.item == "photo"'
    sinks: [archive]
  - name: messenger
    object: page
    field: messaging
    verb: [message, postback]
    sinks: [archive]
  - name: page-leads
    object: page
    field: leadgen
    sinks: [archive]
`, addr, testAppID, verifyToken, secrets, tokenFile, filepath.Join(dir, "data"), graphURL, graphVersion,
		filepath.Join(dir, "data", "events.jsonl"))
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// graphCase is one run of a Graph command against a fresh stand-in.
type graphCase struct {
	name string
	// setup prepares the stand-in; nil registers the test app, its system-user token with
	// the WhatsApp permission and the test WABA.
	setup func(g *graphtest.Server)
	// args are the command's, after -config; RELAY and DEAD in them are replaced by the
	// relay's address and an address where nothing listens.
	args []string
	// verifyToken is the CLI config's verify token (default: the relay's).
	verifyToken string
	// rotated puts an outdated app secret first in the CLI config.
	rotated bool
	wantErr bool
	// check inspects the stand-in after the run.
	check func(t *testing.T, g *graphtest.Server)
}

func standardSetup(g *graphtest.Server) {
	g.AddApp(testAppID, "Shop", testSecret)
	g.AddUserToken(testAccessToken, testAppID, graphtest.PermWABA)
	g.AddWABA(testWABA)
	g.AllowInsecureCallbacks()
}

// TestGraphCommands_Golden runs subscribe, subscriptions and unsubscribe against a local
// Graph API stand-in that verifies callbacks against a running relay, and compares each
// command's output with testdata/graph/<case>.golden.
func TestGraphCommands_Golden(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	relayCfg := graphConfig(t, dir, "relay.yaml", addr, "http://127.0.0.1:1", "${TEST_VERIFY_TOKEN}", true)
	r := startRelay(t, dir, relayCfg)
	dead := freeAddr(t)
	callback := "http://RELAY/webhooks"

	cases := []graphCase{
		{
			name:    "subscribe_page",
			rotated: true,
			args:    []string{"subscribe", "-app", "shop", "-object", "page", "-fields", "feed,photos", "-callback", callback, "-include-values", "-insecure-callback"},
			check: func(t *testing.T, g *graphtest.Server) {
				subs := g.Subscriptions(testAppID)
				if len(subs) != 1 || subs[0].Object != "page" || len(subs[0].Fields) != 2 || !strings.HasSuffix(subs[0].CallbackURL, "/webhooks") {
					t.Errorf("stand-in has %+v", subs)
				}
				reqs := g.Requests()
				if len(reqs) != 2 || reqs[0].Form.Get("verify_token") != testGetenv("TEST_VERIFY_TOKEN") || reqs[1].Form.Get("include_values") != "true" || reqs[1].Form.Get("fields") != "feed,photos" {
					t.Errorf("requests: %+v", reqs)
				}
			},
		},
		{
			name:    "subscribe_http_callback_refused",
			args:    []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback},
			wantErr: true,
			check:   noGraphCalls,
		},
		{
			name:    "subscribe_path_not_served",
			args:    []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", "http://RELAY/hooks", "-insecure-callback"},
			wantErr: true,
			check:   noGraphCalls,
		},
		{
			name:        "subscribe_preflight_wrong_verify_token",
			args:        []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback"},
			verifyToken: "not-the-relays-token",
			wantErr:     true,
			check:       noGraphCalls,
		},
		{
			// Meta's verification reaches the relay, which refuses the token: 2200.
			name:        "subscribe_2200_relay_refuses",
			args:        []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback", "-skip-verify-check"},
			verifyToken: "not-the-relays-token",
			wantErr:     true,
		},
		{
			// Meta cannot reach the callback at all: 2200.
			name:    "subscribe_2200_unreachable",
			args:    []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", "http://DEAD/webhooks", "-insecure-callback", "-skip-verify-check"},
			wantErr: true,
		},
		{
			name:    "subscribe_190_invalid_token",
			rotated: true,
			setup: func(g *graphtest.Server) {
				g.AddApp(testAppID, "Shop", "the-real-secret-is-elsewhere")
				g.AllowInsecureCallbacks()
			},
			args:    []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback"},
			wantErr: true,
			check: func(t *testing.T, g *graphtest.Server) {
				if n := len(g.Requests()); n != 2 {
					t.Errorf("want one call per app secret (2), got %d", n)
				}
			},
		},
		{
			name: "subscribe_10_permission",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.Fail(graphtest.Failure{Code: 10, Status: 403, Message: "(#10) Application does not have permission for this action"})
			},
			args:    []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback"},
			wantErr: true,
		},
		{
			name: "subscribe_4_rate_limit_then_ok",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.Fail(graphtest.Failure{Method: "POST", PathSuffix: "/subscriptions", Code: 4, Times: 2, Message: "(#4) Application request limit reached", Transient: true})
			},
			args: []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback"},
			check: func(t *testing.T, g *graphtest.Server) {
				if len(g.Subscriptions(testAppID)) != 1 {
					t.Error("not subscribed after the rate limit passed")
				}
			},
		},
		{
			name: "subscribe_613_rate_limit_exhausted",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.Fail(graphtest.Failure{Code: 613, Times: 100, Message: "(#613) Calls to this api have exceeded the rate limit."})
			},
			args:    []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback"},
			wantErr: true,
		},
		{
			// Meta says access returns in 15 minutes: waiting is not worth it.
			name: "subscribe_80007_throttled_for_long",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.Fail(graphtest.Failure{Code: 80007, Message: "(#80007) There have been too many calls to this WhatsApp Business account.", RegainMinutes: 15})
			},
			args:    []string{"subscribe", "-object", "whatsapp_business_account", "-fields", "messages", "-callback", callback, "-insecure-callback"},
			wantErr: true,
			check: func(t *testing.T, g *graphtest.Server) {
				if n := len(g.Requests()); n != 1 {
					t.Errorf("%d requests: a call throttled for longer than max_backoff must not be retried", n)
				}
			},
		},
		{
			name: "subscribe_5xx_then_ok",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.Fail(graphtest.Failure{Code: 2, Status: 500, Message: "An unexpected error has occurred. Please retry your request later.", Transient: true})
			},
			args: []string{"subscribe", "-object", "page", "-fields", "feed", "-callback", callback, "-insecure-callback"},
		},
		{
			name: "subscribe_waba_override",
			args: []string{"subscribe", "-object", "whatsapp_business_account", "-fields", "messages", "-callback", callback, "-insecure-callback", "-waba", testWABA, "-override-callback"},
			check: func(t *testing.T, g *graphtest.Server) {
				apps := g.WABAApps(testWABA)
				if len(apps) != 1 || !strings.HasPrefix(apps[0], testAppID+"|http://") {
					t.Errorf("WABA apps: %v", apps)
				}
			},
		},
		{
			name: "subscribe_waba_200_permission",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.AddUserToken(testAccessToken, testAppID) // no whatsapp_business_management
			},
			args:    []string{"subscribe", "-object", "whatsapp_business_account", "-fields", "messages", "-callback", callback, "-insecure-callback", "-waba", testWABA},
			wantErr: true,
		},
		{
			name: "subscriptions_drift",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.SetSubscription(testAppID, graph.Subscription{Object: "page", CallbackURL: "https://relay.example.com/webhooks", Active: true,
					Fields: []graph.Field{{Name: "feed", Version: graphVersion}, {Name: "photos", Version: graphVersion}, {Name: "messages", Version: "v19.0"}, {Name: "message_reads", Version: graphVersion}}})
				g.SetSubscription(testAppID, graph.Subscription{Object: "user", CallbackURL: "https://relay.example.com/meta", Active: false,
					Fields: []graph.Field{{Name: "email", Version: graphVersion}}})
			},
			args:    []string{"subscriptions", "-waba", testWABA, "-check"},
			wantErr: true,
		},
		{
			name: "subscriptions_in_sync",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.SetSubscription(testAppID, graph.Subscription{Object: "page", CallbackURL: "https://relay.example.com/webhooks", Active: true,
					Fields: []graph.Field{{Name: "feed", Version: graphVersion}, {Name: "messages", Version: graphVersion}, {Name: "leadgen", Version: graphVersion}}})
				g.SetSubscription(testAppID, graph.Subscription{Object: "whatsapp_business_account", CallbackURL: "https://relay.example.com/webhooks", Active: true,
					Fields: []graph.Field{{Name: "messages", Version: graphVersion}}})
			},
			args: []string{"subscriptions"},
		},
		{
			name: "unsubscribe_fields",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
				g.SetSubscription(testAppID, graph.Subscription{Object: "page", CallbackURL: "https://relay.example.com/webhooks", Active: true,
					Fields: []graph.Field{{Name: "feed", Version: graphVersion}, {Name: "photos", Version: graphVersion}}})
			},
			args: []string{"unsubscribe", "-object", "page", "-fields", "photos"},
			check: func(t *testing.T, g *graphtest.Server) {
				subs := g.Subscriptions(testAppID)
				if len(subs) != 1 || len(subs[0].Fields) != 1 || subs[0].Fields[0].Name != "feed" {
					t.Errorf("after unsubscribe: %+v", subs)
				}
			},
		},
		{
			name: "unsubscribe_waba",
			setup: func(g *graphtest.Server) {
				standardSetup(g)
			},
			args: []string{"unsubscribe", "-waba", testWABA},
		},
	}
	secrets := []string{testSecret, "old-secret-rotated-out", testGetenv("TEST_VERIFY_TOKEN"), testAccessToken, "not-the-relays-token", "the-real-secret-is-elsewhere"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := graphtest.NewServer(graphVersion)
			defer g.Close()
			if tc.setup != nil {
				tc.setup(g)
			} else {
				standardSetup(g)
			}
			vt := cmpOr(tc.verifyToken, "${TEST_VERIFY_TOKEN}")
			cliCfg := graphConfig(t, t.TempDir(), "cli.yaml", addr, g.URL, vt, tc.rotated)
			args := []string{tc.args[0], "-config", cliCfg}
			for _, a := range tc.args[1:] {
				args = append(args, strings.NewReplacer("RELAY", addr, "DEAD", dead).Replace(a))
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), args, testGetenv, strings.NewReader(""), &stdout, &stderr)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v\nstdout:\n%s\nstderr:\n%s", err, tc.wantErr, stdout.String(), stderr.String())
			}
			exit := exitCode(err)
			for _, out := range []string{stdout.String(), stderr.String(), r.logs.String()} {
				for _, s := range secrets {
					if strings.Contains(out, s) {
						t.Errorf("output or relay log holds the secret %q:\n%s", s, out)
					}
				}
			}
			for _, req := range g.Requests() {
				if req.TokenFrom != "header" || strings.Contains(req.Query, "access_token") {
					t.Errorf("%s %s: token from %q, query %q: want it in the Authorization header only", req.Method, req.Path, req.TokenFrom, req.Query)
				}
			}
			if tc.check != nil {
				tc.check(t, g)
			}
			norm := strings.NewReplacer(addr, "RELAY", dead, "DEAD", g.URL, "GRAPH", cliCfg, "cli.yaml")
			var got bytes.Buffer
			fmt.Fprintf(&got, "$ hubrelay %s\nexit %d\n-- stdout --\n%s-- stderr --\n%s", strings.Join(tc.args, " "), exit,
				norm.Replace(stdout.String()), norm.Replace(stderr.String()))
			compareGolden(t, filepath.Join("testdata", "graph", tc.name+".golden"), got.Bytes())
		})
	}
}

func noGraphCalls(t *testing.T, g *graphtest.Server) {
	t.Helper()
	if reqs := g.Requests(); len(reqs) != 0 {
		t.Errorf("Meta was called although the callback check failed: %+v", reqs)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// compareGolden compares got with the golden file, rewriting it with -update.
func compareGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output changed (-update rewrites %s):\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
}

// TestGraphCommands_Usage checks the flag combinations refused before anything is called.
func TestGraphCommands_Usage(t *testing.T) {
	for _, args := range [][]string{
		{"subscribe"},
		{"subscribe", "-object", "page", "-fields", "feed"},
		{"subscribe", "-object", "page", "-fields", "feed", "-callback", "https://x/webhooks", "-waba", "1"},
		{"subscribe", "-object", "page", "-fields", "feed", "-callback", "https://x/webhooks", "-override-callback"},
		{"unsubscribe"},
		{"unsubscribe", "-waba", "1", "-fields", "x"},
		{"subscriptions", "extra"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), args, testGetenv, nil, &out, &out)
		if !errors.Is(err, errUsage) {
			t.Errorf("%v: err = %v, want a usage error\n%s", args, err, out.String())
		}
	}
}

// TestSubscribe_UntrustedCertificate runs the relay over real TLS with a certificate from a
// private CA: the callback check fails the way Meta's would, before Meta is called.
func TestSubscribe_UntrustedCertificate(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	ca := newTestCA(t, "private CA")
	certPEM, keyPEM := ca.issue(t, "127.0.0.1", true)
	cert := writeFile(t, filepath.Join(dir, "tls.crt"), certPEM)
	key := writeFile(t, filepath.Join(dir, "tls.key"), keyPEM)
	g := graphtest.NewServer(graphVersion)
	defer g.Close()
	standardSetup(g)
	cfgPath := graphConfig(t, dir, "relay.yaml", addr, g.URL, "${TEST_VERIFY_TOKEN}", false)
	raw, _ := os.ReadFile(cfgPath)
	raw = []byte(strings.Replace(string(raw), "  path: /webhooks\n",
		fmt.Sprintf("  path: /webhooks\n  tls: {cert_file: %s, key_file: %s}\n", cert, key), 1))
	writeFile(t, cfgPath, raw)
	startRelayTLS(t, dir, cfgPath, ca)

	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"subscribe", "-config", cfgPath, "-object", "page", "-fields", "feed",
		"-callback", "https://" + addr + "/webhooks"}, testGetenv, nil, &stdout, &stderr)
	if err == nil {
		t.Fatalf("subscribe succeeded with an untrusted certificate:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "certificate from a public CA") || strings.Contains(stderr.String(), testGetenv("TEST_VERIFY_TOKEN")) {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	noGraphCalls(t, g)
}

// TestSubscribe_VerboseLogsNoSecret runs subscribe with -v: every Graph call is logged, with
// its method, path and status, and no token, secret or verify token.
func TestSubscribe_VerboseLogsNoSecret(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	g := graphtest.NewServer(graphVersion)
	defer g.Close()
	standardSetup(g)
	cfgPath := graphConfig(t, dir, "relay.yaml", addr, g.URL, "${TEST_VERIFY_TOKEN}", true)
	r := startRelay(t, dir, cfgPath)
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"subscribe", "-config", cfgPath, "-v", "-object", "whatsapp_business_account", "-fields", "messages",
		"-callback", "http://" + addr + "/webhooks", "-insecure-callback", "-waba", testWABA, "-override-callback"}, testGetenv, nil, &stdout, &stderr)
	if err != nil {
		t.Fatalf("subscribe: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	if n := strings.Count(stderr.String(), `msg="graph call"`); n != 3 {
		t.Errorf("want 3 graph calls logged (a refused secret, the app, the WABA), got %d:\n%s", n, stderr.String())
	}
	for _, s := range []string{testSecret, "old-secret-rotated-out", testGetenv("TEST_VERIFY_TOKEN"), testAccessToken} {
		for _, out := range []string{stdout.String(), stderr.String(), r.logs.String()} {
			if strings.Contains(out, s) {
				t.Errorf("output holds %q:\n%s", s, out)
			}
		}
	}
}
