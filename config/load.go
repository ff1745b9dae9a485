package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hubrelay/hubrelay/internal/httptoken"
	"gopkg.in/yaml.v3"
)

// Load reads the config file at path and parses it with Parse. A file that cannot be read is
// an ordinary error; everything wrong inside the file is reported as Problems.
func Load(path string, getenv func(string) string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data, getenv)
}

// Parse parses and validates a config file's contents, named file in problems. It expands
// ${NAME} and ${NAME:-default} in values using getenv (os.Getenv when nil), reads the
// secrets named by *_file keys, applies defaults (see Default and DefaultSink), compiles every
// rule and template, and returns the result. When anything is wrong it returns nil and
// Problems holding every problem found, sorted by line; messages never include secret values.
// Relative paths in the file (storage, dead letters, sink files, *_file keys, TLS files) are
// relative to the current directory, not to the config file.
func Parse(file string, data []byte, getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	d := &decoder{file: file, getenv: getenv, where: map[string]string{}}
	cfg := Default()
	cfg.File = file
	cfg.where = d.where
	if root := d.parse(data); root != nil {
		d.config(root, &cfg)
	}
	if len(d.probs) > 0 {
		d.probs.sort()
		if d.truncated {
			last := d.probs[len(d.probs)-1]
			d.probs = append(d.probs, Problem{File: file, Line: last.Line, Col: last.Col,
				Msg: fmt.Sprintf("too many problems: stopped after %d", maxProblems)})
		}
		return nil, d.probs
	}
	return &cfg, nil
}

// topKeys are the sections of a config file.
var topKeys = []string{"server", "admin", "log", "apps", "storage", "dead_letter", "sinks", "rules", "routing", "graph"}

// config decodes the root mapping into c, section by section in dependency order.
func (d *decoder) config(root *yaml.Node, c *Config) {
	f, ok := d.mapping(root, "", topKeys...)
	if !ok {
		return
	}
	d.server(f["server"].val, "server", &c.Server)
	d.admin(f["admin"].val, "admin", &c.Admin, c.Server.Listen)
	d.log(f["log"].val, "log", &c.Log)
	if !f.has("apps") {
		d.problem(root, "", "missing apps: at least one app is required")
	} else {
		c.Apps = d.apps(f["apps"].val, "apps", c.Server.Path)
	}
	d.storage(f["storage"].val, "storage", &c.Storage)
	c.DeadLetter.Dir = defaultDeadLetterDir(c.Storage.Dir)
	d.deadLetter(f["dead_letter"].val, "dead_letter", &c.DeadLetter)
	sinks, names := d.sinks(f["sinks"].val, "sinks")
	c.Sinks = sinks
	d.graph(f["graph"].val, "graph", &c.Graph)
	if set := d.rules(f["rules"].val, "rules", names); set != nil {
		c.Rules = set
	}
	d.routing(f["routing"].val, "routing", names, &c.Routing)
}

// The set* helpers decode fields[key], when present, into dst.

func (d *decoder) setStr(f fields, path, key string, dst *string) {
	if e, ok := f[key]; ok {
		if v, ok := d.nonEmpty(e.val, join(path, key)); ok {
			*dst = v
		}
	}
}

func (d *decoder) setInt(f fields, path, key string, min int, dst *int) {
	if e, ok := f[key]; ok {
		if v, ok := d.integer(e.val, join(path, key), min); ok {
			*dst = v
		}
	}
}

func (d *decoder) setBool(f fields, path, key string, dst *bool) {
	if e, ok := f[key]; ok {
		if v, ok := d.boolean(e.val, join(path, key)); ok {
			*dst = v
		}
	}
}

func (d *decoder) setDuration(f fields, path, key string, positive bool, dst *time.Duration) {
	if e, ok := f[key]; ok {
		if v, ok := d.duration(e.val, join(path, key), positive); ok {
			*dst = v
		}
	}
}

func (d *decoder) setSize(f fields, path, key string, positive bool, dst *int64) {
	if e, ok := f[key]; ok {
		if v, ok := d.size(e.val, join(path, key), positive); ok {
			*dst = v
		}
	}
}

func (d *decoder) setOneOf(f fields, path, key string, dst *string, choices ...string) {
	if e, ok := f[key]; ok {
		if v, ok := d.oneOf(e.val, join(path, key), choices...); ok {
			*dst = v
		}
	}
}

// missing reports a required key absent from the mapping n.
func (d *decoder) missing(n *yaml.Node, path, key, why string) {
	d.problem(resolve(n), path, "missing %s: %s", key, why)
}

