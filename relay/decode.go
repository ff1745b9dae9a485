package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/hubrelay/hubrelay/relay/internal/hexdigit"
)

// ErrMalformed is the class of bodies that are not JSON or not a Meta notification envelope.
// The receiver answers them with 400. Test with errors.Is; the concrete type is *DecodeError.
var ErrMalformed = errors.New("malformed notification")

// ErrTooMany is the class of notifications holding more changes than Limits.MaxChanges allows.
// Test with errors.Is; the concrete type is *TooManyError.
var ErrTooMany = errors.New("too many changes")

// hardMaxDepth caps JSON nesting when Limits.MaxDepth is 0. It is encoding/json's own limit, so
// a value deeper than this could not be evaluated by rules or decoded by a consumer anyway.
const hardMaxDepth = 10000

// Limits bounds what Decode accepts from one notification. A zero field means no limit of
// that kind (nesting is still capped at 10000 levels, as encoding/json does).
type Limits struct {
	// MaxChanges caps the number of events one notification may produce.
	MaxChanges int
	// MaxDepth caps JSON nesting depth over the whole body; the envelope object is depth 1,
	// so a change value object sits at depth 6 and a messaging element at depth 5.
	MaxDepth int
}

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

// Decode splits a verified notification body into its changes, in body order:
//
//   - entry[].changes[]: one Event per element; Field is its field, Value the raw bytes of its
//     value, Verb value.verb when value is an object with a string verb.
//   - entry[].changed_fields[]: one Event per name, Value nil.
//   - entry[].messaging[] and entry[].standby[]: one Event per element, Field "messaging" or
//     "standby", Value the whole element, Verb the event kind: "message" ("echo" when
//     message.is_echo is true) if the element has a message, else its first key other than
//     sender, recipient and timestamp (postback, delivery, read, reaction, referral…).
//
// The whole body must be valid JSON: an object with a non-empty string "object" and an "entry"
// array (an empty array is valid and yields no events). Entry ids and uids may be strings or
// numbers (numbers keep their exact digits); entry.time is read leniently (a number, a
// numeric string or an ISO 8601 string; see Entry.Time) and its JSON kept as sent. Structure is read strictly: an entry or
// change that is not an object, a changes/messaging/standby/changed_fields member that is not
// an array (null counts as absent), a missing or non-string field, or a duplicate member name
// at the envelope, entry or change level is a *DecodeError. Unknown members of the envelope
// and of changes are ignored; entry content not recognised becomes a change (see entry).
//   - entry[].field with entry[].value: one Event, Source SourceEntry, as a changes[] element.
//   - anything else an entry holds: one Event of SourceUnknown with the whole entry as Value.
//
// Every Value is a sub-slice of body (capacity clipped, so appending to it copies), forwarded
// byte for byte: the caller must not modify body while the events are in use. Decode sets App,
// Object, Entry, Field, Verb, Source, Value and ReceivedAt; it leaves ID to Key.
//
// Decode works in one pass over the bytes without recursion, so hostile nesting is refused at
// the depth limit in linear time, and it allocates little beyond the returned slice.
func Decode(body []byte, app string, receivedAt time.Time, lim Limits) ([]Event, error) {
	d := notifDecoder{
		s:          jsonScan{b: body, maxDepth: lim.MaxDepth},
		app:        app,
		receivedAt: receivedAt,
		maxChanges: lim.MaxChanges,
	}
	if d.s.maxDepth <= 0 || d.s.maxDepth > hardMaxDepth {
		d.s.maxDepth = hardMaxDepth
	}
	if err := d.envelope(); err != nil {
		return nil, err
	}
	return d.events, nil
}

// notifDecoder walks one notification envelope.
type notifDecoder struct {
	s          jsonScan
	app        string
	receivedAt time.Time
	maxChanges int
	events     []Event
}

