package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/config"
	"github.com/hubrelay/hubrelay/relay"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestExamples_RouteGolden runs `hubrelay route -json` for every sample payload of every
// example against the example's config, and compares with testdata/examples/<example>.golden,
// so the examples keep doing what their READMEs say.
func TestExamples_RouteGolden(t *testing.T) {
	dirs, err := filepath.Glob("../../examples/*/hubrelay.yaml")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	getenv := exampleEnv(t)
	for _, cfg := range dirs {
		name := filepath.Base(filepath.Dir(cfg))
		t.Run(name, func(t *testing.T) {
			payloads, _ := filepath.Glob(filepath.Join(filepath.Dir(cfg), "payloads", "*.json"))
			if len(payloads) == 0 {
				// Deployment examples (kubernetes, systemd): the config must load.
				var out bytes.Buffer
				if err := run(context.Background(), []string{"check", "-config", cfg}, getenv, nil, &out, &out); err != nil {
					t.Fatalf("check: %v\n%s", err, out.String())
				}
				return
			}
			var got bytes.Buffer
			for _, p := range payloads {
				got.WriteString("# " + filepath.Base(p) + "\n")
				var errb bytes.Buffer
				if err := run(context.Background(), []string{"route", "-config", cfg, "-json", p}, getenv, nil, &got, &errb); err != nil {
					t.Fatalf("route %s: %v\n%s", p, err, errb.String())
				}
			}
			checkTemplates(t, cfg, payloads)
			golden := filepath.Join("testdata", "examples", name+".golden")
			if *update {
				os.MkdirAll(filepath.Dir(golden), 0o755)
				if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("routes changed:\n--- got\n%s\n--- want\n%s", got.String(), want)
			}
		})
	}
}

// exampleEnv supplies the secrets that deployment examples read from the environment or from
// files, with dummy values.
func exampleEnv(t *testing.T) func(string) string {
	dir := t.TempDir()
	for _, f := range []string{"verify_token", "app_secrets", "sign_secret"} {
		os.WriteFile(filepath.Join(dir, f), []byte("dummy-"+f+"\n"), 0o600)
	}
	os.WriteFile(filepath.Join(dir, "postgres_url"), []byte("postgres://dummy:dummy@127.0.0.1:5432/dummy\n"), 0o600)
	return func(k string) string {
		switch k {
		case "SECRETS_DIR":
			return dir
		case "HUBRELAY_VERIFY_TOKEN", "HUBRELAY_APP_SECRET":
			return "dummy-" + k
		}
		return ""
	}
}

// checkTemplates renders every Slack text and blocks template for each change routed to its sink:
// a template that cannot render a real payload would dead-letter every such change.
func checkTemplates(t *testing.T, cfgPath string, payloads []string) {
	t.Helper()
	cfg, err := config.Load(cfgPath, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	router := relay.NewRouter(cfg.Rules, rawSinks(cfg))
	for _, p := range payloads {
		body, _ := os.ReadFile(p)
		events, err := relay.Decode(body, cfg.Apps[0].Name, time.Now(), relay.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range events {
			rt := router.Route(&events[i], func(rule string, err error) { t.Errorf("%s: rule %s: %v", p, rule, err) })
			for _, name := range rt.Sinks {
				for _, sk := range cfg.Sinks {
					if sk.Name != name || sk.Type != config.SinkSlack {
						continue
					}
					if sk.Text != nil {
						if txt, err := sk.Text.String(ruleEnv(&events[i])); err != nil || txt == "" {
							t.Errorf("%s: sink %s: text %q: %v", filepath.Base(p), name, txt, err)
						}
					}
					if sk.Blocks != nil {
						if _, err := sk.Blocks.Eval(ruleEnv(&events[i])); err != nil {
							t.Errorf("%s: sink %s: blocks: %v", filepath.Base(p), name, err)
						}
					}
				}
			}
		}
	}
}
