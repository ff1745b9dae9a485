package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const pgBase = `apps: [{name: shop, verify_token: t, app_secrets: [s]}]
sinks: [{name: a, type: file, path: /tmp/a.jsonl}]
rules: [{name: r, object: page, sinks: [a]}]
`

func TestParse_Postgres(t *testing.T) {
	urlFile := filepath.Join(t.TempDir(), "pg-url")
	if err := os.WriteFile(urlFile, []byte("postgres://relay:filepw@db:5432/hub\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		yaml  string
		want  Postgres
		probs []string // substrings, one per problem, in order
	}{
		{name: "defaults", yaml: "storage: {postgres: {url: 'postgres://relay:pw@db/hub?sslmode=require'}}",
			want: Postgres{URL: "postgres://relay:pw@db/hub?sslmode=require", Schema: "hubrelay", MaxConns: 16, Lease: 30 * time.Second, PollInterval: 500 * time.Millisecond, SinkGrace: 10 * time.Minute}},
		{name: "all keys", yaml: "storage: {postgres: {url: 'host=db dbname=hub', schema: relay_2, max_conns: 8, lease: 1m, poll_interval: 2s, sink_grace: 3m}}",
			want: Postgres{URL: "host=db dbname=hub", Schema: "relay_2", MaxConns: 8, Lease: time.Minute, PollInterval: 2 * time.Second, SinkGrace: 3 * time.Minute}},
		{name: "url_file", yaml: "storage: {postgres: {url_file: " + urlFile + "}}",
			want: Postgres{URL: "postgres://relay:filepw@db:5432/hub", Schema: "hubrelay", MaxConns: 16, Lease: 30 * time.Second, PollInterval: 500 * time.Millisecond, SinkGrace: 10 * time.Minute}},
		{name: "problems", yaml: "storage: {postgres: {url: 'postgres://u:hunter2@db:x/hub', schema: Bad-Name, max_conns: 1, lease: 1s, poll: 1s, sink_grace: 0s}}",
			probs: []string{"storage.postgres.url: not a valid URL", "storage.postgres.schema: invalid schema name",
				"storage.postgres.max_conns: must be at least 2", "storage.postgres.lease: must be at least 3s", "storage.postgres.poll: unknown key",
				"storage.postgres.sink_grace: "}},
		{name: "missing url", yaml: "storage: {postgres: {schema: x}}", probs: []string{"missing url: set url or url_file"}},
		{name: "both", yaml: "storage: {postgres: {url: 'host=db', url_file: " + urlFile + "}}", probs: []string{"set url or url_file, not both"}},
		{name: "not postgres", yaml: "storage: {postgres: {url: 'mysql://u:hunter2@db/hub'}}", probs: []string{"not a PostgreSQL URL"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("c.yaml", []byte(pgBase+tt.yaml+"\n"), func(string) string { return "" })
			if len(tt.probs) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if cfg.Storage.Postgres == nil || *cfg.Storage.Postgres != tt.want {
					t.Fatalf("Postgres = %+v, want %+v", cfg.Storage.Postgres, tt.want)
				}
				return
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("Parse = %v, want Problems", err)
			}
			if len(ps) != len(tt.probs) {
				t.Fatalf("%d problems, want %d:\n%v", len(ps), len(tt.probs), err)
			}
			for i, p := range ps {
				if !strings.Contains(p.Error(), tt.probs[i]) {
					t.Errorf("problem %d = %q, want it to contain %q", i, p.Error(), tt.probs[i])
				}
				if strings.Contains(p.Error(), "hunter2") {
					t.Errorf("problem %d holds the password: %s", i, p.Error())
				}
			}
		})
	}
	// Without the key nothing changes: the embedded spool.
	cfg, err := Parse("c.yaml", []byte(pgBase), func(string) string { return "" })
	if err != nil || cfg.Storage.Postgres != nil {
		t.Fatalf("no storage.postgres: %+v, %v", cfg.Storage.Postgres, err)
	}
}
