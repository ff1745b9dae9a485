package relay

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The test secrets; never real ones.
const (
	testSecret    = "0123456789abcdef0123456789abcdef"
	testSecretOld = "fedcba9876543210fedcba9876543210"
	testSecretBad = "not-the-secret-of-this-app-00000"
)

func TestSign_KnownValue(t *testing.T) {
	// HMAC-SHA256 test case 2 of RFC 4231 (key "Jefe").
	got := Sign([]byte("what do ya want for nothing?"), "Jefe")
	want := "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	if got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
	// HMAC-SHA1 test case 2 of RFC 2202.
	got = SignSHA1([]byte("what do ya want for nothing?"), "Jefe")
	want = "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
	if got != want {
		t.Errorf("SignSHA1 = %s, want %s", got, want)
	}
}

func TestVerifier_Verify(t *testing.T) {
	body, err := os.ReadFile(filepath.Join("testdata", "decode", "whatsapp_unicode_escaped", "input.json"))
	if err != nil {
		t.Fatal(err)
	}
	sig := Sign(body, testSecret)
	altered := bytes.Clone(body)
	altered[len(altered)/2] ^= 1

	// The re-serialized twin parses to the same JSON but is not the signed byte string.
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	twin, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(twin, body) {
		t.Fatal("twin equals the body")
	}

	both := NewVerifier([]string{testSecret, testSecretOld}, false)
	sha1OK := NewVerifier([]string{testSecret}, true)
	tests := []struct {
		name   string
		v      *Verifier
		body   []byte
		sig256 string
		sig1   string
		reason string // "" for success
	}{
		{"valid", both, body, sig, "", ""},
		{"rotated secret", both, body, Sign(body, testSecretOld), "", ""},
		{"upper case hex", both, body, "sha256=" + strings.ToUpper(sig[len("sha256="):]), "", ""},
		{"upper case prefix", both, body, "SHA256=" + sig[len("sha256="):], "", ""},
		{"surrounding space", both, body, " " + sig + " ", "", ""},
		{"sha256 wins over a bad sha1", sha1OK, body, sig, "sha1=0000", ""},
		{"wrong secret", both, body, Sign(body, testSecretBad), "", "mismatch"},
		{"retired secret", NewVerifier([]string{testSecret}, false), body, Sign(body, testSecretOld), "", "mismatch"},
		{"body altered by one bit", both, altered, sig, "", "mismatch"},
		{"re-serialized twin", both, twin, sig, "", "mismatch"},
		{"empty body signed", both, nil, Sign(nil, testSecret), "", ""},
		{"missing", both, body, "", "", "missing header"},
		{"malformed no prefix", both, body, sig[len("sha256="):], "", "malformed header"},
		{"wrong prefix", both, body, "sha1=" + sig[len("sha256="):], "", "malformed header"},
		{"odd hex", both, body, sig[:len(sig)-1], "", "malformed header"},
		{"too long", both, body, sig + "00", "", "malformed header"},
		{"not hex", both, body, sig[:len(sig)-1] + "g", "", "malformed header"},
		{"prefix only", both, body, "sha256=", "", "malformed header"},
		{"sha1 allowed", sha1OK, body, "", SignSHA1(body, testSecret), ""},
		{"sha1 allowed, wrong secret", sha1OK, body, "", SignSHA1(body, testSecretBad), "mismatch"},
		{"sha1 allowed, malformed", sha1OK, body, "", "sha1=abc", "malformed header"},
		{"sha1 allowed, sha256 prefix", sha1OK, body, "", "sha256=" + SignSHA1(body, testSecret)[len("sha1="):], "malformed header"},
		{"sha1 not allowed", both, body, "", SignSHA1(body, testSecret), "sha1 not allowed"},
		{"sha256 bad, sha1 good", sha1OK, body, Sign(body, testSecretBad), SignSHA1(body, testSecret), "mismatch"},
		{"no secrets", NewVerifier(nil, true), body, sig, "", "mismatch"},
		{"empty secret ignored", NewVerifier([]string{""}, false), body, Sign(body, ""), "", "mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Verify(tt.body, tt.sig256, tt.sig1)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrSignature) {
				t.Fatalf("got %v, want ErrSignature", err)
			}
			var se *SignatureError
			if !errors.As(err, &se) || se.Reason != tt.reason {
				t.Fatalf("got %v, want reason %q", err, tt.reason)
			}
			checkNoSecrets(t, err.Error(), tt.body, tt.sig256, tt.sig1)
		})
	}
}

