package config

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a config file, at the line and column of the YAML node
// responsible. Its message never contains a secret value.
type Problem struct {
	File string
	Line int // 1-based
	Col  int // 1-based
	// Path locates the value in the config, like "sinks[1].url" or "rules[0].when"; empty for
	// a problem with the file as a whole (such as malformed YAML).
	Path string
	Msg  string
}

// Error formats the problem as "FILE:LINE:COL: PATH: MSG" (without "PATH: " when Path is
// empty), the form editors and CI annotations recognize.
func (p Problem) Error() string {
	if p.Path == "" {
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s: %s", p.File, p.Line, p.Col, p.Path, p.Msg)
}

// Problems is every problem found in a config file, sorted by position. Load and Parse
// return it as their error when anything is wrong.
type Problems []Problem

// Error implements error: one problem per line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the problems as a slice of errors, so errors.As can find a Problem.
func (ps Problems) Unwrap() []error {
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return errs
}

// sort orders problems by line, then column; problems at the same place keep the order they
// were found in.
func (ps Problems) sort() {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
}

var daysRE = regexp.MustCompile(`^(\d{1,5})\s*(d|days?)$`)

// durationHint says how to write an invalid duration s in Go syntax.
func durationHint(s string) string {
	if m := daysRE.FindStringSubmatch(strings.ToLower(s)); m != nil {
		n, _ := strconv.Atoi(m[1])
		return fmt.Sprintf("a Go duration has no days: use %dh", n*24)
	}
	return "use Go syntax like 168h"
}
