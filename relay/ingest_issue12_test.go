package relay_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hubrelay/hubrelay/relay"
)

// TestReceiver_NoRealChangeLost posts, as Meta would, changes that earlier versions
// acknowledged and then dropped (issue 12): each must be stored for delivery once, and a
// repeat of each must be dropped.
func TestReceiver_NoRealChangeLost(t *testing.T) {
	rc, sp := newReceiver(t, allToOrders)
	steps := []struct {
		file   string
		reason string
	}{
		{"ig_message.json", "an Instagram message"},
		{"ig_unsend.json", "its unsend, which carries the deleted message's mid"},
		{"wa_group_read_1.json", "a group message read by one participant"},
		{"wa_group_read_2.json", "the same message read by another participant"},
		{"perm_granted.json", "a permission granted"},
		{"perm_revoked.json", "revoked"},
		{"perm_granted_again.json", "granted again: the same value as the first"},
		{"ig_business_login_comment.json", "a comment as field and value in the entry, entry.time as ISO 8601"},
		{"unknown_entry.json", "entry content the decoder does not know"},
	}
	want := 0
	for _, st := range steps {
		body, err := os.ReadFile(filepath.Join("testdata", "ingest", "issue12", st.file))
		if err != nil {
			t.Fatal(err)
		}
		if rec := postTo(rc, body, relay.Sign(body, ingestSecret)); rec.Code != http.StatusOK {
			t.Fatalf("%s (%s): status %d", st.file, st.reason, rec.Code)
		}
		want++
		if got := pending(t, sp); got != want {
			t.Fatalf("%s (%s): %d deliveries spooled, want %d: the change was dropped", st.file, st.reason, got, want)
		}
		// Meta sends it again: acknowledged, not delivered twice.
		if rec := postTo(rc, body, relay.Sign(body, ingestSecret)); rec.Code != http.StatusOK {
			t.Fatalf("%s again: status %d", st.file, rec.Code)
		}
		if got := pending(t, sp); got != want {
			t.Fatalf("%s again (%s): %d deliveries spooled, want %d: a repeat was not dropped", st.file, st.reason, got, want)
		}
	}
	ds, err := sp.Ready("orders", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var envelopes []string
	for _, d := range ds {
		var ev relay.Event
		if err := relay.UnmarshalBinary(d.Data, &ev); err != nil {
			t.Fatal(err)
		}
		envelopes = append(envelopes, string(relay.AppendEnvelope(nil, &ev)))
	}
	all := strings.Join(envelopes, "\n")
	for _, want := range []string{
		`"verb":"unsend"`,
		`"entry":{"id":"17841405822304914","time":"2026-12-01T12:00:00+0000"},"field":"comments","source":"entry"`,
		`"field":"message_reactions","source":"unknown","value":{"id":"106540352242922"`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no delivered envelope holds %s:\n%s", want, all)
		}
	}
}