// envelope reads {"object": ..., "entry": [...]} and checks nothing follows it.
func (d *notifDecoder) envelope() error {
	s := &d.s
	s.ws()
	if s.i >= len(s.b) {
		return s.fail("empty body")
	}
	if c := s.b[s.i]; c != '{' {
		if kind := kindOf(c); kind != "" {
			return s.fail("top level is " + kind + ", want an object with \"object\" and \"entry\"")
		}
		return s.syntax("looking for the beginning of a value")
	}
	if err := s.enter(); err != nil {
		return err
	}
	var object string
	var haveObject, haveEntry bool
	for first := true; ; {
		more, err := s.more('}', &first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		key, err := s.key()
		if err != nil {
			return err
		}
		switch string(key) {
		case "object":
			if haveObject {
				return s.fail(`duplicate "object"`)
			}
			haveObject = true
			if c := s.peek(); c != '"' {
				return s.fail(`"object": want a string, got ` + kindOrInvalid(c))
			}
			if object, err = s.text(true); err != nil {
				return err
			}
		case "entry":
			if haveEntry {
				return s.fail(`duplicate "entry"`)
			}
			haveEntry = true
			if c := s.peek(); c != '[' {
				return s.fail(`"entry": want an array, got ` + kindOrInvalid(c))
			}
			if err := d.entries(); err != nil {
				return err
			}
		default:
			if err := s.skip(); err != nil {
				return err
			}
		}
	}
	s.ws()
	if s.i < len(s.b) {
		return s.fail("unexpected data after the top-level object")
	}
	switch {
	case !haveObject:
		return s.fail(`missing "object"`)
	case object == "":
		return s.fail(`"object" is empty`)
	case !haveEntry:
		return s.fail(`missing "entry"`)
	}
	for i := range d.events {
		d.events[i].Object = object
	}
	return nil
}

// entries reads the entry array; s is at its '['.
func (d *notifDecoder) entries() error {
	s := &d.s
	if err := s.enter(); err != nil {
		return err
	}
	for n, first := 0, true; ; n++ {
		more, err := s.more(']', &first)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if c := s.peek(); c != '{' {
			return s.fail(fmt.Sprintf("entry[%d]: want an object, got %s", n, kindOrInvalid(c)))
		}
		if err := d.entry(n); err != nil {
			return err
		}
	}
}

// Member bits of an entry, to refuse duplicates.
const (
	seenID = 1 << iota
	seenUID
	seenTime
	seenChanges
	seenChangedFields
	seenMessaging
	seenStandby
	seenField
	seenValue
)

// entry reads entry[n]; s is at its '{'. Events are appended as their arrays are read and
// get the entry's id, uid and time once the whole entry is known (key order is free).
//
// An entry holding "field" and "value" itself (how Instagram's Business Login examples show
// comments) is one change of SourceEntry. Content the decoder does not recognise (a member it
// does not know whose value is not null, [] or {}; a field without a value, or the other way
// round) is never dropped: the whole entry becomes one change of SourceUnknown whose field is
// the first such member's name.
func (d *notifDecoder) entry(n int) error {
	s := &d.s
	entryStart := s.i
	if err := s.enter(); err != nil {
		return err
	}
	start := len(d.events)
	var e Entry
	var seen int
	var field, unknown string
	var value []byte
	var verb string
	fieldOK := false
	for first := true; ; {
		more, err := s.more('}', &first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		key, err := s.key()
		if err != nil {
			return err
		}
		var bit int
		switch string(key) {
		case "id":
			bit = seenID
			e.ID, err = d.id(n, "id")
		case "uid":
			bit = seenUID
			e.UID, err = d.id(n, "uid")
		case "time":
			bit = seenTime
			e.Time, e.TimeJSON, err = s.entryTime()
		case "changes":
			bit = seenChanges
			err = d.changes(n)
		case "changed_fields":
			bit = seenChangedFields
			err = d.changedFields(n)
		case "messaging":
			bit = seenMessaging
			err = d.messaging(n, "messaging", SourceMessaging)
		case "standby":
			bit = seenStandby
			err = d.messaging(n, "standby", SourceStandby)
		case "field":
			bit = seenField
			if s.peek() == '"' {
				field, err = s.text(true)
				fieldOK = field != ""
			} else {
				err = s.skip()
			}
		case "value":
			bit = seenValue
			vs := s.i
			verb, err = d.valueVerb()
			value = s.b[vs:s.i:s.i]
		default:
			vs := s.i
			err = s.skip()
			if err == nil && unknown == "" && !emptyJSON(s.b[vs:s.i]) {
				unknown = intern(key)
			}
		}
		if err != nil {
			return err
		}
		if seen&bit != 0 {
			return s.fail(fmt.Sprintf("entry[%d]: duplicate %q", n, key))
		}
		seen |= bit
	}
	switch {
	case fieldOK && seen&seenValue != 0:
		if err := d.add(Event{Field: field, Verb: verb, Source: SourceEntry, Value: value}); err != nil {
			return err
		}
	case unknown == "" && seen&seenField != 0:
		unknown = "field"
	case unknown == "" && seen&seenValue != 0:
		unknown = "value"
	}
	if unknown != "" {
		if err := d.add(Event{Field: unknown, Source: SourceUnknown, Value: s.b[entryStart:s.i:s.i]}); err != nil {
			return err
		}
	}
	for i := start; i < len(d.events); i++ {
		d.events[i].Entry = e
	}
	return nil
}

// emptyJSON reports whether v is null, [] or {} (whitespace aside): content that holds nothing.
func emptyJSON(v []byte) bool {
	switch string(v) {
	case "null", "[]", "{}":
		return true
	}
	if len(v) < 2 || (v[0] != '[' && v[0] != '{') {
		return false
	}
	for _, c := range v[1 : len(v)-1] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return false
		}
	}
	return true
}

