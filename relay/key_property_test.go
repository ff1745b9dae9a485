package relay

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// variant is one generated change: a function writing its notification for an entry.time,
// so the same change can be sent again in another batch at another time.
type variant struct {
	name string
	body func(entryTime int64) string
}

// genVariants builds realistic changes of the kinds Meta sends, each from a handful of fields
// (ids, timestamps, statuses…). mutate lists, for each, the variants that differ from it in
// one field that makes them different events in Meta's model.
func genVariants(r *rand.Rand) (base variant, mutants []variant) {
	id := func(prefix string) string { return fmt.Sprintf("%s%d", prefix, r.Uint64()) }
	switch r.IntN(6) {
	case 0: // a Messenger/Instagram message and what can happen to it
		object := []string{"page", "instagram"}[r.IntN(2)]
		mid, page, user := id("m_"), id(""), id("")
		ts := 1764590400000 + r.Int64N(1e9)
		event := func(ts int64, kind string) string {
			return fmt.Sprintf(`{"sender":{"id":%q},"recipient":{"id":%q},"timestamp":%d,%s}`, user, page, ts, kind)
		}
		msg := func(ts int64, kind string) variant {
			return variant{object + " " + kind, func(et int64) string {
				return fmt.Sprintf(`{"object":%q,"entry":[{"id":%q,"time":%d,"messaging":[%s]}]}`, object, page, et, event(ts, kind))
			}}
		}
		base = msg(ts, fmt.Sprintf(`"message":{"mid":%q,"text":"hello"}`, mid))
		mutants = []variant{
			msg(ts+1000, fmt.Sprintf(`"message":{"mid":%q,"is_deleted":true}`, mid)),
			msg(ts, fmt.Sprintf(`"message":{"mid":%q,"text":"hello","is_echo":true}`, mid)),
			msg(ts+500, fmt.Sprintf(`"message":{"mid":%q,"text":"yes","reply_to":{"mid":%q}}`, id("m_"), mid)),
			msg(ts+2000, fmt.Sprintf(`"message_edit":{"mid":%q,"text":"hello!","num_edit":1}`, mid)),
			msg(ts+3000, fmt.Sprintf(`"message_edit":{"mid":%q,"text":"hello!","num_edit":2}`, mid)),
			msg(ts+4000, fmt.Sprintf(`"reaction":{"mid":%q,"action":"react","reaction":"love"}`, mid)),
			msg(ts+4000, fmt.Sprintf(`"reaction":{"mid":%q,"action":"unreact"}`, mid)),
			msg(ts+5000, fmt.Sprintf(`"read":{"mid":%q}`, mid)),
			msg(ts+6000, fmt.Sprintf(`"read":{"mid":%q}`, mid)),
			msg(ts+7000, fmt.Sprintf(`"delivery":{"mids":[%q],"watermark":%d}`, mid, ts)),
		}
	case 1: // a WhatsApp group message's statuses
		wamid, group := id("wamid.HBgL"), id("120363")+"@g.us"
		st := func(status, participant string) variant {
			return variant{"wa status " + status + " " + participant, func(int64) string {
				return fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":`+
					`{"messaging_product":"whatsapp","metadata":{"phone_number_id":"106540352242922"},"statuses":[{"id":%q,"status":%q,`+
					`"timestamp":"1764590400","recipient_id":%q,"recipient_participant_id":%q,"recipient_type":"group"}]}}]}]}`, wamid, status, group, participant)
			}}
		}
		p1, p2 := id("1650"), id("1651")
		base = st("read", p1)
		mutants = []variant{st("read", p2), st("delivered", p1), st("sent", p2)}
	case 2: // a permission granted, revoked and granted again
		user := id("1021")
		perm := []string{"pages_messaging", "email", "instagram_basic"}[r.IntN(3)]
		p := func(verb string, at int64) variant {
			return variant{"permission " + verb, func(et int64) string {
				return fmt.Sprintf(`{"object":"permissions","entry":[{"id":%q,"uid":%q,"time":%d,"changes":[{"field":%q,"value":{"verb":%q}}]}]}`,
					user, user, et+at, perm, verb)
			}}
		}
		base = p("granted", 0)
		mutants = []variant{p("revoked", 3600), p("granted", 7200)}
	case 3: // a page feed comment added, hidden, unhidden, hidden again
		post := id("517161164821567_")
		comment := post + "_" + id("")
		c := func(verb string, at int64) variant {
			return variant{"feed comment " + verb, func(et int64) string {
				return fmt.Sprintf(`{"object":"page","entry":[{"id":"517161164821567","time":%d,"changes":[{"field":"feed","value":`+
					`{"item":"comment","verb":%q,"post_id":%q,"comment_id":%q,"created_time":1764590400}}]}]}`, et+at, verb, post, comment)
			}}
		}
		base = c("add", 0)
		mutants = []variant{c("hide", 60), c("unhide", 120), c("hide", 180)}
	case 4: // Instagram comments, in changes[] and in the Business Login form
		comment := id("1786")
		form := func(businessLogin bool, commentID string) variant {
			return variant{"ig comment", func(et int64) string {
				value := fmt.Sprintf(`{"id":%q,"text":"nice","from":{"id":"232323232"},"media":{"id":"123123123"}}`, commentID)
				if businessLogin {
					return fmt.Sprintf(`{"object":"instagram","entry":[{"id":"17841405822304914","time":%d,"field":"comments","value":%s}]}`, et, value)
				}
				return fmt.Sprintf(`{"object":"instagram","entry":[{"id":"17841405822304914","time":%d,"changes":[{"field":"comments","value":%s}]}]}`, et, value)
			}}
		}
		base = form(r.IntN(2) == 0, comment)
		mutants = []variant{form(false, id("1787")), form(true, id("1788"))}
	default: // a WhatsApp template approved, rejected, approved again
		tmpl := id("")
		tv := func(event string, at int64) variant {
			return variant{"template " + event, func(et int64) string {
				return fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","time":%d,"changes":[{"field":"message_template_status_update",`+
					`"value":{"event":%q,"message_template_id":%s,"message_template_name":"order_update","message_template_language":"en_US","reason":"NONE"}}]}]}`,
					et+at, event, tmpl)
			}}
		}
		base = tv("APPROVED", 0)
		mutants = []variant{tv("REJECTED", 60), tv("APPROVED", 120)}
	}
	return base, mutants
}

