package relay

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/hubrelay/hubrelay/relay/internal/jsonscan"
)

// Source names where inside an entry a change was found.
type Source uint8

// The places a change can come from inside one entry of a Meta notification.
const (
	SourceChanges       Source = iota + 1 // entry[].changes[]: field + value
	SourceChangedFields                   // entry[].changed_fields[]: field name only (Include Values off)
	SourceMessaging                       // entry[].messaging[]: Messenger / Instagram event
	SourceStandby                         // entry[].standby[]: handover protocol, secondary receiver
	SourceRaw                             // a whole notification forwarded as received (body: raw sinks)
	SourceEntry                           // entry[].field + entry[].value (Instagram Business Login shape)
	SourceUnknown                         // entry content the decoder does not recognise: the whole entry
)

// String returns the JSON name of s.
func (s Source) String() string {
	switch s {
	case SourceChanges:
		return "changes"
	case SourceChangedFields:
		return "changed_fields"
	case SourceMessaging:
		return "messaging"
	case SourceStandby:
		return "standby"
	case SourceRaw:
		return "raw"
	case SourceEntry:
		return "entry"
	case SourceUnknown:
		return "unknown"
	}
	return "unknown"
}

// Entry is the part of a Meta entry[] element every change of that entry shares.
type Entry struct {
	// ID is entry[].id as a string (Meta sends it as a string; legacy payloads as a number).
	ID string `json:"id"`
	// UID is entry[].uid for the user object, empty elsewhere.
	UID string `json:"uid,omitempty"`
	// Time is entry[].time: the time Meta sent the notification (seconds for Graph objects,
	// milliseconds for messaging), 0 when absent (WhatsApp). A numeric string counts as its
	// number, an ISO 8601 string as Unix seconds. It changes between retries, so it is part of
	// a change's identity only where nothing else tells two changes apart (see Key).
	Time int64 `json:"time,omitempty"`
	// TimeJSON is entry[].time exactly as sent ("2026-11-23T12:00:00+0000", "1700000000",
	// 1.7e9, null…) when Time alone does not reproduce it, "" otherwise. The envelope carries
	// it in place of Time.
	TimeJSON string `json:"-"`
}

// MarshalJSON writes the entry as the envelope does: entry.time as sent.
func (e Entry) MarshalJSON() ([]byte, error) {
	return appendEntry(nil, &e), nil
}

// UnmarshalJSON reads an entry written by MarshalJSON (or AppendEnvelope): id, uid and time,
// time being any JSON value Decode accepts.
func (e *Entry) UnmarshalJSON(b []byte) error {
	var raw struct {
		ID   string          `json:"id"`
		UID  string          `json:"uid"`
		Time json.RawMessage `json:"time"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*e = Entry{ID: raw.ID, UID: raw.UID}
	if len(raw.Time) > 0 {
		s := jsonscan.New(raw.Time, 0)
		t, tj, err := entryTime(&s)
		if err != nil {
			return fmt.Errorf("entry time: %w", asDecodeError(err))
		}
		e.Time, e.TimeJSON = t, tj
	}
	return nil
}

// Event is one change of a Meta webhook notification: the unit that is deduplicated, routed,
// spooled and delivered.
type Event struct {
	// ID is the stable identity of the change (its dedup key): equal for a change Meta sends
	// again, whatever the batch or entry.time. See Key.
	ID string `json:"id"`
	// App is the name of the configured app whose secret verified the notification.
	App string `json:"app"`
	// Object is the notification's top-level object: page, user, instagram,
	// whatsapp_business_account, permissions…
	Object string `json:"object"`
	// Entry holds the entry id, uid and time.
	Entry Entry `json:"entry"`
	// Field is changes[].field, the changed_fields name, or "messaging" / "standby".
	Field string `json:"field"`
	// Verb is value.verb when the value carries one; for messaging and standby events the
	// event kind (message, postback, delivery, read, reaction…); empty otherwise.
	Verb string `json:"verb,omitempty"`
	// Source says where in the entry the change came from.
	Source Source `json:"-"`
	// Value is the raw JSON of the change exactly as received: changes[].value, or the whole
	// messaging[]/standby[] element; nil for changed_fields. For SourceRaw it is the whole
	// notification body.
	Value json.RawMessage `json:"value,omitempty"`
	// Signature is the X-Hub-Signature-256 header of the notification, kept only for
	// SourceRaw events so a receiving service can verify Meta's signature itself.
	Signature string `json:"-"`
	// ReceivedAt is when the relay received the notification.
	ReceivedAt time.Time `json:"received_at"`
	// Rules names the rules the change matched when it was accepted.
	Rules []string `json:"rules,omitempty"`
	// RuleErrors lists the rules that failed to evaluate for the change when it was routed;
	// such a change is dead-lettered for the rules sink (see RuleErrorSink).
	RuleErrors []RuleError `json:"rule_errors,omitempty"`
	// Order holds the change's ordering key for each of its sinks that has one (order_by),
	// decided when it was accepted: the engine delivers the changes of one key to that sink
	// one at a time, in acceptance order. Sinks without a key are left out.
	Order []OrderKey `json:"-"`
}

// OrderKey is the ordering key of a change for one sink.
type OrderKey struct {
	Sink string
	Key  string
}

// RuleError names a rule whose `when` failed to evaluate for a change, and the class of the
// failure. It never holds payload data, so it can go into logs and dead-letter reasons.
type RuleError struct {
	Rule  string `json:"rule"`
	Class string `json:"class"`
}
