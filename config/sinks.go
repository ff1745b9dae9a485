package config

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/hubrelay/hubrelay/internal/httptoken"
	"github.com/hubrelay/hubrelay/rules"
	"gopkg.in/yaml.v3"
)

// sinkKeys lists every sink key with the sink types it applies to (nil: all types).
var sinkKeys = map[string][]string{
	"name":             nil,
	"type":             nil,
	"concurrency":      nil,
	"retry":            nil,
	"batch":            {SinkHTTP, SinkFile},
	"rate":             nil,
	"order_by":         nil,
	"timeout":          {SinkHTTP, SinkSlack},
	"url":              {SinkHTTP},
	"method":           {SinkHTTP},
	"headers":          {SinkHTTP},
	"body":             {SinkHTTP},
	"sign_secret":      {SinkHTTP},
	"sign_secret_file": {SinkHTTP},
	"webhook_url":      {SinkSlack},
	"webhook_url_file": {SinkSlack},
	"text":             {SinkSlack},
	"blocks":           {SinkSlack},
	"path":             {SinkFile},
	"max_bytes":        {SinkFile},
	"max_files":        {SinkFile},
}

// sinkKeyOrder is sinkKeys' keys in the order they are documented.
var sinkKeyOrder = []string{"name", "type", "concurrency", "retry", "batch", "rate", "order_by", "timeout", "url", "method", "headers",
	"body", "sign_secret", "sign_secret_file", "webhook_url", "webhook_url_file", "text", "blocks", "path",
	"max_bytes", "max_files"}

var sinkTypes = []string{SinkHTTP, SinkSlack, SinkFile}

// RuleErrorSink is the name of the built-in sink that dead-letters changes a rule failed to
// evaluate for (relay.RuleErrorSink); no configured sink may take it.
const RuleErrorSink = "rule-errors"

// sinks decodes the sinks list. It also returns the name of every sink that has one, valid
// or not, so that rules naming a sink with other problems are not reported again.
func (d *decoder) sinks(n *yaml.Node, path string) ([]Sink, map[string]bool) {
	names := make(map[string]bool)
	items, ok := d.sequence(n, path)
	if !ok {
		return nil, names
	}
	lines := make(map[string]int)
	var sinks []Sink
	for i, it := range items {
		p := index(path, i)
		f, ok := d.mapping(it, p, sinkKeyOrder...)
		if !ok {
			continue
		}
		var name string
		if e, ok := f["name"]; ok {
			if v, ok := d.nonEmpty(e.val, join(p, "name")); ok {
				if line, dup := lines[v]; dup {
					d.problem(e.val, join(p, "name"), "duplicate sink name %q (first at line %d)", v, line)
				}
				if v == RuleErrorSink {
					d.problem(e.val, join(p, "name"), "%q is the built-in sink of changes a rule failed to evaluate for: choose another name", v)
				}
				lines[v] = e.val.Line
				names[v] = true
				name = v
			}
		} else {
			d.missing(it, p, "name", "every sink needs a name for rules to refer to")
		}
		typ := ""
		if e, ok := f["type"]; ok {
			if v, ok := d.str(e.val, join(p, "type")); ok {
				if slices.Contains(sinkTypes, v) {
					typ = v
				} else {
					d.problem(e.val, join(p, "type"), "unknown sink type %q: use http, slack or file%s", v, suggest(v, sinkTypes))
				}
			}
		} else {
			d.missing(it, p, "type", "use http, slack or file")
		}
		if typ == "" {
			continue
		}
		s := DefaultSink(typ)
		s.Name = name
		for _, key := range sinkKeyOrder {
			e, ok := f[key]
			if types := sinkKeys[key]; ok && types != nil && !slices.Contains(types, typ) {
				d.problem(e.key, join(p, key), "%s is not an option of a%s %s sink", key, article(typ), typ)
				delete(f, key)
			}
		}
		d.setInt(f, p, "concurrency", 1, &s.Concurrency)
		if e, ok := f["retry"]; ok {
			d.retry(e.val, join(p, "retry"), &s.Retry)
		}
		if e, ok := f["batch"]; ok {
			d.batch(e.val, join(p, "batch"), &s.Batch)
		}
		if e, ok := f["rate"]; ok {
			d.rate(e.val, join(p, "rate"), &s.Rate)
		}
		if e, ok := f["order_by"]; ok {
			d.orderBy(e.val, join(p, "order_by"), &s)
		}
		d.setDuration(f, p, "timeout", true, &s.Timeout)
		switch typ {
		case SinkHTTP:
			d.httpSink(it, f, p, &s)
		case SinkSlack:
			d.slackSink(it, f, p, &s)
		case SinkFile:
			d.setStr(f, p, "path", &s.Path)
			if !f.has("path") {
				d.missing(it, p, "path", "name the file to append changes to")
			}
			d.setSize(f, p, "max_bytes", false, &s.MaxBytes)
			d.setInt(f, p, "max_files", 0, &s.MaxFiles)
		}
		if e, ok := f["order_by"]; ok && s.Body == BodyRaw && s.OrderBy != nil {
			d.problem(e.key, join(p, "order_by"), "a body: raw sink forwards whole notifications, which may hold changes of several conversations, and cannot order them: remove order_by or use body: envelope")
		}
		sinks = append(sinks, s)
	}
	return sinks, names
}

