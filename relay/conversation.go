package relay

import (
	"bytes"
	"encoding/json"
	"strings"
)

// Conversation returns the built-in conversation key of a change, the `conversation` of
// expressions and the usual `order_by` of a chatbot: every change of one conversation between
// the business and one party gets the same key, whatever its kind (message, status, echo,
// read…). It is:
//
//   - WhatsApp (object whatsapp_business_account, field messages): "whatsapp:" + the business
//     phone number id (value.metadata.phone_number_id) + ":" + the customer: the group id
//     (messages[0].group_id) where there is one, else messages[0].from, else
//     statuses[0].recipient_id (a group's id for the statuses of a group message). A change
//     with none of them (an errors-only value) is "whatsapp:" + the phone number id.
//   - Messenger and Instagram (objects page and instagram, messaging and standby events):
//     object + ":" + the page or account (entry.id) + ":" + the other party: sender.id, or
//     recipient.id when the sender is the page or account itself or the message is an echo
//     (message.is_echo), so that the business's own replies share their customer's key.
//   - Everything else, and a WhatsApp or messaging change whose value lacks those fields:
//     object + ":" + entry.id.
//
// It reads only the fields named above, so it costs one scan of the value.
func Conversation(ev *Event) string {
	switch {
	case ev.Object == "whatsapp_business_account" && ev.Field == "messages" && len(ev.Value) > 0:
		if k, ok := whatsappConversation(ev.Value); ok {
			return k
		}
	case (ev.Object == "page" || ev.Object == "instagram") &&
		(ev.Source == SourceMessaging || ev.Source == SourceStandby) && len(ev.Value) > 0:
		if k, ok := messagingConversation(ev.Object, ev.Entry.ID, ev.Value); ok {
			return k
		}
	}
	return ev.Object + ":" + ev.Entry.ID
}

// flexID is a JSON id Meta sends as a string (or, in older payloads, as a number).
type flexID string

// UnmarshalJSON accepts a string or a number; anything else is no id.
func (f *flexID) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexID(s)
		return nil
	}
	if len(b) > 0 && (b[0] == '-' || (b[0] >= '0' && b[0] <= '9')) {
		*f = flexID(b)
	}
	return nil
}

func whatsappConversation(value []byte) (string, bool) {
	var v struct {
		Metadata struct {
			PhoneNumberID flexID `json:"phone_number_id"`
		} `json:"metadata"`
		Messages []struct {
			From    flexID `json:"from"`
			GroupID flexID `json:"group_id"`
		} `json:"messages"`
		Statuses []struct {
			RecipientID flexID `json:"recipient_id"`
		} `json:"statuses"`
	}
	if json.Unmarshal(value, &v) != nil || v.Metadata.PhoneNumberID == "" {
		return "", false
	}
	var b strings.Builder
	b.WriteString("whatsapp:")
	b.WriteString(string(v.Metadata.PhoneNumberID))
	var party flexID
	switch {
	case len(v.Messages) > 0 && v.Messages[0].GroupID != "":
		party = v.Messages[0].GroupID
	case len(v.Messages) > 0:
		party = v.Messages[0].From
	case len(v.Statuses) > 0:
		party = v.Statuses[0].RecipientID
	}
	if party != "" {
		b.WriteByte(':')
		b.WriteString(string(party))
	}
	return b.String(), true
}

func messagingConversation(object, account string, value []byte) (string, bool) {
	var v struct {
		Sender struct {
			ID flexID `json:"id"`
		} `json:"sender"`
		Recipient struct {
			ID flexID `json:"id"`
		} `json:"recipient"`
		Message *struct {
			IsEcho bool `json:"is_echo"`
		} `json:"message"`
	}
	if json.Unmarshal(value, &v) != nil {
		return "", false
	}
	party := v.Sender.ID
	if string(party) == account || (v.Message != nil && v.Message.IsEcho) {
		party = v.Recipient.ID
	}
	if party == "" {
		return "", false
	}
	return object + ":" + account + ":" + string(party), true
}