// id reads entry[n].id or .uid: a string, a number (its exact digits) or null ("").
func (d *notifDecoder) id(n int, name string) (string, error) {
	s := &d.s
	switch c := s.peek(); {
	case c == '"':
		return s.text(false)
	case c == '-' || isDigit(c):
		raw, err := s.number()
		return string(raw), err
	case c == 'n':
		return "", s.literal("null")
	default:
		return "", s.fail(fmt.Sprintf("entry[%d].%s: want a string or number, got %s", n, name, kindOrInvalid(c)))
	}
}

// arrayOrNull opens the array member name of entry[n]. It returns false when the member is
// null, which counts as absent.
func (d *notifDecoder) arrayOrNull(n int, name string) (bool, error) {
	s := &d.s
	switch c := s.peek(); c {
	case '[':
		return true, s.enter()
	case 'n':
		return false, s.literal("null")
	default:
		return false, s.fail(fmt.Sprintf("entry[%d].%s: want an array, got %s", n, name, kindOrInvalid(c)))
	}
}

// add appends ev, enforcing MaxChanges.
func (d *notifDecoder) add(ev Event) error {
	if d.maxChanges > 0 && len(d.events) >= d.maxChanges {
		return &TooManyError{Limit: d.maxChanges}
	}
	if d.events == nil {
		d.events = make([]Event, 0, d.capacityGuess())
	}
	ev.App = d.app
	ev.ReceivedAt = d.receivedAt
	d.events = append(d.events, ev)
	return nil
}

// capacityGuess sizes the event slice from the body: Meta's changes take a few hundred bytes
// each, so growing it is rare, and the guess is bounded so a padded body cannot inflate it.
func (d *notifDecoder) capacityGuess() int {
	n := min(len(d.s.b)/160+1, 1024)
	if d.maxChanges > 0 {
		n = min(n, d.maxChanges)
	}
	return n
}

// changes reads entry[n].changes.
func (d *notifDecoder) changes(n int) error {
	s := &d.s
	if ok, err := d.arrayOrNull(n, "changes"); !ok || err != nil {
		return err
	}
	for m, first := 0, true; ; m++ {
		more, err := s.more(']', &first)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if c := s.peek(); c != '{' {
			return s.fail(fmt.Sprintf("entry[%d].changes[%d]: want an object, got %s", n, m, kindOrInvalid(c)))
		}
		ev, err := d.change(n, m)
		if err != nil {
			return err
		}
		if err := d.add(ev); err != nil {
			return err
		}
	}
}

// change reads one {"field": ..., "value": ...} element; s is at its '{'.
func (d *notifDecoder) change(n, m int) (Event, error) {
	s := &d.s
	ev := Event{Source: SourceChanges}
	if err := s.enter(); err != nil {
		return ev, err
	}
	var haveField, haveValue bool
	for first := true; ; {
		more, err := s.more('}', &first)
		if err != nil {
			return ev, err
		}
		if !more {
			break
		}
		key, err := s.key()
		if err != nil {
			return ev, err
		}
		switch string(key) {
		case "field":
			if haveField {
				return ev, s.fail(fmt.Sprintf("entry[%d].changes[%d]: duplicate \"field\"", n, m))
			}
			haveField = true
			if c := s.peek(); c != '"' {
				return ev, s.fail(fmt.Sprintf("entry[%d].changes[%d].field: want a string, got %s", n, m, kindOrInvalid(c)))
			}
			if ev.Field, err = s.text(true); err != nil {
				return ev, err
			}
		case "value":
			if haveValue {
				return ev, s.fail(fmt.Sprintf("entry[%d].changes[%d]: duplicate \"value\"", n, m))
			}
			haveValue = true
			start := s.i
			if ev.Verb, err = d.valueVerb(); err != nil {
				return ev, err
			}
			ev.Value = s.b[start:s.i:s.i]
		default:
			if err := s.skip(); err != nil {
				return ev, err
			}
		}
	}
	if !haveField {
		return ev, s.fail(fmt.Sprintf("entry[%d].changes[%d]: missing \"field\"", n, m))
	}
	if ev.Field == "" {
		return ev, s.fail(fmt.Sprintf("entry[%d].changes[%d].field: empty", n, m))
	}
	return ev, nil
}