// setPair decodes a value given either inline as key or in a file as key_file, requiring
// exactly one of them when required is set. It returns the node to report later problems
// at.
func (d *decoder) setPair(n *yaml.Node, f fields, path, key, what string, required bool, dst *string) *yaml.Node {
	e, inline := f[key]
	ef, fromFile := f[key+"_file"]
	switch {
	case inline && fromFile:
		d.problem(ef.key, join(path, key+"_file"), "set %s or %s_file, not both", key, key)
		return nil
	case inline:
		if v, ok := d.secret(e.val, join(path, key), what); ok {
			*dst = v
		}
		return e.val
	case fromFile:
		if v, ok := d.secretFile(ef.val, join(path, key+"_file"), what); ok {
			*dst = v
		}
		return ef.val
	case required:
		d.missing(n, path, key, fmt.Sprintf("set %s or %s_file", key, key))
	}
	return nil
}

// listen reads a host:port address.
func (d *decoder) listen(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	_, port, err := net.SplitHostPort(s)
	if p, perr := strconv.Atoi(port); err != nil || perr != nil || p < 0 || p > 65535 {
		d.problem(n, path, "invalid address %q: use host:port, like 127.0.0.1:8080", s)
		return "", false
	}
	return s, true
}

// urlPath reads an HTTP path.
func (d *decoder) urlPath(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if ok && !strings.HasPrefix(s, "/") {
		d.problem(n, path, "must start with / (got %q)", s)
		return "", false
	}
	return s, ok
}

func (d *decoder) server(n *yaml.Node, path string, s *Server) {
	f, ok := d.mapping(n, path, "listen", "path", "max_body_bytes", "read_header_timeout", "read_timeout",
		"write_timeout", "idle_timeout", "shutdown_timeout", "max_changes", "max_json_depth", "max_concurrent",
		"max_concurrent_per_ip", "max_event_age", "tls", "trusted_proxy", "max_connections",
		"max_connections_per_ip", "min_body_rate", "body_grace", "max_body_bytes_in_flight", "memory_limit")
	if !ok {
		return
	}
	if e, ok := f["listen"]; ok {
		if v, ok := d.listen(e.val, join(path, "listen")); ok {
			s.Listen = v
		}
	}
	if e, ok := f["path"]; ok {
		if v, ok := d.urlPath(e.val, join(path, "path")); ok {
			s.Path = v
		}
	}
	d.setSize(f, path, "max_body_bytes", true, &s.MaxBodyBytes)
	d.setDuration(f, path, "read_header_timeout", true, &s.ReadHeaderTimeout)
	d.setDuration(f, path, "read_timeout", true, &s.ReadTimeout)
	d.setDuration(f, path, "write_timeout", true, &s.WriteTimeout)
	d.setDuration(f, path, "idle_timeout", true, &s.IdleTimeout)
	d.setDuration(f, path, "shutdown_timeout", true, &s.ShutdownTimeout)
	d.setInt(f, path, "max_changes", 1, &s.MaxChanges)
	d.setInt(f, path, "max_json_depth", 1, &s.MaxJSONDepth)
	d.setInt(f, path, "max_concurrent", 1, &s.MaxConcurrent)
	d.setInt(f, path, "max_concurrent_per_ip", 1, &s.MaxConcurrentIP)
	d.setDuration(f, path, "max_event_age", false, &s.MaxEventAge)
	d.setInt(f, path, "max_connections", 1, &s.MaxConnections)
	d.setInt(f, path, "max_connections_per_ip", 1, &s.MaxConnectionsIP)
	d.setSize(f, path, "min_body_rate", false, &s.MinBodyRate)
	d.setDuration(f, path, "body_grace", false, &s.BodyGrace)
	d.setSize(f, path, "max_body_bytes_in_flight", true, &s.MaxBodyBytesInFlight)
	d.setSize(f, path, "memory_limit", false, &s.MemoryLimit)
	if s.MaxConnectionsIP > s.MaxConnections {
		d.problem(f.valueOf(n, "max_connections_per_ip", "max_connections"), join(path, "max_connections_per_ip"),
			"must not exceed max_connections (%d > %d)", s.MaxConnectionsIP, s.MaxConnections)
	}
	if s.MaxBodyBytesInFlight < s.MaxBodyBytes {
		d.problem(f.valueOf(n, "max_body_bytes_in_flight", "max_body_bytes"), join(path, "max_body_bytes_in_flight"),
			"must be at least max_body_bytes (%d < %d), or no body of the largest size could be read", s.MaxBodyBytesInFlight, s.MaxBodyBytes)
	}
	if e, ok := f["tls"]; ok {
		s.TLS = d.tls(e.val, join(path, "tls"))
	}
	if e, ok := f["trusted_proxy"]; ok {
		s.TrustedProxy = d.trustedProxy(e.val, join(path, "trusted_proxy"))
		if s.TrustedProxy != nil && s.TLS != nil && s.TLS.ClientCAFile != "" {
			d.problem(e.key, join(path, "trusted_proxy"), "use either tls.client_ca_file (hubrelay checks Meta's certificate) or trusted_proxy (a load balancer does), not both")
		}
	}
}

