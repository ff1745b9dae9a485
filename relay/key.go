package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
)

// maxKeyLen bounds a natural key; longer ones are hashed so the dedup index stays small.
const maxKeyLen = 200

// Key returns the dedup key of a change, the value the receiver stores as Event.ID. A change
// Meta sends again gets the same key whatever batch it arrives in, and two changes that differ
// in Meta's model get different keys. Keys include the app, so two apps subscribed to the same
// account each get their own copy. The forms are:
//
//	wa:msg:<app>:<id>[,<id>…]                 WhatsApp messages (ids sorted)
//	wa:st:<app>:<id>:<status>[:<recipient>:<participant>][,…]   WhatsApp statuses
//	mid:<app>:<object>:<field>:<verb>:<mid>   messaging/standby message, echo, unsend, postback
//	n:<32 hex>                                a natural key above 200 bytes, hashed
//	h:<32 hex>                                anything else
//
// What identifies a change of each object and field is the table Identities: a natural id,
// the value itself (when it carries the change's own id or event time), or the value and
// entry.time (when nothing in the value tells a new change from a repeat: a permission
// granted, revoked and granted again has the same value the first and third time). entry.time
// is Meta's send time, which changes when Meta retries, so a retry of such a change may be
// delivered twice, which at-least-once allows; a drop would not be. An entry without a time
// makes such a key unique to the request (its receive time).
//
// The h: form is SHA-256 over the app, object, entry id, field, verb, source, the time where
// the table says so and the value with insignificant whitespace removed, so a re-indented copy
// of a change matches too.
//
// Key reads only the few members it needs from Value and never fails: a value it cannot read
// falls back to the hash form.
func Key(ev *Event) string {
	id := IdentityOf(ev)
	switch id.Kind {
	case IdentityWhatsApp:
		if k := whatsAppKey(ev); k != "" {
			return k
		}
		return hashKey(ev, true)
	case IdentityMid:
		if k := midKey(ev); k != "" {
			return k
		}
		return hashKey(ev, false)
	case IdentityValue:
		return hashKey(ev, false)
	}
	return hashKey(ev, true)
}

// IdentityKind says what tells two changes apart.
type IdentityKind uint8

// The kinds of change identity.
const (
	// IdentityValueTime: the value and entry.time (see Key).
	IdentityValueTime IdentityKind = iota
	// IdentityValue: the value, which holds the change's own id or event time.
	IdentityValue
	// IdentityWhatsApp: the WhatsApp message ids, or status ids with their status and
	// participant; else the value and entry.time.
	IdentityWhatsApp
	// IdentityMid: the event's mid; else the value (a messaging event has its timestamp).
	IdentityMid
)

// Identity is one row of the identity table: which changes it applies to and what tells them
// apart. Empty Object, Field and Sources, and nil Verbs, match anything.
type Identity struct {
	Object  string
	Field   string
	Verbs   []string
	Sources []Source
	Kind    IdentityKind
	// Why says, for the README, what in the change identifies it.
	Why string
}

// Identities is the identity table, first match wins; the last row matches everything. The
// README's dedup key table is generated from it (go test ./relay -run TestREADME -update).
var Identities = []Identity{
	{Sources: []Source{SourceMessaging, SourceStandby}, Verbs: []string{"message", "echo", "unsend", "postback"}, Kind: IdentityMid,
		Why: "the event's own `mid` (an unsend carries the deleted message's mid: its verb keeps it apart; a reply's `reply_to.mid` is not its own); a postback without a mid: its value"},
	{Sources: []Source{SourceMessaging, SourceStandby}, Kind: IdentityValue,
		Why: "the whole event: its `timestamp` and what it names (a reaction, read, delivery or `message_edit` names another message's mid; `reaction.action` and `message_edit.num_edit` tell repeats apart)"},
	{Object: "whatsapp_business_account", Field: "messages", Kind: IdentityWhatsApp,
		Why: "`messages[].id`; `statuses[].id` + `status` (+ `recipient_id` and `recipient_participant_id` for a group); a value with neither (`errors` only): value and entry.time"},
	{Object: "page", Field: "feed", Verbs: []string{"add"}, Kind: IdentityValue,
		Why: "the new post's, comment's or reaction's ids and `created_time`: nothing is added twice"},
	{Object: "page", Field: "leadgen", Kind: IdentityValue, Why: "`leadgen_id`, one per lead"},
	{Object: "instagram", Field: "comments", Kind: IdentityValue, Why: "the comment's `id`"},
	{Object: "instagram", Field: "live_comments", Kind: IdentityValue, Why: "the comment's `id`"},
	{Object: "instagram", Field: "mentions", Kind: IdentityValue, Why: "`comment_id` or `media_id` of the mention"},
	{Object: "instagram", Field: "story_insights", Kind: IdentityValue, Why: "`media_id`: sent once, when the story expires"},
	{Sources: []Source{SourceChangedFields}, Kind: IdentityValueTime, Why: "no value at all (Include Values off): entry.time"},
	{Sources: []Source{SourceUnknown}, Kind: IdentityValueTime, Why: "the whole entry, entry.time included"},
	{Kind: IdentityValueTime,
		Why: "nothing in the value tells a new change from a repeat (permissions granted, revoked and granted again; a user's email changed back; page feed edits, hides and removes; WhatsApp account and template updates…): value and entry.time"},
}

