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