// orderBy compiles a sink's order_by expression.
func (d *decoder) orderBy(n *yaml.Node, path string, s *Sink) {
	v, ok := d.nonEmpty(n, path)
	if !ok {
		return
	}
	k, err := rules.CompileKey(v)
	if err != nil {
		d.exprProblem(n, path, v, err)
		return
	}
	s.OrderBy = k
}

func article(typ string) string {
	if typ == SinkHTTP {
		return "n"
	}
	return ""
}

func (d *decoder) retry(n *yaml.Node, path string, r *Retry) {
	f, ok := d.mapping(n, path, "max_attempts", "min_backoff", "max_backoff", "max_age", "in_process")
	if !ok {
		return
	}
	d.setInt(f, path, "max_attempts", 1, &r.MaxAttempts)
	d.setDuration(f, path, "min_backoff", true, &r.MinBackoff)
	d.setDuration(f, path, "max_backoff", true, &r.MaxBackoff)
	d.setDuration(f, path, "max_age", true, &r.MaxAge)
	d.setInt(f, path, "in_process", 0, &r.InProcess)
	if r.MinBackoff > r.MaxBackoff {
		if e, ok := f["min_backoff"]; ok {
			d.problem(e.val, join(path, "min_backoff"), "%s is more than max_backoff %s", r.MinBackoff, r.MaxBackoff)
		} else if e, ok := f["max_backoff"]; ok {
			d.problem(e.val, join(path, "max_backoff"), "%s is less than min_backoff %s", r.MaxBackoff, r.MinBackoff)
		}
	}
}

func (d *decoder) rate(n *yaml.Node, path string, r *Rate) {
	f, ok := d.mapping(n, path, "per_second", "burst")
	if !ok {
		return
	}
	if e, ok := f["per_second"]; ok {
		p := join(path, "per_second")
		if x, ok := d.scalar(e.val, p); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(x.val), 64)
			switch {
			case err != nil || math.IsNaN(v) || math.IsInf(v, 0):
				d.problem(e.val, p, "invalid number %q: use requests per second, like 1 or 0.5", x.val)
			case v <= 0:
				d.problem(e.val, p, "must be more than 0 (got %s); remove rate for no limit", x.val)
			default:
				r.PerSecond = v
			}
		}
	} else {
		d.missing(n, path, "per_second", "set the sustained requests per second")
	}
	d.setInt(f, path, "burst", 1, &r.Burst)
	if r.Burst == 0 && r.PerSecond > 0 {
		r.Burst = max(1, int(math.Ceil(r.PerSecond)))
	}
}

func (d *decoder) batch(n *yaml.Node, path string, b *Batch) {
	f, ok := d.mapping(n, path, "max_changes", "max_bytes", "max_wait")
	if !ok {
		return
	}
	d.setInt(f, path, "max_changes", 0, &b.MaxChanges)
	d.setSize(f, path, "max_bytes", false, &b.MaxBytes)
	d.setDuration(f, path, "max_wait", false, &b.MaxWait)
}