// IdentityOf returns the row of Identities that applies to ev. A change found as field and
// value directly in an entry (SourceEntry) is identified as if it came in changes[].
func IdentityOf(ev *Event) *Identity {
	src := ev.Source
	if src == SourceEntry {
		src = SourceChanges
	}
	for i := range Identities {
		id := &Identities[i]
		if (id.Object == "" || id.Object == ev.Object) && (id.Field == "" || id.Field == ev.Field) &&
			(id.Verbs == nil || slices.Contains(id.Verbs, ev.Verb)) && (id.Sources == nil || slices.Contains(id.Sources, src)) {
			return id
		}
	}
	return &Identities[len(Identities)-1]
}

// waStatus is one WhatsApp status: the message it is about, what happened to it and, for a
// group message, the group and the participant it happened for.
type waStatus struct{ id, status, recipient, participant []byte }

// whatsAppKey builds a wa: key from value.messages[].id or value.statuses[].{id,status}; ""
// when the value has neither, both, or an element without them.
func whatsAppKey(ev *Event) string {
	var msgBuf [4][]byte
	var stBuf [4]waStatus
	msgs, sts, ok := whatsAppIDs(ev.Value, msgBuf[:0], stBuf[:0])
	if !ok || (len(msgs) == 0) == (len(sts) == 0) {
		return ""
	}
	if len(msgs) > 0 {
		return boundKey(waMessagesKey(ev.App, msgs))
	}
	return boundKey(waStatusesKey(ev.App, sts))
}

// whatsAppIDs appends the ids of value.messages[] to msgs and the statuses of
// value.statuses[] to sts; ok is false when the value is not valid JSON or an element lacks
// its id (or status).
func whatsAppIDs(value []byte, msgs [][]byte, sts []waStatus) (_ [][]byte, _ []waStatus, ok bool) {
	s := jsonscan.New(value, 0)
	ok = s.Members(func(key []byte) (bool, error) {
		switch string(key) {
		case "messages":
			return true, s.Elements(func() (bool, error) {
				var id []byte
				err := s.Members(func(key []byte) (bool, error) {
					if string(key) == "id" {
						id = s.PlainString()
						return true, nil
					}
					return false, nil
				})
				if len(id) == 0 {
					return false, errNoKey
				}
				msgs = append(msgs, id)
				return true, err
			})
		case "statuses":
			return true, s.Elements(func() (bool, error) {
				var st waStatus
				err := s.Members(func(key []byte) (bool, error) {
					switch string(key) {
					case "id":
						st.id = s.PlainString()
						return true, nil
					case "status":
						st.status = s.PlainString()
						return true, nil
					case "recipient_id":
						st.recipient = s.PlainString()
						return true, nil
					case "recipient_participant_id":
						st.participant = s.PlainString()
						return true, nil
					}
					return false, nil
				})
				if len(st.id) == 0 || len(st.status) == 0 {
					return false, errNoKey
				}
				sts = append(sts, st)
				return true, err
			})
		}
		return false, nil
	}) == nil
	return msgs, sts, ok
}

// waMessagesKey is "wa:msg:<app>:<ids>", the message ids sorted.
func waMessagesKey(app string, msgs [][]byte) string {
	var b strings.Builder
	slices.SortFunc(msgs, func(x, y []byte) int { return strings.Compare(string(x), string(y)) })
	n := len("wa:msg::") + len(app)
	for _, id := range msgs {
		n += len(id) + 1
	}
	b.Grow(n)
	b.WriteString("wa:msg:")
	b.WriteString(app)
	b.WriteByte(':')
	for i, id := range msgs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(id)
	}
	return b.String()
}

// waStatusesKey is "wa:st:<app>:<id>:<status>[:<recipient>:<participant>],…", sorted.
func waStatusesKey(app string, sts []waStatus) string {
	var b strings.Builder
	slices.SortFunc(sts, func(x, y waStatus) int {
		if c := strings.Compare(string(x.id), string(y.id)); c != 0 {
			return c
		}
		if c := strings.Compare(string(x.status), string(y.status)); c != 0 {
			return c
		}
		if c := strings.Compare(string(x.recipient), string(y.recipient)); c != 0 {
			return c
		}
		return strings.Compare(string(x.participant), string(y.participant))
	})
	n := len("wa:st::") + len(app)
	for _, st := range sts {
		n += len(st.id) + len(st.status) + len(st.recipient) + len(st.participant) + 4
	}
	b.Grow(n)
	b.WriteString("wa:st:")
	b.WriteString(app)
	b.WriteByte(':')
	for i, st := range sts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(st.id)
		b.WriteByte(':')
		b.Write(st.status)
		// A group message has one status per participant; recipient_id is the group. A
		// one-to-one status keeps the short form: its message id names its one recipient
		// (and keys written by earlier versions keep matching).
		if len(st.participant) > 0 {
			b.WriteByte(':')
			b.Write(st.recipient)
			b.WriteByte(':')
			b.Write(st.participant)
		}
	}
	return b.String()
}