// valueVerb skips a change value and returns its top-level string "verb", if any.
func (d *notifDecoder) valueVerb() (string, error) {
	s := &d.s
	if s.peek() != '{' {
		return "", s.skip()
	}
	if err := s.enter(); err != nil {
		return "", err
	}
	var verb string
	for first := true; ; {
		more, err := s.more('}', &first)
		if err != nil || !more {
			return verb, err
		}
		key, err := s.key()
		if err != nil {
			return "", err
		}
		if string(key) == "verb" && s.peek() == '"' && verb == "" {
			verb, err = s.text(true)
		} else {
			err = s.skip()
		}
		if err != nil {
			return "", err
		}
	}
}

// changedFields reads entry[n].changed_fields: an array of field names.
func (d *notifDecoder) changedFields(n int) error {
	s := &d.s
	if ok, err := d.arrayOrNull(n, "changed_fields"); !ok || err != nil {
		return err
	}
	for m, first := 0, true; ; m++ {
		more, err := s.more(']', &first)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if c := s.peek(); c != '"' {
			return s.fail(fmt.Sprintf("entry[%d].changed_fields[%d]: want a string, got %s", n, m, kindOrInvalid(c)))
		}
		name, err := s.text(true)
		if err != nil {
			return err
		}
		if name == "" {
			return s.fail(fmt.Sprintf("entry[%d].changed_fields[%d]: empty", n, m))
		}
		if err := d.add(Event{Field: name, Source: SourceChangedFields}); err != nil {
			return err
		}
	}
}

// messaging reads entry[n].messaging or entry[n].standby.
func (d *notifDecoder) messaging(n int, field string, src Source) error {
	s := &d.s
	if ok, err := d.arrayOrNull(n, field); !ok || err != nil {
		return err
	}
	for m, first := 0, true; ; m++ {
		more, err := s.more(']', &first)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		if c := s.peek(); c != '{' {
			return s.fail(fmt.Sprintf("entry[%d].%s[%d]: want an object, got %s", n, field, m, kindOrInvalid(c)))
		}
		start := s.i
		verb, err := d.messagingVerb()
		if err != nil {
			return err
		}
		ev := Event{Field: field, Verb: verb, Source: src, Value: s.b[start:s.i:s.i]}
		if err := d.add(ev); err != nil {
			return err
		}
	}
}

// messagingVerb skips one messaging element and returns its event kind; s is at its '{'.
func (d *notifDecoder) messagingVerb() (string, error) {
	s := &d.s
	if err := s.enter(); err != nil {
		return "", err
	}
	var verb string
	var message, echo, deleted bool
	for first := true; ; {
		more, err := s.more('}', &first)
		if err != nil {
			return "", err
		}
		if !more {
			break
		}
		key, err := s.key()
		if err != nil {
			return "", err
		}
		switch string(key) {
		case "sender", "recipient", "timestamp":
			err = s.skip()
		case "message":
			message = true
			echo, deleted, err = d.messageFlags()
		default:
			if verb == "" {
				verb = intern(key)
			}
			err = s.skip()
		}
		if err != nil {
			return "", err
		}
	}
	switch {
	case deleted:
		return "unsend", nil
	case echo:
		return "echo", nil
	case message:
		return "message", nil
	}
	return verb, nil
}

// messageFlags skips a message value and reports whether it is an object with
// "is_echo": true and with "is_deleted": true (an unsend, whose mid is the deleted message's).
func (d *notifDecoder) messageFlags() (echo, deleted bool, err error) {
	s := &d.s
	if s.peek() != '{' {
		return false, false, s.skip()
	}
	if err := s.enter(); err != nil {
		return false, false, err
	}
	for first := true; ; {
		more, err := s.more('}', &first)
		if err != nil || !more {
			return echo, deleted, err
		}
		key, err := s.key()
		if err != nil {
			return false, false, err
		}
		switch string(key) {
		case "is_echo":
			echo = echo || s.peek() == 't'
		case "is_deleted":
			deleted = deleted || s.peek() == 't'
		}
		if err := s.skip(); err != nil {
			return false, false, err
		}
	}
}

