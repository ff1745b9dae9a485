package relay

import (
	"fmt"
	"time"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
)

// Limits bounds what Decode accepts from one notification. A zero field means no limit of
// that kind (nesting is still capped at 10000 levels, as encoding/json does).
type Limits struct {
	// MaxChanges caps the number of events one notification may produce.
	MaxChanges int
	// MaxDepth caps JSON nesting depth over the whole body; the envelope object is depth 1,
	// so a change value object sits at depth 6 and a messaging element at depth 5.
	MaxDepth int
}

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
		s:          jsonscan.New(body, lim.MaxDepth),
		app:        app,
		receivedAt: receivedAt,
		maxChanges: lim.MaxChanges,
	}
	if err := d.envelope(); err != nil {
		return nil, asDecodeError(err)
	}
	return d.events, nil
}

// notifDecoder walks one notification envelope.
type notifDecoder struct {
	s          jsonscan.Scanner
	app        string
	receivedAt time.Time
	maxChanges int
	events     []Event
}

// envelope reads {"object": ..., "entry": [...]} and checks nothing follows it.
func (d *notifDecoder) envelope() error {
	s := &d.s
	if s.AtEnd() {
		return s.Fail("empty body")
	}
	if c := s.Peek(); c != '{' {
		if kind := jsonscan.KindOf(c); kind != "" {
			return s.Fail("top level is " + kind + ", want an object with \"object\" and \"entry\"")
		}
		return s.Syntax("looking for the beginning of a value")
	}
	if err := s.Enter(); err != nil {
		return err
	}
	var object string
	var haveObject, haveEntry bool
	for first := true; ; {
		more, err := s.More('}', &first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		key, err := s.Key()
		if err != nil {
			return err
		}
		switch string(key) {
		case "object":
			if haveObject {
				return s.Fail(`duplicate "object"`)
			}
			haveObject = true
			if c := s.Peek(); c != '"' {
				return s.Fail(`"object": want a string, got ` + jsonscan.KindOrInvalid(c))
			}
			if object, err = s.Text(intern); err != nil {
				return err
			}
		case "entry":
			if haveEntry {
				return s.Fail(`duplicate "entry"`)
			}
			haveEntry = true
			if c := s.Peek(); c != '[' {
				return s.Fail(`"entry": want an array, got ` + jsonscan.KindOrInvalid(c))
			}
			if err := d.entries(); err != nil {
				return err
			}
		default:
			if err := s.Skip(); err != nil {
				return err
			}
		}
	}
	if !s.AtEnd() {
		return s.Fail("unexpected data after the top-level object")
	}
	switch {
	case !haveObject:
		return s.Fail(`missing "object"`)
	case object == "":
		return s.Fail(`"object" is empty`)
	case !haveEntry:
		return s.Fail(`missing "entry"`)
	}
	for i := range d.events {
		d.events[i].Object = object
	}
	return nil
}

// entries reads the entry array; s is at its '['.
func (d *notifDecoder) entries() error {
	s := &d.s
	if err := s.Enter(); err != nil {
		return err
	}
	return s.Each(func(n int) error {
		if c := s.Peek(); c != '{' {
			return s.Fail(fmt.Sprintf("entry[%d]: want an object, got %s", n, jsonscan.KindOrInvalid(c)))
		}
		return d.entry(n)
	})
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
	entryStart := s.Pos()
	if err := s.Enter(); err != nil {
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
		more, err := s.More('}', &first)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		key, err := s.Key()
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
			e.Time, e.TimeJSON, err = entryTime(s)
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
			if s.Peek() == '"' {
				field, err = s.Text(intern)
				fieldOK = field != ""
			} else {
				err = s.Skip()
			}
		case "value":
			bit = seenValue
			vs := s.Pos()
			verb, err = d.valueVerb()
			value = s.Since(vs)
		default:
			vs := s.Pos()
			err = s.Skip()
			if err == nil && unknown == "" && !jsonscan.Empty(s.Since(vs)) {
				unknown = intern(key)
			}
		}
		if err != nil {
			return err
		}
		if seen&bit != 0 {
			return s.Fail(fmt.Sprintf("entry[%d]: duplicate %q", n, key))
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
		if err := d.add(Event{Field: unknown, Source: SourceUnknown, Value: s.Since(entryStart)}); err != nil {
			return err
		}
	}
	for i := start; i < len(d.events); i++ {
		d.events[i].Entry = e
	}
	return nil
}

// id reads entry[n].id or .uid: a string, a number (its exact digits) or null ("").
func (d *notifDecoder) id(n int, name string) (string, error) {
	s := &d.s
	switch c := s.Peek(); {
	case c == '"':
		return s.Text(nil)
	case c == '-' || jsonscan.IsDigit(c):
		raw, err := s.Number()
		return string(raw), err
	case c == 'n':
		return "", s.Literal("null")
	default:
		return "", s.Fail(fmt.Sprintf("entry[%d].%s: want a string or number, got %s", n, name, jsonscan.KindOrInvalid(c)))
	}
}

// arrayOrNull opens the array member name of entry[n]. It returns false when the member is
// null, which counts as absent.
func (d *notifDecoder) arrayOrNull(n int, name string) (bool, error) {
	s := &d.s
	switch c := s.Peek(); c {
	case '[':
		return true, s.Enter()
	case 'n':
		return false, s.Literal("null")
	default:
		return false, s.Fail(fmt.Sprintf("entry[%d].%s: want an array, got %s", n, name, jsonscan.KindOrInvalid(c)))
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
	n := min(d.s.Len()/160+1, 1024)
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
	return s.Each(func(m int) error {
		if c := s.Peek(); c != '{' {
			return s.Fail(fmt.Sprintf("entry[%d].changes[%d]: want an object, got %s", n, m, jsonscan.KindOrInvalid(c)))
		}
		ev, err := d.change(n, m)
		if err != nil {
			return err
		}
		return d.add(ev)
	})
}

// change reads one {"field": ..., "value": ...} element; s is at its '{'.
func (d *notifDecoder) change(n, m int) (Event, error) {
	s := &d.s
	ev := Event{Source: SourceChanges}
	if err := s.Enter(); err != nil {
		return ev, err
	}
	var haveField, haveValue bool
	for first := true; ; {
		more, err := s.More('}', &first)
		if err != nil {
			return ev, err
		}
		if !more {
			break
		}
		key, err := s.Key()
		if err != nil {
			return ev, err
		}
		switch string(key) {
		case "field":
			if haveField {
				return ev, s.Fail(fmt.Sprintf("entry[%d].changes[%d]: duplicate \"field\"", n, m))
			}
			haveField = true
			if c := s.Peek(); c != '"' {
				return ev, s.Fail(fmt.Sprintf("entry[%d].changes[%d].field: want a string, got %s", n, m, jsonscan.KindOrInvalid(c)))
			}
			if ev.Field, err = s.Text(intern); err != nil {
				return ev, err
			}
		case "value":
			if haveValue {
				return ev, s.Fail(fmt.Sprintf("entry[%d].changes[%d]: duplicate \"value\"", n, m))
			}
			haveValue = true
			start := s.Pos()
			if ev.Verb, err = d.valueVerb(); err != nil {
				return ev, err
			}
			ev.Value = s.Since(start)
		default:
			if err := s.Skip(); err != nil {
				return ev, err
			}
		}
	}
	if !haveField {
		return ev, s.Fail(fmt.Sprintf("entry[%d].changes[%d]: missing \"field\"", n, m))
	}
	if ev.Field == "" {
		return ev, s.Fail(fmt.Sprintf("entry[%d].changes[%d].field: empty", n, m))
	}
	return ev, nil
}

// valueVerb skips a change value and returns its top-level string "verb", if any.
func (d *notifDecoder) valueVerb() (string, error) {
	s := &d.s
	if s.Peek() != '{' {
		return "", s.Skip()
	}
	if err := s.Enter(); err != nil {
		return "", err
	}
	var verb string
	for first := true; ; {
		more, err := s.More('}', &first)
		if err != nil || !more {
			return verb, err
		}
		key, err := s.Key()
		if err != nil {
			return "", err
		}
		if string(key) == "verb" && s.Peek() == '"' && verb == "" {
			verb, err = s.Text(intern)
		} else {
			err = s.Skip()
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
	return s.Each(func(m int) error {
		if c := s.Peek(); c != '"' {
			return s.Fail(fmt.Sprintf("entry[%d].changed_fields[%d]: want a string, got %s", n, m, jsonscan.KindOrInvalid(c)))
		}
		name, err := s.Text(intern)
		if err != nil {
			return err
		}
		if name == "" {
			return s.Fail(fmt.Sprintf("entry[%d].changed_fields[%d]: empty", n, m))
		}
		return d.add(Event{Field: name, Source: SourceChangedFields})
	})
}

// messaging reads entry[n].messaging or entry[n].standby.
func (d *notifDecoder) messaging(n int, field string, src Source) error {
	s := &d.s
	if ok, err := d.arrayOrNull(n, field); !ok || err != nil {
		return err
	}
	return s.Each(func(m int) error {
		if c := s.Peek(); c != '{' {
			return s.Fail(fmt.Sprintf("entry[%d].%s[%d]: want an object, got %s", n, field, m, jsonscan.KindOrInvalid(c)))
		}
		start := s.Pos()
		verb, err := d.messagingVerb()
		if err != nil {
			return err
		}
		return d.add(Event{Field: field, Verb: verb, Source: src, Value: s.Since(start)})
	})
}

// messagingVerb skips one messaging element and returns its event kind; s is at its '{'.
func (d *notifDecoder) messagingVerb() (string, error) {
	s := &d.s
	if err := s.Enter(); err != nil {
		return "", err
	}
	var verb string
	var message, echo, deleted bool
	for first := true; ; {
		more, err := s.More('}', &first)
		if err != nil {
			return "", err
		}
		if !more {
			break
		}
		key, err := s.Key()
		if err != nil {
			return "", err
		}
		switch string(key) {
		case "sender", "recipient", "timestamp":
			err = s.Skip()
		case "message":
			message = true
			echo, deleted, err = d.messageFlags()
		default:
			if verb == "" {
				verb = intern(key)
			}
			err = s.Skip()
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
	if s.Peek() != '{' {
		return false, false, s.Skip()
	}
	if err := s.Enter(); err != nil {
		return false, false, err
	}
	for first := true; ; {
		more, err := s.More('}', &first)
		if err != nil || !more {
			return echo, deleted, err
		}
		key, err := s.Key()
		if err != nil {
			return false, false, err
		}
		switch string(key) {
		case "is_echo":
			echo = echo || s.Peek() == 't'
		case "is_deleted":
			deleted = deleted || s.Peek() == 't'
		}
		if err := s.Skip(); err != nil {
			return false, false, err
		}
	}
}
