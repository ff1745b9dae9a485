package relay

import (
	"encoding/json"
	"time"
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
	}
	return "unknown"
}

// Entry is the part of a Meta entry[] element every change of that entry shares.
type Entry struct {
	// ID is entry[].id as a string (Meta sends it as a string; legacy payloads as a number).
	ID string `json:"id"`
	// UID is entry[].uid for the user object, empty elsewhere.
	UID string `json:"uid,omitempty"`
	// Time is entry[].time as sent: the time Meta sent the notification (seconds for Graph
	// objects, milliseconds for messaging), 0 when absent (WhatsApp). It changes between
	// retries, so it is never part of a change's identity.
	Time int64 `json:"time,omitempty"`
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
}
