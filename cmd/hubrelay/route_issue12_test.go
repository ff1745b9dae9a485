package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/relay"
)

// TestRoute_RuleErrorsAndCatchAll: `route` shows what serve would do with a change a rule
// fails on (the rule-errors sink) and with one no rule matched (routing.unmatched_sinks), and
// exits non-zero when a rule failed.
func TestRoute_RuleErrorsAndCatchAll(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	err := os.WriteFile(cfg, []byte(`apps: [{name: shop, verify_token: t, app_secrets: [s]}]
sinks:
  - {name: archive, type: file, path: `+filepath.Join(dir, "a.jsonl")+`}
  - {name: ops, type: file, path: `+filepath.Join(dir, "b.jsonl")+`}
rules:
  - name: wa-broken
    object: whatsapp_business_account
    when: 'value.contacts[0].profile.name.first == "x"'
    sinks: [ops]
routing:
  unmatched_sinks: [archive]
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		payload   string
		wantSinks []string
		wantErr   bool
	}{
		{"testdata/whatsapp_text_message.json", []string{"rule-errors"}, true},
		{"testdata/page_feed_add_photo.json", []string{"archive"}, false},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.payload), func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(context.Background(), []string{"route", "-config", cfg, "-json", tt.payload}, testGetenv, nil, &out, &errb)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, errReported)) {
				t.Fatalf("route: %v, want error %v\n%s", err, tt.wantErr, errb.String())
			}
			var line routeLine
			if err := json.Unmarshal(out.Bytes(), &line); err != nil {
				t.Fatalf("%v: %s", err, out.String())
			}
			if !slices.Equal(line.Sinks, tt.wantSinks) {
				t.Errorf("sinks %v, want %v", line.Sinks, tt.wantSinks)
			}
			if tt.wantErr && (len(line.RuleErrors) != 1 || line.RuleErrors[0].Rule != "wa-broken" ||
				!strings.Contains(errb.String(), "1 rule evaluation(s) failed")) {
				t.Errorf("rule errors %+v, stderr %s", line.RuleErrors, errb.String())
			}
		})
	}
}

func TestRuleErrorSinkName(t *testing.T) {
	if config.RuleErrorSink != relay.RuleErrorSink {
		t.Fatalf("config reserves sink %q, relay routes rule errors to %q", config.RuleErrorSink, relay.RuleErrorSink)
	}
}

// TestServe_RuleErrorReplayedWithFixedRule: a change the rule fails on is acknowledged and
// dead-lettered for the rule-errors sink by the running relay; once the rule is fixed,
// `deadletter replay` (here with no relay running: it opens the spool and routes with the
// config's rules) gets it delivered.
func TestServe_RuleErrorReplayedWithFixedRule(t *testing.T) {
	sink := newCollector(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, freeAddr(t), sink.srv.URL)
	good, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(string(good), `when: 'value.messages != nil'`, `when: 'value.metadata.x.y == 1'`, 1)
	if err := os.WriteFile(cfg, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRelay(t, dir, cfg)
	wa, _ := os.ReadFile("testdata/whatsapp_text_message.json")
	if st, _ := post(t, r.url+"/webhooks", wa, relay.Sign(wa, testSecret)); st != 200 {
		t.Fatalf("status %d", st)
	}
	dlDir := filepath.Join(dir, "data", "dead-letter")
	waitFor(t, "rule-error dead letter", func() bool {
		m, _ := filepath.Glob(filepath.Join(dlDir, relay.RuleErrorSink+"-*.json"))
		return len(m) == 1
	})
	out, err := cli(t, "deadletter", "list", "-config", cfg, "-json")
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	var l struct{ Sink, Reason string }
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &l); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if want := `permanent: rule "whatsapp-inbound" failed to evaluate: missing member at column 18`; l.Reason != want {
		t.Errorf("reason %q, want %q", l.Reason, want)
	}
	r.stop(t)
	if n := len(sink.ids()); n != 0 {
		t.Fatalf("the sink got %d changes from a failing rule", n)
	}

	if err := os.WriteFile(cfg, good, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, "deadletter", "replay", "-config", cfg, "-all")
	if err != nil || !strings.Contains(out, "1 dead letter(s) replayed into the spool") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	startRelay(t, dir, cfg)
	waitFor(t, "delivery after the fix", func() bool { return len(sink.ids()) == 1 })
	if m, _ := filepath.Glob(filepath.Join(dlDir, "*.json")); len(m) != 0 {
		t.Errorf("dead letters left: %v", m)
	}
}
