package relay

import (
	"strconv"
	"time"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
)

// AppendEnvelope appends the JSON envelope of ev to dst and returns the extended slice:
//
//	{"id":…,"app":…,"object":…,"entry":{"id":…,"uid":…,"time":…},"field":…,"verb":…,"value":…,"received_at":…}
//
// source appears only for a change found as field and value in the entry itself ("entry") or
// for entry content the decoder did not recognise ("unknown": value is the whole entry).
// entry.uid, entry.time, verb and value are left out when empty or zero; entry.time is the
// JSON Meta sent (a string stays a string). Value is copied byte
// for byte: it is the change's JSON exactly as Meta sent it (escapes included), and it must
// already be valid JSON. received_at is RFC 3339 with nanoseconds, as encoding/json writes a
// time.Time. Strings are escaped as encoding/json escapes them (invalid UTF-8 becomes U+FFFD),
// except that <, > and & are kept as they are.
//
// It is the body an HTTP sink sends by default and the line a file sink writes.
func AppendEnvelope(dst []byte, ev *Event) []byte {
	dst = append(dst, `{"id":`...)
	dst = jsonscan.AppendString(dst, ev.ID)
	dst = append(dst, `,"app":`...)
	dst = jsonscan.AppendString(dst, ev.App)
	dst = append(dst, `,"object":`...)
	dst = jsonscan.AppendString(dst, ev.Object)
	dst = append(dst, `,"entry":`...)
	dst = appendEntry(dst, &ev.Entry)
	dst = append(dst, `,"field":`...)
	dst = jsonscan.AppendString(dst, ev.Field)
	if ev.Verb != "" {
		dst = append(dst, `,"verb":`...)
		dst = jsonscan.AppendString(dst, ev.Verb)
	}
	if ev.Source == SourceEntry || ev.Source == SourceUnknown {
		dst = append(dst, `,"source":`...)
		dst = jsonscan.AppendString(dst, ev.Source.String())
	}
	if len(ev.Value) > 0 {
		dst = append(dst, `,"value":`...)
		dst = append(dst, ev.Value...)
	}
	dst = append(dst, `,"received_at":"`...)
	dst = ev.ReceivedAt.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, `"}`...)
}

// appendEntry appends {"id":…,"uid":…,"time":…}: uid when set, time as sent (TimeJSON), else
// Time when not zero.
func appendEntry(dst []byte, e *Entry) []byte {
	dst = append(dst, `{"id":`...)
	dst = jsonscan.AppendString(dst, e.ID)
	if e.UID != "" {
		dst = append(dst, `,"uid":`...)
		dst = jsonscan.AppendString(dst, e.UID)
	}
	switch {
	case e.TimeJSON != "":
		dst = append(dst, `,"time":`...)
		dst = append(dst, e.TimeJSON...)
	case e.Time != 0:
		dst = append(dst, `,"time":`...)
		dst = strconv.AppendInt(dst, e.Time, 10)
	}
	return append(dst, '}')
}