// keyOf decodes a one-change notification and returns the change's key.
func keyOf(t *testing.T, body string) (string, *Event) {
	t.Helper()
	events, err := Decode([]byte(body), "shop", testReceivedAt, Limits{})
	if err != nil || len(events) != 1 {
		t.Fatalf("decode %s: %d events, %v", body, len(events), err)
	}
	return Key(&events[0]), &events[0]
}

// TestKey_Property checks, over generated realistic changes, that a change Meta sends again
// (re-batched, with a new entry.time when the key does not cover it) keeps its key, and that
// every change differing from it in Meta's model gets another key.
func TestKey_Property(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 2026))
	for i := range 500 {
		base, mutants := genVariants(r)
		t0 := 1764590400 + r.Int64N(1e6)
		want, ev := keyOf(t, base.body(t0))
		// A repeat: re-batched, and re-timed unless entry.time is what identifies it.
		again := *ev
		again.Entry.Time = t0 + 1 + r.Int64N(3600)
		if keyCoversTime(ev) {
			again.Entry.Time = ev.Entry.Time
		}
		if got := Key(&again); got != want {
			t.Fatalf("case %d %s: a repeat got key %q, first %q", i, base.name, got, want)
		}
		if got := Key(ptr(rebatch(t, ev, keyCoversTime(ev)))); got != want {
			t.Fatalf("case %d %s: re-batched key %q, first %q", i, base.name, got, want)
		}
		seen := map[string]string{want: base.name}
		for _, m := range mutants {
			k, _ := keyOf(t, m.body(t0))
			if prev, dup := seen[k]; dup {
				t.Fatalf("case %d: %s and %s are different events but share key %q\n%s", i, prev, m.name, k, m.body(t0))
			}
			seen[k] = m.name
			if strings.TrimSpace(k) == "" {
				t.Fatalf("empty key")
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }
