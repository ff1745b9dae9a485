package rules

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/expr-lang/expr/file"
)

// ExprError is a compile or evaluation error in one expression, on one line.
type ExprError struct {
	// Msg is expr's description of the problem.
	Msg string
	// Line and Column locate the problem within the expression source, both 1-based; zero
	// when unknown.
	Line, Column int
	// Offset is the position of the problem in the source counted in runes from 0, valid
	// when Column is not zero: the config package maps it to a line and column of the file.
	Offset int
}

// Error implements error: the message, then the position within the expression when known,
// e.g. "unknown name valeu (column 1)".
func (e *ExprError) Error() string {
	switch {
	case e.Column == 0:
		return e.Msg
	case e.Line > 1:
		return fmt.Sprintf("%s (line %d, column %d)", e.Msg, e.Line, e.Column)
	default:
		return fmt.Sprintf("%s (column %d)", e.Msg, e.Column)
	}
}

// exprError converts expr's errors, whose text spans several lines with a source snippet,
// into an *ExprError.
func exprError(err error) error {
	var fe *file.Error
	if !errors.As(err, &fe) {
		return &ExprError{Msg: err.Error()}
	}
	e := &ExprError{Msg: fe.Message}
	if fe.Snippet != "" || fe.Line > 0 {
		e.Line, e.Column, e.Offset = fe.Line, fe.Column+1, fe.From
	}
	return e
}

// ErrorClass names the kind of a `when` evaluation error without quoting the change: one of
// "missing member" (a member of a value that is absent or null), "index out of range",
// "not a boolean", "type mismatch" or "evaluation error", followed by the column in the
// expression when known ("missing member at column 9"). It is safe to log and to store in a
// dead letter's reason, which must not hold payload data.
func ErrorClass(err error) string {
	msg := err.Error()
	var class string
	switch {
	case strings.Contains(msg, "cannot fetch") || strings.Contains(msg, "nil pointer") || strings.Contains(msg, "from <nil>"):
		class = "missing member"
	case strings.Contains(msg, "out of range"):
		class = "index out of range"
	case strings.Contains(msg, "not bool") || strings.Contains(msg, "expected bool"):
		class = "not a boolean"
	case strings.Contains(msg, "invalid operation") || strings.Contains(msg, "interface conversion") ||
		strings.Contains(msg, "invalid argument") || strings.Contains(msg, "not defined on") || strings.Contains(msg, "cannot use"):
		class = "type mismatch"
	default:
		class = "evaluation error"
	}
	var ee *ExprError
	if errors.As(err, &ee) && ee.Column > 0 {
		class += " at column " + strconv.Itoa(ee.Column)
		if ee.Line > 1 {
			class += " of line " + strconv.Itoa(ee.Line)
		}
	}
	return class
}

// Names returns the names an expression sees at its top level (object, field, verb…), for
// "did you mean" hints.
func Names() []string { return exprNames(reflect.TypeFor[Env]()) }

// Members returns the members of entry in expressions (id, uid, time).
func Members() []string { return exprNames(reflect.TypeFor[Entry]()) }

func exprNames(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if name := f.Tag.Get("expr"); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}
