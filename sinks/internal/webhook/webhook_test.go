package webhook

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestBackoff_RetryAfter(t *testing.T) {
	const lo, hi = 10 * time.Millisecond, 5 * time.Second
	resp := func(status int, retryAfter string) *http.Response {
		r := &http.Response{StatusCode: status, Header: http.Header{}}
		if retryAfter != "" {
			r.Header.Set("Retry-After", retryAfter)
		}
		return r
	}
	tests := []struct {
		name     string
		resp     *http.Response
		attempt  int
		min, max time.Duration
	}{
		{"429 seconds", resp(429, "2"), 0, 2 * time.Second, 2 * time.Second},
		{"503 seconds", resp(503, "1"), 3, time.Second, time.Second},
		{"429 capped at max", resp(429, "120"), 0, hi, hi},
		{"429 http date capped", resp(429, time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)), 0, hi, hi},
		{"500 ignores Retry-After", resp(500, "120"), 0, lo / 2, lo},
		{"429 unparseable falls back", resp(429, "soon"), 0, 0, lo},
		{"no response, attempt 0", nil, 0, lo / 2, lo},
		{"no response, attempt 3", nil, 3, 4 * lo, 8 * lo},
		{"exponential capped", nil, 60, hi / 2, hi},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 50 {
				if d := backoff(lo, hi, tt.attempt, tt.resp); d < tt.min || d > tt.max {
					t.Fatalf("backoff = %v, want in [%v, %v]", d, tt.min, tt.max)
				}
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct {
		in       string
		hidePath bool
		want     string
	}{
		{"https://u:p@host:8443/a/b?token=x&a=1&a=2", false, "https://host:8443/a/b?a=REDACTED&token=REDACTED"},
		{"http://host/p%20q", false, "http://host/p%20q"},
		{"https://hooks.slack.com/services/T/B/X", true, "https://hooks.slack.com/…"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := redactURL(u, tt.hidePath); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestScrubber(t *testing.T) {
	u, _ := url.Parse("https://admin:pa55word@host/hook?token=s3cr3t&n=1")
	red := redactURL(u, false)
	r := scrubber(u, false, red, []string{"Bearer abcdef", "", "ab"})
	in := strings.Join([]string{
		u.String(), u.Redacted(), "Post \"https://admin:***@host/hook?token=s3cr3t&n=1\": EOF",
		"auth Bearer abcdef", "pa55word", "token=s3cr3t", "status 1 ab",
	}, " | ")
	out := r.Replace(in)
	for _, secret := range []string{"pa55word", "s3cr3t", "abcdef", "admin"} {
		if strings.Contains(out, secret) {
			t.Errorf("%q left in %q", secret, out)
		}
	}
	if !strings.Contains(out, "status 1 ab") {
		t.Errorf("short literals were scrubbed: %q", out)
	}
}

func TestPermanent(t *testing.T) {
	for status, want := range map[int]bool{
		200: false, 302: false, 400: true, 401: true, 403: true, 404: true, 408: false,
		410: true, 422: true, 429: false, 500: false, 501: false, 503: false,
	} {
		if got := Permanent(status); got != want {
			t.Errorf("Permanent(%d) = %v, want %v", status, got, want)
		}
	}
}