// tls decodes server.tls; a null section means plain HTTP.
func (d *decoder) tls(n *yaml.Node, path string) *TLS {
	if isNull(resolve(n)) {
		return nil
	}
	f, ok := d.mapping(n, path, "cert_file", "key_file", "client_ca_file", "client_common_names")
	if !ok {
		return nil
	}
	t := &TLS{}
	d.setFile(f, path, "cert_file", &t.CertFile)
	d.setFile(f, path, "key_file", &t.KeyFile)
	d.setFile(f, path, "client_ca_file", &t.ClientCAFile)
	switch {
	case !f.has("cert_file") && !f.has("key_file"):
		d.missing(n, path, "cert_file and key_file", "native TLS needs a certificate and its key")
	case !f.has("key_file"):
		d.missing(n, path, "key_file", "the certificate needs its private key")
	case !f.has("cert_file"):
		d.missing(n, path, "cert_file", "the private key needs its certificate")
	}
	if e, ok := f["client_common_names"]; ok {
		if !f.has("client_ca_file") {
			d.problem(e.key, join(path, "client_common_names"), "needs client_ca_file: common names are checked only on verified client certificates")
		}
		if v, ok := d.strList(e.val, join(path, "client_common_names")); ok {
			t.ClientCommonNames = v
		}
	} else if t.ClientCAFile != "" {
		t.ClientCommonNames = []string{DefaultClientCommonName}
	}
	return t
}

// setFile decodes the name of a file that must exist.
func (d *decoder) setFile(f fields, path, key string, dst *string) {
	e, ok := f[key]
	if !ok {
		return
	}
	p := join(path, key)
	name, ok := d.nonEmpty(e.val, p)
	if !ok {
		return
	}
	if _, err := os.Stat(name); err != nil {
		d.problem(e.val, p, "%v", unwrapPath(err))
		return
	}
	*dst = name
}

// trustedProxy decodes server.trusted_proxy; a null section means off.
func (d *decoder) trustedProxy(n *yaml.Node, path string) *TrustedProxy {
	if isNull(resolve(n)) {
		return nil
	}
	f, ok := d.mapping(n, path, "subject_header", "common_name", "from")
	if !ok {
		return nil
	}
	t := &TrustedProxy{SubjectHeader: DefaultSubjectHeader, CommonNames: []string{DefaultClientCommonName}}
	if e, ok := f["subject_header"]; ok {
		p := join(path, "subject_header")
		if v, ok := d.nonEmpty(e.val, p); ok {
			if !httptoken.Valid(v) {
				d.problem(e.val, p, "invalid header name %q", v)
			} else {
				t.SubjectHeader = v
			}
		}
	}
	if e, ok := f["common_name"]; ok {
		if v, ok := d.strList(e.val, join(path, "common_name")); ok {
			if len(v) == 0 {
				d.problem(e.val, join(path, "common_name"), "must name at least one common name")
			} else {
				t.CommonNames = v
			}
		}
	}
	e, ok := f["from"]
	if !ok {
		d.missing(n, path, "from", "list the networks of the proxies trusted to set "+t.SubjectHeader)
		return t
	}
	p := join(path, "from")
	for _, it := range d.items(e.val, p) {
		if v, ok := d.prefix(it.node, it.path); ok {
			t.From = append(t.From, v)
		}
	}
	if len(t.From) == 0 && isEmptyList(e.val) {
		d.problem(e.val, p, "must list at least one network")
	}
	return t
}

func isEmptyList(n *yaml.Node) bool {
	n = resolve(n)
	return isNull(n) || (n.Kind == yaml.SequenceNode && len(n.Content) == 0)
}

// item is one element of a value that may be a single value or a list.
type item struct {
	node *yaml.Node
	path string
}

// items reads a single value or a list of values.
func (d *decoder) items(n *yaml.Node, path string) []item {
	n = resolve(n)
	if n != nil && n.Kind == yaml.ScalarNode && !isNull(n) {
		return []item{{n, path}}
	}
	nodes, _ := d.sequence(n, path)
	out := make([]item, len(nodes))
	for i, c := range nodes {
		out[i] = item{c, index(path, i)}
	}
	return out
}