// midKey builds a mid: key for message, echo and postback events that carry a mid; "" else.
func midKey(ev *Event) string {
	var holder string
	switch ev.Verb {
	case "message", "echo", "unsend":
		holder = "message"
	case "postback":
		holder = "postback"
	default:
		return ""
	}
	var mid []byte
	s := jsonscan.New(ev.Value, 0)
	err := s.Members(func(key []byte) (bool, error) {
		if string(key) != holder || s.Peek() != '{' {
			return false, nil
		}
		return true, s.Members(func(key []byte) (bool, error) {
			if string(key) == "mid" {
				mid = s.PlainString()
				return true, nil
			}
			return false, nil
		})
	})
	if err != nil || len(mid) == 0 {
		return ""
	}
	var b strings.Builder
	b.Grow(len("mid:::::") + len(ev.App) + len(ev.Object) + len(ev.Field) + len(ev.Verb) + len(mid))
	b.WriteString("mid:")
	b.WriteString(ev.App)
	b.WriteByte(':')
	b.WriteString(ev.Object)
	b.WriteByte(':')
	b.WriteString(ev.Field)
	b.WriteByte(':')
	b.WriteString(ev.Verb)
	b.WriteByte(':')
	b.Write(mid)
	return boundKey(b.String())
}

// boundKey hashes natural keys longer than maxKeyLen.
func boundKey(k string) string {
	if len(k) <= maxKeyLen {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return "n:" + hex.EncodeToString(sum[:16])
}

// keyHasher is the reusable state of hashKey.
type keyHasher struct {
	h   hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

var keyHashers = sync.Pool{New: func() any { return &keyHasher{h: sha256.New()} }}

// hashKey returns "h:" and 32 hex digits of SHA-256 over the change's identity; withTime adds
// entry.time (or, when the entry has none, the time the request was received).
func hashKey(ev *Event, withTime bool) string {
	kh := keyHashers.Get().(*keyHasher)
	b := kh.buf[:0]
	b = append(b, "hubrelay-key-v1"...)
	b = appendField(b, ev.App)
	b = appendField(b, ev.Object)
	b = appendField(b, ev.Entry.ID)
	b = appendField(b, ev.Field)
	b = appendField(b, ev.Verb)
	src := ev.Source
	if src == SourceEntry {
		src = SourceChanges // the same change, however the entry holds it
	}
	b = append(b, byte(src))
	if withTime {
		b = appendTime(b, ev)
	}
	b = append(b, 0)
	b = appendCompact(b, ev.Value)
	kh.h.Reset()
	kh.h.Write(b)
	sum := kh.h.Sum(kh.sum[:0])
	var out [2 + 32]byte
	copy(out[:], "h:")
	hex.Encode(out[2:], sum[:16])
	if cap(b) <= 64<<10 {
		kh.buf = b
	}
	keyHashers.Put(kh)
	return string(out[:])
}

// appendTime appends what stands for entry.time in a hash: the number (as keys of earlier
// versions did), else the JSON sent, else, when the entry has no time at all, "r" and the
// request's receive time, so the key never matches another request's.
func appendTime(b []byte, ev *Event) []byte {
	switch tj := ev.Entry.TimeJSON; {
	case ev.Entry.Time != 0:
		return strconv.AppendInt(b, ev.Entry.Time, 10)
	case tj != "" && tj != "null" && tj != "0":
		return append(b, tj...)
	}
	b = append(b, 'r')
	return strconv.AppendInt(b, ev.ReceivedAt.UnixNano(), 10)
}

// appendField appends s with its length, so adjacent fields cannot run into each other.
func appendField(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	return append(b, s...)
}

// appendCompact appends v without the whitespace between JSON tokens (as json.Compact, but it
// never fails: bytes that are not JSON are appended as they come, outside-string spaces aside).
func appendCompact(b, v []byte) []byte {
	inString, escaped := false, false
	start := 0
	for i, c := range v {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case ' ', '\t', '\n', '\r':
			b = append(b, v[start:i]...)
			start = i + 1
		}
	}
	return append(b, v[start:]...)
}

// errNoKey stops a key scan whose natural id is missing.
var errNoKey = &DecodeError{Reason: "no natural key"}
