package graph

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"strings"
)

// redacted replaces every secret in errors and logs.
const redacted = "REDACTED"

// Token is a Graph API access token. It prints as "REDACTED" through fmt (%v, %s, %q, %#v)
// and slog, so it cannot reach an output by accident; only the Client reads its value. The
// zero Token is empty.
type Token struct {
	value string
	// proof is the appsecret_proof sent with the token, when the app secret is known.
	proof string
	// secrets are the literals never to print: the token and, for an app token, its secret.
	secrets []string
}

// AppToken returns the app access token "{app-id}|{app-secret}", which Meta accepts for calls
// an app makes on its own behalf, such as /{app-id}/subscriptions.
func AppToken(appID, appSecret string) Token {
	return Token{value: appID + "|" + appSecret, secrets: []string{appID + "|" + appSecret, appSecret}}
}

// UserToken returns a system-user, user or page access token. With appSecret set, calls carry
// appsecret_proof (HMAC-SHA256 of the token keyed by the app secret), which Meta requires
// when the app has "Require App Secret" turned on.
func UserToken(token, appSecret string) Token {
	t := Token{value: token, secrets: []string{token}}
	if appSecret != "" {
		m := hmac.New(sha256.New, []byte(appSecret))
		m.Write([]byte(token))
		t.proof = hex.EncodeToString(m.Sum(nil))
		t.secrets = append(t.secrets, appSecret, t.proof)
	}
	return t
}

// IsZero reports whether t holds no token.
func (t Token) IsZero() bool { return t.value == "" }

// String returns "REDACTED".
func (t Token) String() string { return redacted }

// GoString returns "REDACTED", so %#v does not print the token either.
func (t Token) GoString() string { return redacted }

// LogValue returns "REDACTED" to slog.
func (t Token) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText returns "REDACTED", so a Token marshalled by accident stays secret.
func (t Token) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// minSecretLen is the length under which an extra literal is not scrubbed from free text:
// shorter strings are not secrets and replacing them would mangle messages.
const minSecretLen = 4

// scrubber returns a replacer turning every secret literal into "REDACTED", longest first.
func scrubber(secrets ...[]string) *strings.Replacer {
	var all []string
	seen := map[string]bool{}
	for _, list := range secrets {
		for _, s := range list {
			if len(s) >= minSecretLen && !seen[s] {
				seen[s] = true
				all = append(all, s)
			}
		}
	}
	// Longer first, so a secret containing another is replaced whole.
	for i := 1; i < len(all); i++ {
		for j := i; j > 0 && len(all[j]) > len(all[j-1]); j-- {
			all[j], all[j-1] = all[j-1], all[j]
		}
	}
	args := make([]string, 0, 2*len(all))
	for _, s := range all {
		args = append(args, s, redacted)
	}
	return strings.NewReplacer(args...)
}
