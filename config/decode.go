package config

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Limits that keep a hostile or broken file (such as aliases nested to expand
// exponentially) from taking unbounded time or memory.
const (
	maxValues   = 1_000_000 // mapping entries and list items visited, aliases expanded
	maxProblems = 1000
)

// decoder walks the YAML node tree of one file, collecting every problem it finds.
type decoder struct {
	file   string
	getenv func(string) string
	env    *envRefs
	probs  Problems
	values int  // mapping entries and list items visited
	stop   bool // a limit was reached: decode nothing more
	// truncated is set when problems were dropped after maxProblems.
	truncated bool
	// where holds the position of every key decoded, by path (see Config.Where).
	where map[string]string
	// lines is the text given to the YAML parser (${VAR} references swapped for
	// placeholders), by line, for positions inside values and for syntax errors.
	lines []string
}

// visit counts n values and reports whether decoding may go on.
func (d *decoder) visit(n *yaml.Node, path string, count int) bool {
	if d.stop {
		return false
	}
	d.values += count
	if d.values > maxValues {
		d.problem(n, path, "too many values (more than %d, aliases expanded): stopping here", maxValues)
		d.stop = true
		return false
	}
	return true
}

// problem records a problem at node n.
func (d *decoder) problem(n *yaml.Node, path, format string, args ...any) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, n.Column
	}
	d.problemAt(line, col, path, format, args...)
}

// problemAt records a problem at a line and column of the file.
func (d *decoder) problemAt(line, col int, path, format string, args ...any) {
	if len(d.probs) >= maxProblems {
		d.stop, d.truncated = true, true
		return
	}
	d.probs = append(d.probs, Problem{File: d.file, Line: line, Col: col, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// parse parses data into its root node, reporting malformed YAML as a problem.
func (d *decoder) parse(data []byte) *yaml.Node {
	text, env := substitute(data)
	d.env = env
	d.lines = strings.Split(strings.ReplaceAll(string(text), "\r\n", "\n"), "\n")
	dec := yaml.NewDecoder(strings.NewReader(string(text)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err.Error() == "EOF" {
			d.problem(nil, "", "empty config file")
			return nil
		}
		d.yamlError(err)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.problem(&extra, "", "several YAML documents in one file: keep only one")
	}
	d.fixColumns(&doc, make(map[*yaml.Node]bool))
	if len(doc.Content) == 0 {
		d.problem(nil, "", "empty config file")
		return nil
	}
	return doc.Content[0]
}

// fixColumns moves node columns back to where they are in the original file.
func (d *decoder) fixColumns(n *yaml.Node, seen map[*yaml.Node]bool) {
	if seen[n] {
		return
	}
	seen[n] = true
	if len(d.env.shifts) > 0 {
		n.Column = d.env.column(n.Line, n.Column)
	}
	for _, c := range n.Content {
		d.fixColumns(c, seen)
	}
}

// join appends a key to a path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index appends a list index to a path.
func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// kindName describes a node's kind for messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "a single value"
	default:
		return "something else"
	}
}

// kv is one key of a mapping with its value.
type kv struct {
	key, val *yaml.Node
}

// fields is the decoded keys of a mapping, by name.
type fields map[string]kv

// has reports whether key is present.
func (f fields) has(key string) bool {
	_, ok := f[key]
	return ok
}

// valueOf returns the value node of the first of keys present, else n (the mapping): where to
// report a problem between two keys, either of which may have been left at its default.
func (f fields) valueOf(n *yaml.Node, keys ...string) *yaml.Node {
	for _, k := range keys {
		if e, ok := f[k]; ok {
			return e.val
		}
	}
	return n
}

// mapping reads a mapping node whose keys must be among allowed. It reports a node that is
// not a mapping, unknown keys (suggesting the nearest allowed one) and repeated keys, and
// returns the remaining keys. A null node is an empty mapping. YAML merge keys
// ("<<: *defaults") are supported: keys written in the mapping win over merged ones.
func (d *decoder) mapping(n *yaml.Node, path string, allowed ...string) (fields, bool) {
	n = resolve(n)
	if n == nil || isNull(n) {
		return fields{}, true
	}
	if n.Kind != yaml.MappingNode {
		d.problem(n, path, "must be a mapping of keys to values, not %s", kindName(n))
		return nil, false
	}
	f := make(fields, len(n.Content)/2)
	d.addPairs(f, n, path, allowed, 0)
	return f, !d.stop
}

// addPairs adds the keys of mapping n to f. Keys written in n must be new; merged keys (at
// depth > 0) only fill keys not yet set.
func (d *decoder) addPairs(f fields, n *yaml.Node, path string, allowed []string, depth int) {
	if !d.visit(n, path, len(n.Content)/2) {
		return
	}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.problem(k, path, "keys must be single values, not %s", kindName(k))
			continue
		}
		if k.Tag == "!!merge" {
			merges = append(merges, v)
			continue
		}
		name := d.env.restore(k.Value)
		p := join(path, name)
		if prev, dup := f[name]; dup {
			if depth == 0 {
				d.problem(k, p, "duplicate key %q (first at line %d)", name, prev.key.Line)
			}
			continue
		}
		if path == "" && strings.HasPrefix(name, "x-") {
			continue // a top-level extension key, a place for anchors
		}
		if !slices.Contains(allowed, name) {
			d.problem(k, p, "unknown key %q%s", name, suggest(name, allowed))
			continue
		}
		f[name] = kv{key: k, val: v}
		if d.where != nil {
			if _, seen := d.where[p]; !seen {
				d.where[p] = fmt.Sprintf("%s:%d:%d", d.file, v.Line, v.Column)
			}
		}
	}
	for _, m := range merges {
		m = resolve(m)
		srcs := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			srcs = m.Content
		}
		for _, src := range srcs {
			src = resolve(src)
			switch {
			case src.Kind != yaml.MappingNode:
				d.problem(src, path, "<< must merge a mapping or a list of mappings, not %s", kindName(src))
			case depth >= 10:
				d.problem(src, path, "<< merges nested too deeply")
			default:
				d.addPairs(f, src, path, allowed, depth+1)
			}
		}
	}
}