// jsonScan is a strict, non-recursive JSON reader over a byte slice: it validates everything it
// passes (RFC 8259 grammar, as encoding/json.Valid) and hands out sub-slices instead of copies.
type jsonScan struct {
	b        []byte
	i        int // next byte to read
	depth    int // open containers
	maxDepth int
}

// fail returns a *DecodeError at the current offset.
func (s *jsonScan) fail(reason string) error {
	return &DecodeError{Offset: s.i, Reason: reason}
}

// syntax returns a *DecodeError for invalid JSON at the current offset.
func (s *jsonScan) syntax(what string) error {
	if s.i >= len(s.b) {
		return s.fail("invalid JSON: unexpected end of input")
	}
	return s.fail("invalid JSON: unexpected " + quoteByte(s.b[s.i]) + " " + what)
}

// ws skips JSON whitespace.
func (s *jsonScan) ws() {
	b, i := s.b, s.i
	for i < len(b) && b[i] <= ' ' && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	s.i = i
}

// peek skips whitespace and returns the next byte, 0 at the end.
func (s *jsonScan) peek() byte {
	s.ws()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// enter consumes the '{' or '[' at s.i and enforces the depth limit.
func (s *jsonScan) enter() error {
	s.depth++
	if s.depth > s.maxDepth {
		return s.fail("nesting deeper than " + strconv.Itoa(s.maxDepth) + " levels")
	}
	s.i++
	return nil
}

// more advances to the next element of the open container closed by end. It consumes the
// separating comma (not before the first element, tracked in *first) or the closing byte, in
// which case it returns false.
func (s *jsonScan) more(end byte, first *bool) (bool, error) {
	c := s.peek()
	if c == end {
		s.i++
		s.depth--
		return false, nil
	}
	if *first {
		*first = false
		return true, nil
	}
	if c != ',' {
		return false, s.syntax("after a value, want ',' or " + quoteByte(end))
	}
	s.i++
	s.ws()
	return true, nil
}

// key reads an object member name and its colon. The name is a sub-slice of the input unless
// it holds escapes, in which case it is decoded.
func (s *jsonScan) key() ([]byte, error) {
	if s.peek() != '"' {
		return nil, s.syntax("looking for the beginning of an object key")
	}
	start, end, plain, err := s.str()
	if err != nil {
		return nil, err
	}
	key := s.b[start:end]
	if !plain {
		var k string
		if err := json.Unmarshal(s.b[start-1:end+1], &k); err != nil {
			return nil, s.fail("invalid JSON: bad object key")
		}
		key = []byte(k)
	}
	if s.peek() != ':' {
		return nil, s.syntax("after an object key, want ':'")
	}
	s.i++
	s.ws()
	return key, nil
}

// text reads a JSON string value (s at its quote) and returns it decoded. Names common in
// Meta payloads are interned when internNames is set, so they cost no allocation.
func (s *jsonScan) text(internNames bool) (string, error) {
	start, end, plain, err := s.str()
	if err != nil {
		return "", err
	}
	if plain {
		if internNames {
			return intern(s.b[start:end]), nil
		}
		return string(s.b[start:end]), nil
	}
	var v string
	if err := json.Unmarshal(s.b[start-1:end+1], &v); err != nil {
		return "", s.fail("invalid JSON: bad string")
	}
	return v, nil
}

// str scans the string whose opening quote is at s.i and returns the bounds of its contents.
// plain reports that the contents hold no escapes and are valid UTF-8, so they can be used as
// they are.
func (s *jsonScan) str() (start, end int, plain bool, err error) {
	b := s.b
	start = s.i + 1
	plain = true
	ascii := true
	for i := start; i < len(b); {
		c := b[i]
		if strPlain[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			s.i = i + 1
			if !ascii && !utf8.Valid(b[start:i]) {
				plain = false
			}
			return start, i, plain, nil
		case c == '\\':
			plain = false
			if i+1 >= len(b) {
				s.i = len(b)
				return 0, 0, false, s.syntax("")
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for k := i + 2; k < i+6; k++ {
					if k >= len(b) || !isHex(b[k]) {
						s.i = min(k, len(b))
						return 0, 0, false, s.syntax("in \\u escape")
					}
				}
				i += 6
			default:
				s.i = i + 1
				return 0, 0, false, s.syntax("in string escape")
			}
		case c < 0x20:
			s.i = i
			return 0, 0, false, s.syntax("in string literal")
		default:
			if c >= utf8.RuneSelf {
				ascii = false
			}
			i++
		}
	}
	s.i = len(b)
	return 0, 0, false, s.syntax("")
}

// number scans a JSON number at s.i and returns its bytes.
func (s *jsonScan) number() ([]byte, error) {
	start := s.i
	end, _, bad := scanNumber(s.b, start)
	s.i = end
	if bad != "" {
		return nil, s.syntax(bad)
	}
	return s.b[start:end], nil
}

// scanNumber reads the JSON number at b[i:] and returns where it ends and whether it has an
// exponent; if it breaks JSON's number grammar, end is where and bad says how (as
// encoding/json words it).
func scanNumber(b []byte, i int) (end int, exp bool, bad string) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return i, false, "in numeric literal"
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return i, false, "after decimal point in numeric literal"
		}
		for ; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		exp = true
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, true, "in exponent of numeric literal"
		}
		for ; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, exp, ""
}