// checkNoSecrets fails if msg holds a secret or a MAC, received or expected, in any case.
func checkNoSecrets(t *testing.T, msg string, body []byte, headers ...string) {
	t.Helper()
	lower := strings.ToLower(msg)
	secrets := []string{testSecret, testSecretOld, testSecretBad}
	forbidden := append([]string(nil), secrets...)
	for _, s := range secrets {
		forbidden = append(forbidden, Sign(body, s)[len("sha256="):], SignSHA1(body, s)[len("sha1="):])
	}
	for _, h := range headers {
		if i := strings.IndexByte(h, '='); i >= 0 && len(h)-i > 9 {
			forbidden = append(forbidden, strings.ToLower(strings.TrimSpace(h[i+1:])))
		}
	}
	for _, f := range forbidden {
		// Any 16-character run of a MAC or secret is a leak.
		for i := 0; i+16 <= len(f); i += 8 {
			if strings.Contains(lower, f[i:i+16]) {
				t.Fatalf("error %q leaks part of %q", msg, f)
			}
		}
	}
}

func TestVerifier_Concurrent(t *testing.T) {
	v := NewVerifier([]string{testSecretOld, testSecret}, true)
	bodies := [][]byte{[]byte(`{"a":1}`), []byte(`{"b":2}`), bytes.Repeat([]byte("x"), 10000)}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				body := bodies[(g+i)%len(bodies)]
				if err := v.Verify(body, Sign(body, testSecret), ""); err != nil {
					errs <- err
					return
				}
				if err := v.Verify(body, "", SignSHA1(body, testSecretOld)); err != nil {
					errs <- err
					return
				}
				if err := v.Verify(body, Sign(bodies[(g+i+1)%len(bodies)], testSecret), ""); err == nil {
					errs <- errors.New("signature of another body accepted")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"object":"page","entry":[]}`), "sha256=00")
	f.Add([]byte{}, "")
	f.Add([]byte("x"), "sha1=0123456789abcdef0123456789abcdef01234567")
	v := NewVerifier([]string{testSecretOld, testSecret}, true)
	f.Fuzz(func(t *testing.T, body []byte, header string) {
		// Arbitrary headers never panic, and only a correct MAC passes.
		err256 := v.Verify(body, header, "")
		if err256 == nil && !strings.EqualFold(strings.TrimSpace(header), Sign(body, testSecret)) &&
			!strings.EqualFold(strings.TrimSpace(header), Sign(body, testSecretOld)) {
			t.Fatalf("header %q accepted", header)
		}
		err1 := v.Verify(body, "", header)
		if err1 == nil && !strings.EqualFold(strings.TrimSpace(header), SignSHA1(body, testSecret)) &&
			!strings.EqualFold(strings.TrimSpace(header), SignSHA1(body, testSecretOld)) {
			t.Fatalf("sha1 header %q accepted", header)
		}
		for _, err := range []error{err256, err1} {
			if err != nil {
				if !errors.Is(err, ErrSignature) {
					t.Fatalf("error %v is not ErrSignature", err)
				}
				checkNoSecrets(t, err.Error(), body, header)
			}
		}
		// A valid signature always verifies, whatever the body.
		if err := v.Verify(body, Sign(body, testSecret), header); err != nil {
			t.Fatalf("valid signature refused: %v", err)
		}
		if err := v.Verify(body, "", SignSHA1(body, testSecretOld)); err != nil {
			t.Fatalf("valid sha1 signature refused: %v", err)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	small, err := os.ReadFile(filepath.Join("testdata", "decode", "whatsapp_text_message", "input.json"))
	if err != nil {
		b.Fatal(err)
	}
	large, err := os.ReadFile(filepath.Join("testdata", "decode", "large_batch_messenger_100_entries", "input.json"))
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		body []byte
	}{{"1KB", small}, {"44KB", large}} {
		v := NewVerifier([]string{testSecretOld, testSecret}, false)
		sig := Sign(bc.body, testSecret)
		b.Run(bc.name+"/pooled", func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := v.Verify(bc.body, sig, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/hmac.New-per-call", func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			want, _ := hex.DecodeString(sig[len("sha256="):])
			for b.Loop() {
				// What Verify would cost without the pools: a fresh HMAC per secret.
				ok := false
				for _, s := range []string{testSecretOld, testSecret} {
					m := hmac.New(sha256.New, []byte(s))
					m.Write(bc.body)
					ok = ok || hmac.Equal(m.Sum(nil), want)
				}
				if !ok {
					b.Fatal("refused")
				}
			}
		})
		b.Run(bc.name+"/mismatch", func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			bad := Sign(bc.body, testSecretBad)
			for b.Loop() {
				if err := v.Verify(bc.body, bad, ""); err == nil {
					b.Fatal("accepted")
				}
			}
		})
	}
}
