package relay

import (
	"strconv"
	"time"
	"unicode/utf8"
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
	dst = appendJSONString(dst, ev.ID)
	dst = append(dst, `,"app":`...)
	dst = appendJSONString(dst, ev.App)
	dst = append(dst, `,"object":`...)
	dst = appendJSONString(dst, ev.Object)
	dst = append(dst, `,"entry":`...)
	dst = appendEntry(dst, &ev.Entry)
	dst = append(dst, `,"field":`...)
	dst = appendJSONString(dst, ev.Field)
	if ev.Verb != "" {
		dst = append(dst, `,"verb":`...)
		dst = appendJSONString(dst, ev.Verb)
	}
	if ev.Source == SourceEntry || ev.Source == SourceUnknown {
		dst = append(dst, `,"source":`...)
		dst = appendJSONString(dst, ev.Source.String())
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
	dst = appendJSONString(dst, e.ID)
	if e.UID != "" {
		dst = append(dst, `,"uid":`...)
		dst = appendJSONString(dst, e.UID)
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

// safeASCII reports which ASCII bytes need no escaping inside a JSON string.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a quoted JSON string. Runs of safe bytes are copied at once.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if safeASCII[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript parsers; encoding/json escapes them.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
