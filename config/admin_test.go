package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestParse_AdminConsole checks the console's config rules: never on the webhook listener,
// and a token whenever the admin listener is not on loopback.
func TestParse_AdminConsole(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("file-s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const base = "apps: [{name: a, verify_token: t, app_secrets: [s]}]\n"
	tests := []struct {
		name, admin string
		problem     string // "" = valid
		token       string
	}{
		{"loopback without token", "{listen: 127.0.0.1:9090, console: true}", "", ""},
		{"localhost without token", "{listen: 'localhost:9090', console: true}", "", ""},
		{"ipv6 loopback", "{listen: '[::1]:9090', console: true}", "", ""},
		{"all interfaces without token", "{listen: ':9090', console: true}", "admin.console: admin.listen :9090 is not a loopback address: set admin.token or admin.token_file", ""},
		{"public without token", "{listen: 10.0.0.1:9090, console: true}", "admin.console: admin.listen 10.0.0.1:9090 is not a loopback address", ""},
		{"public with token", "{listen: 10.0.0.1:9090, console: true, token: tok-s3cr3t}", "", "tok-s3cr3t"},
		{"public with token file", "{listen: 0.0.0.0:9090, console: true, token_file: " + tokenFile + "}", "", "file-s3cr3t"},
		{"no admin listener", "{console: true}", "admin.console: the console is never served on the webhook listener: set admin.listen", ""},
		{"console off, public, no token", "{listen: 0.0.0.0:9090, console: false}", "", ""},
		{"both token keys", "{listen: 0.0.0.0:9090, console: true, token: x-s3cr3t, token_file: " + tokenFile + "}", "admin.token_file: set token or token_file, not both", ""},
		{"empty token", "{listen: 127.0.0.1:9090, console: true, token: ''}", "admin.token: empty admin token", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := base + "\n" + "admin: " + tc.admin + "\n"
			cfg, err := Parse("c.yaml", []byte(src), noEnv)
			if tc.problem == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if cfg.Admin.Token != tc.token {
					t.Errorf("token = %q, want %q", cfg.Admin.Token, tc.token)
				}
				return
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("Parse = %v, want problems", err)
			}
			if !strings.Contains(ps.Error(), tc.problem) {
				t.Errorf("problems:\n%s\nwant one containing %q", ps.Error(), tc.problem)
			}
			if strings.Contains(ps.Error(), "s3cr3t") {
				t.Errorf("problem quotes the token: %s", ps.Error())
			}
		})
	}
}
