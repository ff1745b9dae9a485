package rules

import (
	"errors"
	"fmt"

	"github.com/expr-lang/expr/file"
)

// ExprError is a compile or evaluation error in one expression, on one line.
type ExprError struct {
	// Msg is expr's description of the problem.
	Msg string
	// Line and Column locate the problem within the expression source, both 1-based; zero
	// when unknown.
	Line, Column int
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
		e.Line, e.Column = fe.Line, fe.Column+1
	}
	return e
}