// literal consumes the literal word (true, false, null) at s.i.
func (s *jsonScan) literal(word string) error {
	for k := 0; k < len(word); k++ {
		if s.i >= len(s.b) || s.b[s.i] != word[k] {
			return s.syntax("in literal " + word)
		}
		s.i++
	}
	return nil
}

// entryTime reads entry[].time: a number, a numeric string ("1700000000") or an ISO 8601
// string ("2026-11-23T12:00:00+0000", RFC 3339), as Unix time (numbers as sent, fractions
// truncated; ISO times in seconds), 0 when it is none of those. raw is the JSON token exactly
// as sent, kept for the envelope, except for a plain integer, which Time reproduces. Only
// invalid JSON is an error.
func (s *jsonScan) entryTime() (t int64, raw string, err error) {
	start := s.i
	switch c := s.peek(); {
	case c == '-' || isDigit(c):
		start = s.i
		num, err := s.number()
		if err != nil {
			return 0, "", err
		}
		t = parseLenientInt(num)
		if string(num) != strconv.FormatInt(t, 10) || t == 0 {
			raw = string(num)
		}
		return t, raw, nil
	case c == '"':
		start = s.i
		from, end, _, err := s.str()
		if err != nil {
			return 0, "", err
		}
		return parseTimeText(s.b[from:end]), string(s.b[start:s.i]), nil
	default:
		start = s.i
		if err := s.skip(); err != nil {
			return 0, "", err
		}
		return 0, string(s.b[start:s.i]), nil
	}
}

// isoLayouts are the ISO 8601 forms entry.time is read in: Graph API's (+0000), RFC 3339, and
// both without seconds' fraction or zone.
var isoLayouts = []string{
	"2006-01-02T15:04:05.999999999Z0700",
	time.RFC3339Nano,
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02",
}

// parseTimeText reads a numeric string as parseLenientInt does, else an ISO 8601 time as Unix
// seconds, else 0.
func parseTimeText(b []byte) int64 {
	if len(b) > 0 && (b[0] == '-' || isDigit(b[0])) && !bytes.ContainsAny(b, "T:") {
		if n := parseLenientInt(b); n != 0 {
			return n
		}
	}
	if len(b) > 64 {
		return 0
	}
	for _, layout := range isoLayouts {
		if tm, err := time.Parse(layout, string(b)); err == nil {
			return tm.Unix()
		}
	}
	return 0
}

