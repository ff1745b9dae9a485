package relay_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/rules"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

func compileRules(t *testing.T, specs ...rules.Spec) *rules.Set {
	t.Helper()
	set, err := rules.Compile(specs)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestRouter_RuleErrorsAndCatchAll(t *testing.T) {
	photo := relay.Event{App: "shop", Object: "page", Field: "feed", Verb: "add", Source: relay.SourceChanges,
		Value: []byte(`{"item":"photo","verb":"add","message":"secret text"}`)}
	status := photo
	status.Value = []byte(`{"item":"status","verb":"add"}`)
	broken := rules.Spec{Name: "broken", When: `value.x.y == 1`, Sinks: []string{"ops"}}
	photos := rules.Spec{Name: "photos", When: `value.item == "photo"`, Sinks: []string{"crm"}}
	tests := []struct {
		name       string
		specs      []rules.Spec
		opts       relay.RouteOptions
		ev         relay.Event
		wantRules  []string
		wantSinks  []string
		wantErrors []relay.RuleError
		catchAll   bool
	}{
		{"match", []rules.Spec{photos}, relay.RouteOptions{}, photo, []string{"photos"}, []string{"crm"}, nil, false},
		{"unmatched, no catch-all", []rules.Spec{photos}, relay.RouteOptions{}, status, nil, nil, nil, false},
		{"unmatched to the catch-all", []rules.Spec{photos}, relay.RouteOptions{Unmatched: []string{"archive"}}, status, nil, []string{"archive"}, nil, true},
		{"rule error dead-lettered", []rules.Spec{broken}, relay.RouteOptions{}, photo, nil, []string{relay.RuleErrorSink},
			[]relay.RuleError{{Rule: "broken", Class: "missing member at column 9"}}, false},
		{"rule error beside a match", []rules.Spec{photos, broken}, relay.RouteOptions{Unmatched: []string{"archive"}}, photo, []string{"photos"},
			[]string{"crm", relay.RuleErrorSink}, []relay.RuleError{{Rule: "broken", Class: "missing member at column 9"}}, false},
		{"rule error is not unmatched", []rules.Spec{broken}, relay.RouteOptions{Unmatched: []string{"archive"}}, photo, nil,
			[]string{relay.RuleErrorSink}, []relay.RuleError{{Rule: "broken", Class: "missing member at column 9"}}, false},
		{"rule errors ignored", []rules.Spec{broken}, relay.RouteOptions{IgnoreRuleErrors: true, Unmatched: []string{"archive"}}, photo, nil,
			[]string{"archive"}, []relay.RuleError{{Rule: "broken", Class: "missing member at column 9"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := relay.NewRouter(nil, nil)
			r.Configure(compileRules(t, tt.specs...), nil, tt.opts)
			ev := tt.ev
			rt := r.Route(&ev, nil)
			if !slices.Equal(rt.Rules, tt.wantRules) || !slices.Equal(rt.Sinks, tt.wantSinks) || !slices.Equal(rt.Errors, tt.wantErrors) || rt.CatchAll != tt.catchAll {
				t.Errorf("route = %+v, want rules %v sinks %v errors %v catch-all %v", rt, tt.wantRules, tt.wantSinks, tt.wantErrors, tt.catchAll)
			}
		})
	}
}

// TestReceiver_RuleErrorIsRecoverable posts a change a rule fails to evaluate for: it is
// acknowledged, kept as a dead letter naming the rule and the error class (never the
// payload), and a replay once the rule is fixed delivers it to the rule's sink, and not
// again to the sinks that had it.
func TestReceiver_RuleErrorIsRecoverable(t *testing.T) {
	crm, ops := newEndpoint(t), newEndpoint(t)
	h := newHarness(t, t.TempDir())
	h.engine.SetSinks([]relay.SinkConfig{
		h.httpSink("crm", crm.srv.URL, 0, fastRetry(3)),
		h.httpSink("ops", ops.srv.URL, 0, fastRetry(3)),
		relay.RuleErrorSinkConfig(),
	})
	photos := rules.Spec{Name: "photos", When: `value.item == "photo"`, Sinks: []string{"crm"}}
	broken := rules.Spec{Name: "comments", When: `value.comment.from.id != ""`, Sinks: []string{"ops"}}
	router := relay.NewRouter(compileRules(t, photos, broken), nil)
	rc := relay.NewReceiver(relay.ReceiverConfig{
		Apps:   []relay.App{{Name: "shop", Path: "/webhooks", Verifier: relay.NewVerifier([]string{ingestSecret}, false)}},
		Limits: relay.Limits{MaxChanges: 100, MaxDepth: 64},
	}, embedded.New(h.spool), router, h.engine.Notify, nil, discard())

	body, err := os.ReadFile(filepath.Join("testdata", "ingest", "page_feed_add_photo.json"))
	if err != nil {
		t.Fatal(err)
	}
	if rec := postTo(rc, body, relay.Sign(body, ingestSecret)); rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	eventually(t, "crm delivery", func() bool { return len(crm.received()) == 1 })
	var letters []*deadletter.Letter
	eventually(t, "rule-error dead letter", func() bool {
		letters, _ = h.dl.List(deadletter.Filter{})
		return len(letters) == 1
	})
	l := letters[0]
	if l.Sink != relay.RuleErrorSink || !slices.Equal(l.Rules, []string{"photos"}) {
		t.Errorf("letter sink %q rules %v", l.Sink, l.Rules)
	}
	if want := `permanent: rule "comments" failed to evaluate: missing member at column 15`; l.Reason != want {
		t.Errorf("reason %q, want %q", l.Reason, want)
	}
	if strings.Contains(l.Reason, "photo") && !strings.Contains(l.Reason, `"comments"`) {
		t.Errorf("reason %q quotes the payload", l.Reason)
	}

	// Fix the rule; replay: the change reaches ops, and crm does not get it twice.
	router.Swap(compileRules(t, photos, rules.Spec{Name: "comments", When: `value.comment?.from?.id != "" || value.item == "photo"`, Sinks: []string{"ops"}}), nil)
	if err := h.dl.QueueReplay(l.ID); err != nil {
		t.Fatal(err)
	}
	rp := &relay.Replayer{DL: h.dl, Spool: embedded.New(h.spool), Router: router, Notify: h.engine.Notify, Log: discard()}
	if n, err := rp.Once(context.Background()); n != 1 || err != nil {
		t.Fatalf("replayed %d, %v", n, err)
	}
	eventually(t, "ops delivery", func() bool { return len(ops.received()) == 1 })
	if got := ops.received()[0]; got != crm.received()[0] {
		t.Errorf("ops got %q, crm %q: not the same change", got, crm.received()[0])
	}
	eventually(t, "spool drained", func() bool { return pending(t, h.spool) == 0 })
	if n := len(crm.received()); n != 1 {
		t.Errorf("crm got the change %d times, want 1", n)
	}
	if left, _ := h.dl.List(deadletter.Filter{}); len(left) != 0 {
		t.Errorf("%d dead letters left", len(left))
	}

	// A replay without rules loaded is refused, and the letter stays.
	if _, err := relay.ReplayItem(l, nil); err == nil {
		t.Error("a rule-error letter replayed without rules")
	}
}
