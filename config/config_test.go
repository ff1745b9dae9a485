package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/rules"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// testEnv is the environment the testdata files are parsed with. Every value holds "s3cr3t"
// so that TestParse_Golden can check that none of them leaks into a problem message.
var testEnv = map[string]string{
	"HUBRELAY_VERIFY_TOKEN": "verify-s3cr3t-env",
	"HUBRELAY_APP_SECRET":   "app-s3cr3t-env",
	"SLACK_WEBHOOK_URL":     "https://hooks.slack.com/services/Ts3cr3t/Bs3cr3t/s3cr3tXYZ",
	"ORDERS_TOKEN":          "orders-s3cr3t-env",
	"PORT":                  "",
}

func getenv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func noEnv(string) string { return "" }

// TestParse_Golden parses every testdata/*.yaml file and compares the outcome with
// testdata/<name>.golden: the problems, one per line, or for a valid file a dump of the
// config. Run with -update to rewrite the golden files, then review the diff.
func TestParse_Golden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(file, data, getenv(testEnv))
			var got string
			if strings.HasPrefix(name, "valid_") {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				got = dump(t, cfg)
			} else {
				var ps Problems
				if !errors.As(err, &ps) {
					t.Fatalf("Parse error = %v (%T), want Problems", err, err)
				}
				if cfg != nil {
					t.Errorf("Parse returned a config with problems")
				}
				got = ps.Error() + "\n"
				for _, p := range ps {
					if p.Line < 1 || p.Col < 1 || p.File != file {
						t.Errorf("problem with bad position: %+v", p)
					}
					if strings.Contains(p.Error(), "s3cr3t") {
						t.Errorf("problem quotes a secret: %s", p)
					}
				}
			}
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Parse(%s) output differs from %s:\n--- got\n%s--- want\n%s", file, golden, got, want)
			}
		})
	}
}

// dump renders a config for a golden file; templates and rules show what they compiled.
func dump(t *testing.T, c *Config) string {
	t.Helper()
	type sinkDump struct {
		Sink
		Text, Blocks, OrderBy string
	}
	var sinks []sinkDump
	for _, s := range c.Sinks {
		sd := sinkDump{Sink: s}
		if s.Text != nil {
			sd.Text = s.Text.Source()
		}
		if s.Blocks != nil {
			sd.Blocks = s.Blocks.Source()
		}
		if s.OrderBy != nil {
			sd.OrderBy = s.OrderBy.Source()
		}
		sd.Sink.Text, sd.Sink.Blocks, sd.Sink.OrderBy = nil, nil, nil
		sinks = append(sinks, sd)
	}
	cc := *c
	cc.Sinks, cc.Rules = nil, nil
	b, err := json.MarshalIndent(struct {
		Config    Config
		Sinks     []sinkDump
		RuleCount int
	}{cc, sinks, c.Rules.Len()}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

func TestLoad_ExampleWithEmptyEnvironment(t *testing.T) {
	cfg, err := Load("../config.example.yaml", noEnv)
	if err != nil {
		t.Fatalf("Load(config.example.yaml) with no environment:\n%v", err)
	}
	if cfg.Server.Listen != "127.0.0.1:8080" || cfg.Server.Path != "/webhooks" || cfg.Storage.Dir != "./data" {
		t.Errorf("server/storage = %+v %+v", cfg.Server, cfg.Storage)
	}
	types := map[string]string{}
	for _, s := range cfg.Sinks {
		types[s.Type] = s.Name
	}
	if len(types) != 3 {
		t.Errorf("example shows sink types %v, want http, slack and file", types)
	}
	if got := cfg.Apps[0].VerifyToken; got != "dev-verify-token" {
		t.Errorf("verify token = %q, want the dev default", got)
	}
	photo := &rules.Env{Object: "page", Field: "feed", Verb: "add", Value: map[string]any{"item": "photo"}}
	if m := cfg.Rules.Match(photo, nil); !reflect.DeepEqual(m.Rules, []string{"page-photos", "archive-everything"}) {
		t.Errorf("example rules match %v for a page photo", m.Rules)
	}
	wa := &rules.Env{Object: "whatsapp_business_account", Field: "messages", Value: map[string]any{"messages": []any{}}}
	if m := cfg.Rules.Match(wa, nil); !reflect.DeepEqual(m.Sinks, []string{"archive"}) {
		t.Errorf("example rules route a WhatsApp message to %v", m.Sinks)
	}
	// Every key of the example is documented: the example is the reference.
	for _, key := range []string{"max_event_age", "trusted_proxy", "client_common_names", "verify_token_file",
		"app_secrets_file", "allow_sha1", "max_batch_delay", "sign_secret", "in_process", "batch", "webhook_url_file",
		"blocks", "max_files", "payloads", "admin"} {
		b, _ := os.ReadFile("../config.example.yaml")
		if !strings.Contains(string(b), key) {
			t.Errorf("config.example.yaml does not mention %s", key)
		}
	}
}

func TestLoad_MissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nosuch.yaml"), noEnv)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want ErrNotExist", err)
	}
}