// parseLenientInt parses b as a decimal integer, else as a float truncated toward zero, else 0.
func parseLenientInt(b []byte) int64 {
	if n, err := strconv.ParseInt(string(b), 10, 64); err == nil {
		return n
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(f) || f >= math.MaxInt64 || f <= math.MinInt64 {
		return 0
	}
	return int64(f)
}

// skip validates and passes the value at s.i, whatever it is, without recursion: the container
// kinds of the open levels are kept on a small stack.
func (s *jsonScan) skip() error {
	var stackBuf [32]byte
	stack := stackBuf[:0]
	for {
		// A value is expected at s.i.
		s.ws()
		if s.i >= len(s.b) {
			return s.syntax("")
		}
		switch c := s.b[s.i]; {
		case c == '{' || c == '[':
			if err := s.enter(); err != nil {
				return err
			}
			stack = append(stack, c)
			s.ws()
			if c == '[' {
				if s.i < len(s.b) && s.b[s.i] == ']' {
					s.i++
					s.depth--
					stack = stack[:len(stack)-1]
					break // to the end of a value
				}
				continue // the first element
			}
			if s.i < len(s.b) && s.b[s.i] == '}' {
				s.i++
				s.depth--
				stack = stack[:len(stack)-1]
				break
			}
			if err := s.skipKey(); err != nil {
				return err
			}
			continue // the first member's value
		case c == '"':
			if _, _, _, err := s.str(); err != nil {
				return err
			}
		case c == '-' || isDigit(c):
			if _, err := s.number(); err != nil {
				return err
			}
		case c == 't':
			if err := s.literal("true"); err != nil {
				return err
			}
		case c == 'f':
			if err := s.literal("false"); err != nil {
				return err
			}
		case c == 'n':
			if err := s.literal("null"); err != nil {
				return err
			}
		default:
			return s.syntax("looking for the beginning of a value")
		}
		// A value ended: close finished containers, then expect the next element.
		for {
			if len(stack) == 0 {
				return nil
			}
			s.ws()
			if s.i >= len(s.b) {
				return s.syntax("")
			}
			top, c := stack[len(stack)-1], s.b[s.i]
			if c == ',' {
				s.i++
				if top == '{' {
					s.ws()
					if err := s.skipKey(); err != nil {
						return err
					}
				}
				break
			}
			if (top == '{' && c == '}') || (top == '[' && c == ']') {
				s.i++
				s.depth--
				stack = stack[:len(stack)-1]
				continue
			}
			return s.syntax("after a value, want ',' or a closing bracket")
		}
	}
}

// skipKey passes an object member name and its colon.
func (s *jsonScan) skipKey() error {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return s.syntax("looking for the beginning of an object key")
	}
	if _, _, _, err := s.str(); err != nil {
		return err
	}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return s.syntax("after an object key, want ':'")
	}
	s.i++
	return nil
}

// strPlain marks the bytes a string scan passes without a second look: printable ASCII other
// than the quote and the backslash.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool {
	_, ok := hexdigit.Value(c)
	return ok
}

// kindOf names the JSON type a value starting with c has, "" when c cannot start one.
func kindOf(c byte) string {
	switch {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || isDigit(c):
		return "a number"
	}
	return ""
}

func kindOrInvalid(c byte) string {
	if k := kindOf(c); k != "" {
		return k
	}
	if c == 0 {
		return "end of input"
	}
	return "invalid JSON " + quoteByte(c)
}

// quoteByte renders c for an error message without echoing arbitrary body bytes.
func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// internTable holds names that recur in every notification (objects, fields, verbs), so
// decoding them allocates nothing.
var internTable = func() map[string]string {
	names := []string{
		// objects
		"page", "user", "instagram", "whatsapp_business_account", "permissions", "application",
		"certificate_transparency", "payment_subscriptions", "homepage",
		// fields
		"messages", "feed", "comments", "live_comments", "mentions", "story_insights", "leadgen",
		"photos", "email", "first_name", "last_name", "name", "picture", "messaging", "standby",
		"account_update", "account_alerts", "account_review_update", "business_capability_update",
		"message_template_status_update", "message_template_quality_update",
		"phone_number_name_update", "phone_number_quality_update", "template_category_update",
		"security", "flows", "smb_message_echoes", "history", "message_echoes",
		"connected", "bookmarked", "ratings", "conversations", "videos", "live_videos",
		// verbs and messaging kinds
		"add", "block", "edit", "edited", "delete", "follow", "hide", "mute", "remove",
		"unblock", "unhide", "update", "granted", "revoked",
		"message", "echo", "postback", "delivery", "read", "reaction", "referral", "optin",
		"account_linking", "pass_thread_control", "take_thread_control",
		"request_thread_control", "app_roles", "policy_enforcement", "message_edit",
		"messaging_feedback", "game_play", "unsend",
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = n
	}
	return m
}()

// intern returns b as a string, shared for common names.
func intern(b []byte) string {
	if s, ok := internTable[string(b)]; ok {
		return s
	}
	return string(b)
}