// sequence reads a list node. A null node is an empty list.
func (d *decoder) sequence(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	n = resolve(n)
	if n == nil || isNull(n) {
		return nil, true
	}
	if n.Kind != yaml.SequenceNode {
		d.problem(n, path, "must be a list, not %s", kindName(n))
		return nil, false
	}
	if !d.visit(n, path, len(n.Content)) {
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
	}
	return items, true
}

// scalar reads a single value and expands environment references in it. A null node is
// the empty string.
func (d *decoder) scalar(n *yaml.Node, path string) (expanded, bool) {
	n = resolve(n)
	if n == nil || isNull(n) {
		return expanded{}, true
	}
	if n.Kind != yaml.ScalarNode {
		d.problem(n, path, "must be a single value, not %s", kindName(n))
		return expanded{}, false
	}
	x := d.env.expand(n.Value, d.getenv)
	if x.malformed {
		d.problem(n, path, "invalid ${...} reference: use ${NAME} or ${NAME:-default}, or $$ for a literal $")
		return expanded{}, false
	}
	return x, true
}

// str reads a string.
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	x, ok := d.scalar(n, path)
	return x.val, ok
}

// nonEmpty reads a string that must not be empty. Its value may be quoted in messages.
func (d *decoder) nonEmpty(n *yaml.Node, path string) (string, bool) {
	x, ok := d.scalar(n, path)
	if ok && x.val == "" {
		d.problem(n, path, "must not be empty%s", unsetHint(x))
		return "", false
	}
	return x.val, ok
}

// secret reads a secret: it must not be empty, and its value never appears in a message.
func (d *decoder) secret(n *yaml.Node, path, what string) (string, bool) {
	x, ok := d.scalar(n, path)
	if ok && x.val == "" {
		d.problem(n, path, "empty %s%s", what, unsetHint(x))
		return "", false
	}
	return x.val, ok
}

// unsetHint names the unset variables that made a value empty.
func unsetHint(x expanded) string {
	if len(x.unset) == 0 {
		return ""
	}
	return ": set " + strings.Join(x.unset, ", ")
}

// secretFile reads a secret from the file named by the value of n, without its trailing
// newline.
func (d *decoder) secretFile(n *yaml.Node, path, what string) (string, bool) {
	name, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	b, err := os.ReadFile(name)
	if err != nil {
		d.problem(n, path, "read %s: %v", what, unwrapPath(err))
		return "", false
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		d.problem(n, path, "empty %s: file %s is empty", what, name)
		return "", false
	}
	return s, true
}

// unwrapPath returns the reason of an *os.PathError with its path, which names a file and
// never holds a secret.
func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return fmt.Errorf("%s %s: %w", pe.Op, pe.Path, pe.Err)
	}
	return err
}

// strList reads a string or a list of strings; each must be non-empty.
func (d *decoder) strList(n *yaml.Node, path string) ([]string, bool) {
	n = resolve(n)
	if n != nil && n.Kind == yaml.ScalarNode && !isNull(n) {
		s, ok := d.nonEmpty(n, path)
		if !ok {
			return nil, false
		}
		return []string{s}, true
	}
	items, ok := d.sequence(n, path)
	if !ok {
		return nil, false
	}
	var out []string
	for i, it := range items {
		if s, ok2 := d.nonEmpty(it, index(path, i)); ok2 {
			out = append(out, s)
		} else {
			ok = false
		}
	}
	return out, ok
}