func TestParse_ManyProblems(t *testing.T) {
	data, err := os.ReadFile("testdata/many.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse("many.yaml", data, noEnv)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Parse = %v, want Problems", err)
	}
	want := []string{
		"server.lisen", "server.max_body_bytes", "log.level", "apps[0].verify_token", "apps[0].app_secrets[0]",
		"storage.dedup_window", "sinks[0].url", "sinks[0].concurrency", "sinks[1].url", "sinks[2]", "sinks[2].name",
		"rules[0].when", "rules[0].sinks[0]", "rules[1].name", "rules[1].sinks",
	}
	var got []string
	for i, p := range ps {
		got = append(got, p.Path)
		if i > 0 && p.Line < ps[i-1].Line {
			t.Errorf("problems not sorted by line: %s after %s", p, ps[i-1])
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problem paths:\n got %q\nwant %q\n%v", got, want, err)
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != len(want) {
		t.Errorf("Error() has %d lines, want %d", n, len(want))
	}
	var p Problem
	if !errors.As(err, &p) || p.Path != "server.lisen" {
		t.Errorf("errors.As(Problem) = %+v", p)
	}
}

func TestProblem_Error(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "c.yaml", Line: 14, Col: 7, Path: "sinks[1].url", Msg: "must be https"}, "c.yaml:14:7: sinks[1].url: must be https"},
		{Problem{File: "c.yaml", Line: 3, Col: 1, Msg: "invalid YAML: x"}, "c.yaml:3:1: invalid YAML: x"},
	}
	for _, tt := range tests {
		if got := tt.p.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

// TestParse_EnvExpansion checks ${NAME}, ${NAME:-default}, $$ and that positions after an
// expanded reference stay those of the file.
func TestParse_EnvExpansion(t *testing.T) {
	const base = "apps: [{name: shop, verify_token: '${TOKEN}', app_secrets: [${S1}, ${S2:-two}, \"a$$b\"]}]\n"
	t.Run("values", func(t *testing.T) {
		cfg, err := Parse("c.yaml", []byte(base+"storage: {dir: '${DIR:-./d}/x', dedup_window: ${W:-1h}}\n"),
			getenv(map[string]string{"TOKEN": "tok: #not a comment", "S1": "one", "W": "2h"}))
		if err != nil {
			t.Fatal(err)
		}
		a := cfg.Apps[0]
		if a.VerifyToken != "tok: #not a comment" {
			t.Errorf("VerifyToken = %q", a.VerifyToken)
		}
		if want := []string{"one", "two", "a$b"}; !reflect.DeepEqual(a.AppSecrets, want) {
			t.Errorf("AppSecrets = %q, want %q", a.AppSecrets, want)
		}
		if cfg.Storage.Dir != "./d/x" || cfg.Storage.DedupWindow != 2*time.Hour {
			t.Errorf("Storage = %+v", cfg.Storage)
		}
		if cfg.DeadLetter.Dir != "d/x/dead-letter" {
			t.Errorf("DeadLetter.Dir = %q, want d/x/dead-letter", cfg.DeadLetter.Dir)
		}
	})
	t.Run("empty variable uses default", func(t *testing.T) {
		cfg, err := Parse("c.yaml", []byte(base), getenv(map[string]string{"TOKEN": "t", "S1": "one", "S2": ""}))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Apps[0].AppSecrets[1] != "two" {
			t.Errorf("AppSecrets = %q", cfg.Apps[0].AppSecrets)
		}
	})
	t.Run("undefined variable names it", func(t *testing.T) {
		_, err := Parse("c.yaml", []byte(base), getenv(map[string]string{"TOKEN": "t"}))
		want := "c.yaml:1:61: apps[0].app_secrets[0]: empty secret: set S1"
		if err == nil || err.Error() != want {
			t.Errorf("Parse error =\n%v\nwant\n%s", err, want)
		}
	})
	t.Run("columns after references", func(t *testing.T) {
		src := base + "sinks: [{name: a, type: file, path: x}]\n" +
			"rules: [{name: r, sinks: [${SINK_A:-a}, ${UNDEFINED_SINK_VARIABLE:-nosuch}, b]}]\n"
		_, err := Parse("c.yaml", []byte(src), getenv(map[string]string{"TOKEN": "t", "S1": "one"}))
		want := "c.yaml:3:41: rules[0].sinks[1]: unknown sink \"nosuch\" (sinks: a)\n" +
			"c.yaml:3:77: rules[0].sinks[2]: unknown sink \"b\" (sinks: a)"
		if err == nil || err.Error() != want {
			t.Errorf("Parse error =\n%v\nwant\n%s", err, want)
		}
	})
	t.Run("os.Getenv when nil", func(t *testing.T) {
		t.Setenv("HUBRELAY_TEST_TOKEN", "from-os")
		cfg, err := Parse("c.yaml", []byte("apps: [{name: a, verify_token: '${HUBRELAY_TEST_TOKEN}', app_secrets: [s]}]"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Apps[0].VerifyToken != "from-os" {
			t.Errorf("VerifyToken = %q", cfg.Apps[0].VerifyToken)
		}
	})
}

func TestParse_SecretFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := write("token", "file-token\n")
	secrets := write("secrets", "new\r\n  old  \n\n# retired\n")
	sign := write("sign", "sign-secret")
	slack := write("slack", "https://hooks.slack.com/services/T/B/FROMFILE\n")
	src := fmt.Sprintf(`apps:
  - name: shop
    verify_token_file: %s
    app_secrets_file: %s
sinks:
  - {name: o, type: http, url: "http://127.0.0.1:1", sign_secret_file: %s}
  - {name: s, type: slack, webhook_url_file: %s}
`, token, secrets, sign, slack)
	cfg, err := Parse("c.yaml", []byte(src), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Apps[0]; a.VerifyToken != "file-token" || !reflect.DeepEqual(a.AppSecrets, []string{"new", "old"}) {
		t.Errorf("app = %+v", a)
	}
	if cfg.Sinks[0].SignSecret != "sign-secret" || cfg.Sinks[1].WebhookURL != "https://hooks.slack.com/services/T/B/FROMFILE" {
		t.Errorf("sinks = %+v", cfg.Sinks)
	}
	if cfg.Sinks[1].Text == nil || cfg.Sinks[1].Text.Source() != DefaultSlackText {
		t.Errorf("slack sink has no default text")
	}
}

// TestParse_SecretsNeverInMessages writes distinctive secret values into every secret field
// in ways that cause problems and checks that no message quotes them.
func TestParse_SecretsNeverInMessages(t *testing.T) {
	const secret = "Sup3rS3cr3t"
	env := map[string]string{"TOKEN": secret + "-env", "HDR": secret + "\nx"}
	src := `apps:
  - {name: a, verify_token: ` + secret + `-tok, app_secrets: [` + secret + `-app, ""]}
  - {name: b, verify_token: ` + secret + `-tok, app_secrets: {` + secret + `: 1}}
  - {name: c, verify_token: "${TOKEN}", app_secrets: [s]}
  - {name: d, verify_token: "${TOKEN}", app_secrets: [s], verify_token_file: /nonexistent}
sinks:
  - {name: h1, type: http, url: "ftp://user:` + secret + `@example.com/", sign_secret: [` + secret + `]}
  - {name: h2, type: http, url: "http://` + secret + `%zz/", headers: {Authorization: "${HDR}", X-A: [` + secret + `]}}
  - {name: h3, type: http, url: "` + secret + `", headers: {X-B: "` + secret + `\r\n"}}
  - {name: s1, type: slack, webhook_url: "http://hooks.slack.com/services/` + secret + `"}
  - {name: s2, type: slack, webhook_url: "ftp://` + secret + `"}
  - {name: s3, type: slack, webhook_url: "https://` + secret + `", text: 'x' }
  - {name: s4, type: slack, webhook_url: "https://` + secret + `", url: "http://` + secret + `"}
`
	_, err := Parse("c.yaml", []byte(src), getenv(env))
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Parse = %v, want Problems", err)
	}
	if len(ps) < 12 {
		t.Errorf("only %d problems:\n%v", len(ps), err)
	}
	for _, p := range ps {
		if strings.Contains(p.Error(), "3cr3t") {
			t.Errorf("problem quotes a secret: %s", p)
		}
	}
	t.Logf("%v", err)

	// Malformed YAML around a secret.
	_, err = Parse("c.yaml", []byte("apps:\n  - verify_token: \""+secret+"\n    x: [\n"), noEnv)
	if err == nil || strings.Contains(err.Error(), "3cr3t") {
		t.Errorf("malformed YAML problem = %v", err)
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	if d.Server.Listen != "127.0.0.1:8080" || d.Server.MaxBodyBytes != 8<<20 || d.Storage.DedupWindow != 168*time.Hour {
		t.Errorf("Default() = %+v", d)
	}
	if d.DeadLetter.Dir != filepath.Join(d.Storage.Dir, "dead-letter") {
		t.Errorf("DeadLetter.Dir = %q", d.DeadLetter.Dir)
	}
	if d.Rules == nil || d.Rules.Len() != 0 {
		t.Errorf("Rules = %v, want an empty set", d.Rules)
	}
	for _, typ := range []string{SinkHTTP, SinkSlack, SinkFile} {
		s := DefaultSink(typ)
		if s.Concurrency < 1 || s.Retry.MaxAttempts < 1 || s.Retry.MinBackoff > s.Retry.MaxBackoff {
			t.Errorf("DefaultSink(%s) = %+v", typ, s)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"8388608", 8 << 20, true}, {"8MiB", 8 << 20, true}, {"3MB", 3e6, true}, {"3 mb", 3e6, true},
		{"1KiB", 1024, true}, {"2GiB", 2 << 30, true}, {"10B", 10, true}, {"0", 0, true},
		{"", 0, false}, {"MiB", 0, false}, {"-1", 0, false}, {"1.5MiB", 0, false}, {"8 megs", 0, false},
		{"99999999999GiB", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestSuggest(t *testing.T) {
	keys := []string{"listen", "path", "max_body_bytes"}
	for in, want := range map[string]string{
		"lisen":          ` (did you mean "listen"?)`,
		"Listen":         ` (did you mean "listen"?)`,
		"max_body_bytse": ` (did you mean "max_body_bytes"?)`,
		"port":           "",
		"x":              "",
	} {
		if got := suggest(in, keys); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParse parses arbitrary bytes as a config: it must never panic.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("a: [${X}, $${Y}, ${Z:-}, ${]\n"))
	f.Add([]byte("a: &x [*x]\nb: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, getenv(testEnv))
		if (cfg == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v: want exactly one", cfg, err)
		}
		if err != nil {
			var ps Problems
			if !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("Parse error %v is not Problems", err)
			}
		}
	})
}

// TestParse_Limits checks that aliases expanding to millions of values and thousands of
// problems end in a bounded list of problems, quickly.
func TestParse_Limits(t *testing.T) {
	var b strings.Builder
	b.WriteString("x: &l [" + strings.Repeat("a, ", 3000) + "a]\nrules: [")
	for range 3000 {
		b.WriteString("{name: r, object: *l, sinks: *l}, ")
	}
	b.WriteString("]\n")
	_, err := Parse("p.yaml", []byte(b.String()), noEnv)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Parse = %v", err)
	}
	if len(ps) != maxProblems+1 || !strings.Contains(ps[len(ps)-1].Msg, "too many problems") {
		t.Errorf("got %d problems, last %v", len(ps), ps[len(ps)-1])
	}

	b.Reset()
	b.WriteString("apps: [{name: a, verify_token: t, app_secrets: [s]}]\nsinks: [{name: a, type: file, path: x}]\n")
	b.WriteString("x: &l [" + strings.Repeat("a, ", 2000) + "a]\nrules: [")
	for range 2000 {
		b.WriteString("{name: r, object: *l, sinks: *l}, ")
	}
	b.WriteString("]\n")
	_, err = Parse("p.yaml", []byte(b.String()), noEnv)
	if err == nil || !strings.Contains(err.Error(), "too many values") {
		t.Errorf("Parse of 8 million values: %.300v", err)
	}
}

func TestParse_Routing(t *testing.T) {
	const base = "apps: [{name: shop, verify_token: t, app_secrets: [s]}]\n" +
		"sinks: [{name: archive, type: file, path: a.jsonl}, {name: ops, type: file, path: b.jsonl}]\n"
	tests := []struct {
		yaml string
		want Routing
	}{
		{"", Routing{OnRuleError: OnRuleErrorDeadLetter}},
		{"routing: {unmatched_sinks: [archive, ops]}\n", Routing{UnmatchedSinks: []string{"archive", "ops"}, OnRuleError: OnRuleErrorDeadLetter}},
		{"routing: {on_rule_error: no_match}\n", Routing{OnRuleError: OnRuleErrorNoMatch}},
	}
	for _, tt := range tests {
		cfg, err := Parse("c.yaml", []byte(base+tt.yaml), getenv(nil))
		if err != nil {
			t.Fatalf("%q: %v", tt.yaml, err)
		}
		if !reflect.DeepEqual(cfg.Routing, tt.want) {
			t.Errorf("%q: Routing = %+v, want %+v", tt.yaml, cfg.Routing, tt.want)
		}
	}
}

// TestParse_SinkRate: rate takes per_second (any positive number) and an optional burst,
// which defaults to per_second rounded up; anything else is a problem at its line.
func TestParse_SinkRate(t *testing.T) {
	for _, c := range []struct {
		name, rate string
		want       Rate
		problem    string
	}{
		{"slack", "{per_second: 1, burst: 3}", Rate{PerSecond: 1, Burst: 3}, ""},
		{"default burst", "{per_second: 2.5}", Rate{PerSecond: 2.5, Burst: 3}, ""},
		{"below one", "{per_second: 0.2}", Rate{PerSecond: 0.2, Burst: 1}, ""},
		{"zero", "{per_second: 0}", Rate{}, "p.yaml:2:59: sinks[0].rate.per_second: must be more than 0"},
		{"not a number", "{per_second: fast}", Rate{}, "sinks[0].rate.per_second: invalid number \"fast\""},
		{"missing", "{burst: 2}", Rate{}, "sinks[0].rate: missing per_second"},
		{"bad burst", "{per_second: 1, burst: 0}", Rate{}, "sinks[0].rate.burst: must be at least 1"},
		{"unknown key", "{per_second: 1, per_minute: 3}", Rate{}, "per_minute"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := "apps: [{name: a, verify_token: t, app_secrets: [s]}]\nsinks: [{name: s, type: file, path: x, rate: " + c.rate + "}]\n"
			cfg, err := Parse("p.yaml", []byte(src), noEnv)
			if c.problem != "" {
				if err == nil || !strings.Contains(err.Error(), c.problem) {
					t.Fatalf("Parse = %v, want a problem containing %q", err, c.problem)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Sinks[0].Rate; got != c.want {
				t.Fatalf("rate = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestParse_MemoryLimit(t *testing.T) {
	const base = "apps: [{name: shop, verify_token: t, app_secrets: [s]}]\n"
	for in, want := range map[string]int64{"": 0, "server: {memory_limit: 96MiB}\n": 96 << 20, "server: {memory_limit: 0}\n": 0} {
		cfg, err := Parse("c.yaml", []byte(base+in), noEnv)
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if cfg.Server.MemoryLimit != want {
			t.Errorf("%q: MemoryLimit = %d, want %d", in, cfg.Server.MemoryLimit, want)
		}
	}
	if _, err := Parse("c.yaml", []byte(base+"server: {memory_limit: lots}\n"), noEnv); err == nil || !strings.Contains(err.Error(), "server.memory_limit") {
		t.Errorf("memory_limit: lots: %v, want a problem at server.memory_limit", err)
	}
}
