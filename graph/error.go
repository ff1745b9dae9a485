package graph

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error is an error answer of the Graph API, or a call that got no usable answer. Its
// fields are Meta's, scrubbed of every secret the call carried.
type Error struct {
	// Method and Path name the call, like "POST" and "/v23.0/1234/subscriptions"; the path
	// never holds a token.
	Method, Path string
	// Status is the HTTP status; 0 when no answer came (see Cause).
	Status int
	// Message, Type, Code, Subcode and FBTraceID are error.message, error.type, error.code,
	// error.error_subcode and error.fbtrace_id. FBTraceID is what Meta's support asks for.
	Message   string
	Type      string
	Code      int
	Subcode   int
	FBTraceID string
	// UserTitle and UserMessage are error.error_user_title and error.error_user_msg, when
	// Meta sends text meant for people.
	UserTitle, UserMessage string
	// Transient is error.is_transient: Meta says trying again may work.
	Transient bool
	// RegainAccess is how long Meta says a throttled app must wait, from the
	// estimated_time_to_regain_access of the X-Business-Use-Case-Usage header (the longest
	// one given); 0 when Meta does not say.
	RegainAccess time.Duration
	// Attempts is how many attempts the call made.
	Attempts int
	// Cause is the transport error when no answer came, or what was wrong with the answer.
	Cause error
}

// Error describes the failure on one line, with every field Meta gave.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("graph ")
	b.WriteString(e.Method)
	b.WriteByte(' ')
	b.WriteString(e.Path)
	b.WriteString(": ")
	switch {
	case e.Code != 0 || e.Message != "":
		b.WriteString(e.Message)
		b.WriteString(" (")
		b.WriteString(strings.Join(e.Details(), ", "))
		b.WriteByte(')')
	case e.Status != 0:
		b.WriteString("status ")
		b.WriteString(strconv.Itoa(e.Status))
		if e.Cause != nil {
			b.WriteString(": ")
			b.WriteString(e.Cause.Error())
		}
	case e.Cause != nil:
		b.WriteString(e.Cause.Error())
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " after %d attempts", e.Attempts)
	}
	return b.String()
}

// Unwrap returns Cause.
func (e *Error) Unwrap() error { return e.Cause }

// Details lists Meta's fields of the error as "name value" strings, in Graph's order:
// type, code, error_subcode, fbtrace_id, and the HTTP status.
func (e *Error) Details() []string {
	var d []string
	if e.Type != "" {
		d = append(d, "type "+e.Type)
	}
	if e.Code != 0 {
		d = append(d, "code "+strconv.Itoa(e.Code))
	}
	if e.Subcode != 0 {
		d = append(d, "error_subcode "+strconv.Itoa(e.Subcode))
	}
	if e.FBTraceID != "" {
		d = append(d, "fbtrace_id "+e.FBTraceID)
	}
	if e.Status != 0 {
		d = append(d, "HTTP "+strconv.Itoa(e.Status))
	}
	if e.RegainAccess > 0 {
		d = append(d, "access regained in "+e.RegainAccess.String())
	}
	return d
}

// Graph error codes hubrelay treats specially.
const (
	CodeUnknown          = 1    // "An unknown error occurred": possibly temporary
	CodeService          = 2    // "Service temporarily unavailable"
	CodeAppRateLimit     = 4    // application request limit reached
	CodePermission       = 10   // application does not have permission for this action
	CodeUserRateLimit    = 17   // user request limit reached
	CodePageRateLimit    = 32   // page request limit reached
	CodeInvalidParameter = 100  // invalid parameter
	CodeInvalidToken     = 190  // invalid or expired access token
	CodePermissions      = 200  // permissions error (200–299)
	CodeCallLimit        = 613  // calls to this API have exceeded the rate limit
	CodeCallbackFailed   = 2200 // callback verification failed
)

// RateLimited reports whether Meta throttled the call: codes 4, 17, 32, 613 or a business
// use case limit (80000–80014).
func (e *Error) RateLimited() bool {
	switch e.Code {
	case CodeAppRateLimit, CodeUserRateLimit, CodePageRateLimit, CodeCallLimit:
		return true
	}
	return e.Code >= 80000 && e.Code <= 80014
}

// Retryable reports whether the same call may succeed later: a throttled call, a 5xx
// answer, one of Graph's temporary codes, or an error Meta marks is_transient.
func (e *Error) Retryable() bool {
	return e.RateLimited() || e.Transient || e.Status >= 500 || e.Code == CodeUnknown || e.Code == CodeService
}

// wireError is Graph's error body: {"error": {...}}.
type wireError struct {
	Error *struct {
		Message   string `json:"message"`
		Type      string `json:"type"`
		Code      int    `json:"code"`
		Subcode   int    `json:"error_subcode"`
		FBTraceID string `json:"fbtrace_id"`
		UserTitle string `json:"error_user_title"`
		UserMsg   string `json:"error_user_msg"`
		Transient bool   `json:"is_transient"`
	} `json:"error"`
}

// parseError reads a Graph error answer. Without a Graph error body it describes the status
// (and the content type, when it is not JSON: a proxy's page, say).
func parseError(resp *http.Response, body []byte) *Error {
	e := &Error{Status: resp.StatusCode, RegainAccess: regainAccess(resp.Header)}
	var w wireError
	if json.Unmarshal(body, &w) == nil && w.Error != nil {
		e.Message, e.Type, e.Code, e.Subcode, e.FBTraceID = w.Error.Message, w.Error.Type, w.Error.Code, w.Error.Subcode, w.Error.FBTraceID
		e.UserTitle, e.UserMessage, e.Transient = w.Error.UserTitle, w.Error.UserMsg, w.Error.Transient
		if e.Message == "" && e.Code == 0 {
			e.Cause = fmt.Errorf("empty Graph error")
		}
		return e
	}
	ct := resp.Header.Get("Content-Type")
	if ct == "" {
		ct = "no content type"
	}
	e.Cause = fmt.Errorf("%s, not a Graph API error (%s)", http.StatusText(resp.StatusCode), ct)
	return e
}

// regainAccess reads the longest estimated_time_to_regain_access (minutes) of Graph's
// X-Business-Use-Case-Usage header: {"<id>": [{"type": ..., "estimated_time_to_regain_access": N}]}.
func regainAccess(h http.Header) time.Duration {
	v := h.Get("X-Business-Use-Case-Usage")
	if v == "" {
		return 0
	}
	var usage map[string][]struct {
		Regain float64 `json:"estimated_time_to_regain_access"`
	}
	if json.Unmarshal([]byte(v), &usage) != nil {
		return 0
	}
	var most float64
	for _, list := range usage {
		for _, u := range list {
			most = max(most, u.Regain)
		}
	}
	if most <= 0 || most > 24*60 {
		return 0
	}
	return time.Duration(most * float64(time.Minute))
}
