package relay

import (
	"errors"
	"strconv"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
)

// What Decode refuses, and how callers tell the kinds apart.

// ErrMalformed is the class of bodies that are not JSON or not a Meta notification envelope.
// The receiver answers them with 400. Test with errors.Is; the concrete type is *DecodeError.
var ErrMalformed = errors.New("malformed notification")

// ErrTooMany is the class of notifications holding more changes than Limits.MaxChanges allows.
// Test with errors.Is; the concrete type is *TooManyError.
var ErrTooMany = errors.New("too many changes")

// DecodeError reports a body that is not valid JSON or not a Meta notification envelope. Its
// message names the offending place (entry[2].changes[0].field) and never quotes the body.
type DecodeError struct {
	// Offset is the byte offset in the body where the problem was found.
	Offset int
	// Reason says what is wrong, in lowercase.
	Reason string
}

// Error returns "malformed notification: <reason> (offset N)".
func (e *DecodeError) Error() string {
	return "malformed notification: " + e.Reason + " (offset " + strconv.Itoa(e.Offset) + ")"
}

// Is reports whether target is ErrMalformed.
func (e *DecodeError) Is(target error) bool { return target == ErrMalformed }

// TooManyError reports a notification with more changes than Limits.MaxChanges. Decode stops
// counting at the first change over the limit.
type TooManyError struct {
	// Limit is the configured maximum.
	Limit int
}

// Error returns "too many changes: more than N in one notification".
func (e *TooManyError) Error() string {
	return "too many changes: more than " + strconv.Itoa(e.Limit) + " in one notification"
}

// Is reports whether target is ErrTooMany.
func (e *TooManyError) Is(target error) bool { return target == ErrTooMany }

// asDecodeError turns the scanner's errors into *DecodeError; others (*TooManyError) pass.
func asDecodeError(err error) error {
	if e, ok := err.(*jsonscan.Error); ok {
		return &DecodeError{Offset: e.Offset, Reason: e.Reason}
	}
	return err
}
