package config

import (
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hubrelay/hubrelay/graph"
)

// Graph configures the Graph API client of `hubrelay subscribe`, `subscriptions` and
// `unsubscribe`. serve does not use it.
type Graph struct {
	// BaseURL is the Graph API root, default graph.DefaultBaseURL; https, or plain http to a
	// loopback address (a test stand-in or a local proxy). No trailing slash.
	BaseURL string
	// Version is the pinned API version, like "v23.0"; default graph.DefaultVersion.
	Version string
	// Timeout bounds each attempt, default graph.DefaultTimeout.
	Timeout time.Duration
	// MaxAttempts counts attempts per call, retries on 5xx and rate limits included; default
	// graph.DefaultMaxAttempts.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the wait between attempts (doubling, with jitter).
	MinBackoff, MaxBackoff time.Duration
}

func defaultGraph() Graph {
	return Graph{
		BaseURL:     graph.DefaultBaseURL,
		Version:     graph.DefaultVersion,
		Timeout:     graph.DefaultTimeout,
		MaxAttempts: graph.DefaultMaxAttempts,
		MinBackoff:  graph.DefaultMinBackoff,
		MaxBackoff:  graph.DefaultMaxBackoff,
	}
}

var (
	graphVersionRE = regexp.MustCompile(`^v[1-9][0-9]*\.[0-9]+$`)
	appIDRE        = regexp.MustCompile(`^[0-9]{1,32}$`)
)

// graph decodes the graph section.
func (d *decoder) graph(n *yaml.Node, path string, g *Graph) {
	f, ok := d.mapping(n, path, "base_url", "version", "timeout", "max_attempts", "min_backoff", "max_backoff")
	if !ok {
		return
	}
	if e, ok := f["base_url"]; ok {
		if v, ok := d.graphURL(e.val, join(path, "base_url")); ok {
			g.BaseURL = v
		}
	}
	if e, ok := f["version"]; ok {
		p := join(path, "version")
		if v, ok := d.nonEmpty(e.val, p); ok {
			if !graphVersionRE.MatchString(v) {
				d.problem(e.val, p, "invalid Graph API version %q: use the form %s", v, graph.DefaultVersion)
			} else {
				g.Version = v
			}
		}
	}
	d.setDuration(f, path, "timeout", true, &g.Timeout)
	d.setInt(f, path, "max_attempts", 1, &g.MaxAttempts)
	d.setDuration(f, path, "min_backoff", false, &g.MinBackoff)
	d.setDuration(f, path, "max_backoff", false, &g.MaxBackoff)
	if g.MaxBackoff < g.MinBackoff {
		if e, ok := f["max_backoff"]; ok {
			d.problem(e.val, join(path, "max_backoff"), "must not be less than min_backoff (%s)", g.MinBackoff)
		} else {
			d.problem(f["min_backoff"].val, join(path, "min_backoff"), "must not be more than max_backoff (%s)", g.MaxBackoff)
		}
	}
}

// graphURL reads graph.base_url: the access token travels to it, so it must be https unless
// it stays on this machine.
func (d *decoder) graphURL(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Host == "" || u.Opaque != "":
		d.problem(n, path, "invalid URL %q: use a root like %s", s, graph.DefaultBaseURL)
	case u.Scheme != "https" && !(u.Scheme == "http" && loopbackHost(u.Hostname())):
		d.problem(n, path, "must be https (plain http only to a loopback address), got %q", u.Scheme+"://"+u.Host)
	case u.User != nil:
		d.problem(n, path, "must not hold credentials: the app's token is sent in a header")
	case u.RawQuery != "" || u.Fragment != "":
		d.problem(n, path, "must not have a query or fragment: use a root like %s", graph.DefaultBaseURL)
	default:
		return strings.TrimRight(s, "/"), true
	}
	return "", false
}

// loopbackHost reports whether host is localhost or a loopback IP address.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// appGraph decodes the keys of an app that only Graph API calls use: app_id and
// access_token (or access_token_file).
func (d *decoder) appGraph(n *yaml.Node, f fields, path string, a *App) {
	if e, ok := f["app_id"]; ok {
		p := join(path, "app_id")
		if v, ok := d.nonEmpty(e.val, p); ok {
			if !appIDRE.MatchString(v) {
				d.problem(e.val, p, "invalid app ID %q: use the numeric App ID from the App Dashboard (Settings > Basic)", v)
			} else {
				a.AppID = v
			}
		}
	}
	d.setPair(n, f, path, "access_token", "access token", false, &a.AccessToken)
}