// integer reads an integer of at least min.
func (d *decoder) integer(n *yaml.Node, path string, min int) (int, bool) {
	x, ok := d.scalar(n, path)
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimSpace(x.val))
	if err != nil {
		d.problem(n, path, "invalid number %q: use a whole number", x.val)
		return 0, false
	}
	if v < min {
		d.problem(n, path, "must be at least %d (got %d)", min, v)
		return 0, false
	}
	return v, true
}

// boolean reads true or false.
func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	x, ok := d.scalar(n, path)
	if !ok {
		return false, false
	}
	switch x.val {
	case "true", "True", "TRUE":
		return true, true
	case "false", "False", "FALSE":
		return false, true
	}
	d.problem(n, path, "invalid boolean %q: use true or false", x.val)
	return false, false
}

// duration reads a Go duration that is not negative and, if positive is set, not zero.
func (d *decoder) duration(n *yaml.Node, path string, positive bool) (time.Duration, bool) {
	x, ok := d.scalar(n, path)
	if !ok {
		return 0, false
	}
	s := strings.TrimSpace(x.val)
	v, err := time.ParseDuration(s)
	if err != nil && s != "" && strings.Trim(s, "0123456789") == "" {
		d.problem(n, path, "invalid duration %q: add a unit, like %ss", x.val, s)
		return 0, false
	}
	if err != nil {
		d.problem(n, path, "invalid duration %q: %s", x.val, durationHint(s))
		return 0, false
	}
	switch {
	case v < 0:
		d.problem(n, path, "must not be negative (got %s)", s)
		return 0, false
	case v == 0 && positive:
		d.problem(n, path, "must be more than zero")
		return 0, false
	}
	return v, true
}

// sizeUnits maps lowercase size units to their multipliers.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1000, "kb": 1000, "m": 1000 * 1000, "mb": 1000 * 1000, "g": 1000 * 1000 * 1000, "gb": 1000 * 1000 * 1000,
	"ki": 1 << 10, "kib": 1 << 10, "mi": 1 << 20, "mib": 1 << 20, "gi": 1 << 30, "gib": 1 << 30,
}

// size reads a byte count: a whole number or one with a unit like 8MiB or 3MB.
func (d *decoder) size(n *yaml.Node, path string, positive bool) (int64, bool) {
	x, ok := d.scalar(n, path)
	if !ok {
		return 0, false
	}
	v, err := parseSize(x.val)
	if err != nil {
		d.problem(n, path, "invalid size %q: use a number of bytes or a unit, like 8MiB or 3MB", x.val)
		return 0, false
	}
	if v == 0 && positive {
		d.problem(n, path, "must be more than zero")
		return 0, false
	}
	return v, true
}

// parseSize parses "8388608", "8MiB", "3 MB", "512kib".
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("no number")
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, err
	}
	mult, ok := sizeUnits[strings.ToLower(strings.TrimSpace(s[i:]))]
	if !ok {
		return 0, fmt.Errorf("unknown unit")
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("too large")
	}
	return n * mult, nil
}

// oneOf reads a string that must be one of choices.
func (d *decoder) oneOf(n *yaml.Node, path string, choices ...string) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	if !slices.Contains(choices, s) {
		d.problem(n, path, "invalid value %q: use %s%s", s, orList(choices), suggest(s, choices))
		return "", false
	}
	return s, true
}

// prefix reads a CIDR, or an IP address standing for a single host, in canonical form.
func (d *decoder) prefix(n *yaml.Node, path string) (string, bool) {
	s, ok := d.nonEmpty(n, path)
	if !ok {
		return "", false
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()).String(), true
	}
	d.problem(n, path, "invalid CIDR %q: use a network like 10.0.0.0/8 or an IP address", s)
	return "", false
}

// orList formats choices as `a, b or c`.
func orList(choices []string) string {
	switch len(choices) {
	case 0:
		return ""
	case 1:
		return choices[0]
	}
	return strings.Join(choices[:len(choices)-1], ", ") + " or " + choices[len(choices)-1]
}

// suggest returns ` (did you mean "x"?)` for the choice nearest to s, if one is near enough
// to be a likely typo.
func suggest(s string, choices []string) string {
	if best := nearest(s, choices); best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return ""
}

// EditDistance returns the Levenshtein distance between a and b, for "did you mean" hints
// (capped for strings over 64 bytes, so a hostile input costs little). The CLI uses it too.
func EditDistance(a, b string) int { return levenshtein(a, b) }

// levenshtein returns the edit distance between a and b.
func levenshtein(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		if a == b {
			return 0
		}
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