func (d *decoder) admin(n *yaml.Node, path string, a *Admin, serverListen string) {
	f, ok := d.mapping(n, path, "listen", "console", "token", "token_file")
	if !ok {
		return
	}
	if e, ok := f["listen"]; ok {
		p := join(path, "listen")
		if v, ok := d.listen(e.val, p); ok {
			if v == serverListen {
				d.problem(e.val, p, "same address as server.listen: leave admin.listen out to serve /metrics and health checks there")
			} else {
				a.Listen = v
			}
		}
	}
	d.setBool(f, path, "console", &a.Console)
	d.setPair(n, f, path, "token", "admin token", false, &a.Token)
	e, on := f["console"]
	if !on || !a.Console {
		return
	}
	p := join(path, "console")
	switch {
	case a.Listen == "":
		d.problem(e.val, p, "the console is never served on the webhook listener: set admin.listen (e.g. 127.0.0.1:9090)")
	case a.Token == "" && !loopback(a.Listen):
		d.problem(e.val, p, "admin.listen %s is not a loopback address: set admin.token or admin.token_file to protect the console", a.Listen)
	}
}

// loopback reports whether the host of a host:port address is a loopback address or
// localhost; an empty host (all interfaces) is not.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (d *decoder) log(n *yaml.Node, path string, l *Log) {
	f, ok := d.mapping(n, path, "level", "format", "payloads")
	if !ok {
		return
	}
	d.setOneOf(f, path, "level", &l.Level, "debug", "info", "warn", "error")
	d.setOneOf(f, path, "format", &l.Format, "auto", "json", "text")
	d.setBool(f, path, "payloads", &l.Payloads)
}

func (d *decoder) storage(n *yaml.Node, path string, s *Storage) {
	f, ok := d.mapping(n, path, "dir", "dedup_window", "max_batch_delay", "postgres")
	if !ok {
		return
	}
	d.setStr(f, path, "dir", &s.Dir)
	d.setDuration(f, path, "dedup_window", true, &s.DedupWindow)
	d.setDuration(f, path, "max_batch_delay", false, &s.MaxBatchDelay)
	if e, ok := f["postgres"]; ok {
		s.Postgres = d.postgres(e.val, join(path, "postgres"))
	}
}

// postgres decodes storage.postgres. The URL is checked for its form only; its errors never
// quote it, as it may hold a password.
func (d *decoder) postgres(n *yaml.Node, path string) *Postgres {
	f, ok := d.mapping(n, path, "url", "url_file", "schema", "max_conns", "lease", "poll_interval", "sink_grace")
	if !ok {
		return nil
	}
	p := &Postgres{Schema: "hubrelay", MaxConns: 16, Lease: 30 * time.Second, PollInterval: 500 * time.Millisecond,
		SinkGrace: DefaultSinkGrace}
	if node := d.setPair(n, f, path, "url", "PostgreSQL URL", true, &p.URL); node != nil && p.URL != "" {
		if why := postgresURLProblem(p.URL); why != "" {
			key := "url"
			if _, ok := f["url_file"]; ok {
				key = "url_file"
			}
			d.problem(node, join(path, key), "%s", why)
		}
	}
	if e, ok := f["schema"]; ok {
		if v, ok := d.nonEmpty(e.val, join(path, "schema")); ok {
			if !validSchema(v) {
				d.problem(e.val, join(path, "schema"), "invalid schema name %q: use lowercase letters, digits and _, starting with a letter", v)
			} else {
				p.Schema = v
			}
		}
	}
	d.setInt(f, path, "max_conns", 2, &p.MaxConns)
	d.setDuration(f, path, "lease", true, &p.Lease)
	d.setDuration(f, path, "poll_interval", true, &p.PollInterval)
	d.setDuration(f, path, "sink_grace", true, &p.SinkGrace)
	if p.Lease > 0 && p.Lease < 3*time.Second {
		d.problem(f["lease"].val, join(path, "lease"), "must be at least 3s (got %s): replicas renew it every lease/3", p.Lease)
	}
	return p
}

// postgresURLProblem says what is wrong with a libpq URL or key=value string, without quoting
// it; "" when nothing is.
func postgresURLProblem(s string) string {
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		u, err := url.Parse(s)
		if err != nil {
			if ue, ok := err.(*url.Error); ok {
				err = ue.Err // url.Error quotes the URL, password included
			}
			return fmt.Sprintf("not a valid URL: %v", err)
		}
		if u.Host == "" {
			return "no host: use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?sslmode=..."
		}
		return ""
	}
	if strings.Contains(s, "://") {
		return "not a PostgreSQL URL: use postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE?sslmode=..."
	}
	if !strings.Contains(s, "=") {
		return "not a PostgreSQL URL or key=value string: use postgres://USER@HOST:PORT/DATABASE or host=... dbname=..."
	}
	return ""
}

// validSchema reports whether s is a plain lowercase SQL identifier.
func validSchema(s string) bool {
	if s == "" || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func (d *decoder) deadLetter(n *yaml.Node, path string, dl *DeadLetter) {
	f, ok := d.mapping(n, path, "dir")
	if !ok {
		return
	}
	d.setStr(f, path, "dir", &dl.Dir)
}