func (d *decoder) httpSink(n *yaml.Node, f fields, path string, s *Sink) {
	if e, ok := f["url"]; ok {
		p := join(path, "url")
		// The URL may carry credentials: messages describe it without quoting it.
		if x, ok := d.scalar(e.val, p); ok {
			if msg := checkURL(x.val, false); msg != "" {
				d.problem(e.val, p, "%s%s", msg, unsetHint(x))
			} else {
				s.URL = x.val
			}
		}
	} else {
		d.missing(n, path, "url", "name the endpoint to POST changes to")
	}
	if e, ok := f["method"]; ok {
		p := join(path, "method")
		if v, ok := d.str(e.val, p); ok {
			if m := strings.ToUpper(v); m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch {
				s.Method = m
			} else {
				d.problem(e.val, p, "invalid method %q: use POST, PUT or PATCH", v)
			}
		}
	}
	if e, ok := f["headers"]; ok {
		s.Headers = d.headers(e.val, join(path, "headers"))
	}
	d.setOneOf(f, path, "body", &s.Body, BodyEnvelope, BodyRaw)
	d.setPair(n, f, path, "sign_secret", "sign secret", false, &s.SignSecret)
	if e, ok := f["batch"]; ok && s.Body == BodyRaw && s.Batch.MaxChanges > 1 {
		d.problem(e.key, join(path, "batch"), "a body: raw sink forwards each Meta notification with its own signature and cannot batch: remove batch or use body: envelope")
	}
}

// headers decodes a mapping of header names to values. Values may hold secrets and are never
// quoted in messages.
func (d *decoder) headers(n *yaml.Node, path string) map[string]string {
	n = resolve(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.problem(n, path, "must be a mapping of header names to values, not %s", kindName(n))
		return nil
	}
	if !d.visit(n, path, len(n.Content)/2) {
		return nil
	}
	h := make(map[string]string, len(n.Content)/2)
	lines := make(map[string]int)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		name := d.env.restore(k.Value)
		p := join(path, name)
		if k.Kind != yaml.ScalarNode || !httptoken.Valid(name) {
			d.problem(k, p, "invalid header name")
			continue
		}
		canon := http.CanonicalHeaderKey(name)
		if line, dup := lines[canon]; dup {
			d.problem(k, p, "duplicate header %s (first at line %d)", canon, line)
			continue
		}
		lines[canon] = k.Line
		switch canon {
		case "Content-Type", "Content-Length", "Host", "X-Hubrelay-Signature-256", "Transfer-Encoding":
			d.problem(k, p, "header %s is set by the relay", canon)
			continue
		}
		x, ok := d.scalar(v, p)
		if !ok {
			continue
		}
		switch {
		case len(x.unset) > 0:
			d.problem(v, p, "value uses %s, which is not set (write ${NAME:-} for an intended empty value)", strings.Join(x.unset, ", "))
		case strings.ContainsAny(x.val, "\r\n\x00"):
			d.problem(v, p, "value must be a single line")
		default:
			h[canon] = x.val
		}
	}
	return h
}

func (d *decoder) slackSink(n *yaml.Node, f fields, path string, s *Sink) {
	node := d.setPair(n, f, path, "webhook_url", "webhook URL", true, &s.WebhookURL)
	if s.WebhookURL != "" {
		// Slack webhook URLs are secrets: describe, never quote.
		if msg := checkURL(s.WebhookURL, true); msg != "" {
			key := "webhook_url"
			if !f.has(key) {
				key += "_file"
			}
			d.problem(node, join(path, key), "%s", msg)
			s.WebhookURL = ""
		}
	}
	if e, ok := f["text"]; ok {
		p := join(path, "text")
		if v, ok := d.nonEmpty(e.val, p); ok {
			if t, err := rules.CompileText(v); err != nil {
				d.exprProblem(e.val, p, v, err)
			} else {
				s.Text = t
			}
		}
	}
	if e, ok := f["blocks"]; ok {
		p := join(path, "blocks")
		if v, ok := d.nonEmpty(e.val, p); ok {
			if t, err := rules.CompileAny(v); err != nil {
				d.exprProblem(e.val, p, v, err)
			} else {
				s.Blocks = t
			}
		}
	}
}

// checkURL returns what is wrong with an http or https URL, or "". When httpsOnly is set,
// plain http is accepted only for loopback hosts. The message never quotes the URL.
func checkURL(raw string, httpsOnly bool) string {
	if raw == "" {
		return "empty URL"
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "invalid URL"
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case scheme == "":
		return "must be an absolute http or https URL"
	case scheme != "http" && scheme != "https":
		return fmt.Sprintf("must be an http or https URL (got scheme %q)", u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return "URL has no host"
	case httpsOnly && scheme == "http" && !isLoopback(u.Hostname()):
		return "must be an https URL (http is allowed only for loopback hosts)"
	}
	return ""
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
