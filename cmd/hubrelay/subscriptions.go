package main

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/hubrelay/hubrelay/graph"
	"github.com/hubrelay/hubrelay/rules"
)

// runSubscriptions lists the app's webhook subscriptions at Meta (and, with -waba, the apps
// subscribed to a WhatsApp Business Account) and where they differ from the config.
func runSubscriptions(ctx context.Context, args []string, e env) error {
	fs := newFlags("subscriptions", e)
	gf := addGraphFlags(fs)
	waba := fs.String("waba", "", "also list the apps subscribed to this WhatsApp Business Account `ID`")
	strict := fs.Bool("check", false, "exit 1 when Meta's subscriptions differ from the config (for monitoring: Meta unsubscribes apps whose callback keeps failing)")
	if _, err := parseArgs(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(e.stderr, "usage: hubrelay subscriptions -config FILE [-app NAME] [-waba ID] [-check]")
		return errUsage
	}
	g, err := gf.open(e)
	if err != nil {
		return err
	}
	if err := g.needAppID(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *gf.timeout)
	defer cancel()
	var subs []graph.Subscription
	err = g.withAppToken(func(tok graph.Token) error {
		var err error
		subs, err = g.client.Subscriptions(ctx, tok, g.app.AppID)
		return err
	})
	if err != nil {
		return g.metaRefused("list the app's subscriptions", err)
	}
	w := e.stdout
	wabaMissing := false
	fmt.Fprintf(w, "app %s (%s), Graph API %s: %d subscription(s)\n", g.app.Name, g.app.AppID, g.client.Version(), len(subs))
	for _, s := range subs {
		state := "active"
		if !s.Active {
			state = "inactive"
		}
		fields := make([]string, len(s.Fields))
		for i, f := range s.Fields {
			fields[i] = f.Name + " " + f.Version
		}
		fmt.Fprintf(w, "  %s  %s  %s\n    fields: %s\n", s.Object, state, s.CallbackURL, strings.Join(fields, ", "))
	}
	if *waba != "" {
		apps, err := g.client.SubscribedApps(ctx, g.wabaToken(), *waba)
		if err != nil {
			return g.metaRefused("list the apps of WhatsApp Business Account "+*waba, err)
		}
		fmt.Fprintf(w, "WhatsApp Business Account %s: %d subscribed app(s)\n", *waba, len(apps))
		found := false
		wabaMissing = true
		for _, a := range apps {
			line := fmt.Sprintf("  %s (%s)", a.Name, a.ID)
			if a.OverrideCallbackURI != "" {
				line += "  override callback " + a.OverrideCallbackURI
			}
			if a.ID == g.app.AppID {
				found, wabaMissing = true, false
				line += "  <- this app"
			}
			fmt.Fprintln(w, line)
		}
		if !found {
			fmt.Fprintf(w, "  app %s is not subscribed to it: its webhooks do not reach this app (hubrelay subscribe -object %s -waba %s ...)\n", g.app.Name, objectWABA, *waba)
		}
	}
	diffs := drift(subs, g.app.Path, g.app.Name, g.client.Version(), g.cfg.Rules.Selectors())
	if len(diffs) == 0 {
		fmt.Fprintln(w, "no differences from the config")
		if *strict && wabaMissing {
			return errReported
		}
		return nil
	}
	fmt.Fprintf(w, "differences from %s:\n", g.cfg.File)
	for _, d := range diffs {
		fmt.Fprintf(w, "  %s\n", d)
	}
	if len(g.cfg.Apps) > 1 {
		fmt.Fprintln(w, "  (rules apply to every app of the config unless their when says otherwise; `when` is not evaluated here)")
	}
	if *strict {
		return errReported
	}
	return nil
}

// runUnsubscribe removes the app's subscription to an object (or some of its fields), or,
// with -waba, the app's subscription to a WhatsApp Business Account.
func runUnsubscribe(ctx context.Context, args []string, e env) error {
	fs := newFlags("unsubscribe", e)
	gf := addGraphFlags(fs)
	object := fs.String("object", "", "webhook `object` to unsubscribe from")
	fieldList := fs.String("fields", "", "comma-separated `fields` to remove (default: the whole object)")
	waba := fs.String("waba", "", "remove the app from this WhatsApp Business Account `ID` instead (its other accounts keep their webhooks)")
	if _, err := parseArgs(fs, args, e); err != nil {
		return err
	}
	fields := splitList(*fieldList)
	switch {
	case fs.NArg() != 0 || (*object == "" && *waba == ""):
		fmt.Fprintln(e.stderr, "usage: hubrelay unsubscribe -config FILE [-app NAME] -object OBJECT [-fields F1,F2] | -waba ID")
		return errUsage
	case *waba != "" && ((*object != "" && *object != objectWABA) || len(fields) > 0):
		fmt.Fprintln(e.stderr, "hubrelay unsubscribe: -waba removes the app from one WhatsApp Business Account; it takes no -fields and no other -object")
		return errUsage
	}
	g, err := gf.open(e)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *gf.timeout)
	defer cancel()
	if *waba != "" {
		if err := g.client.UnsubscribeWABA(ctx, g.wabaToken(), *waba); err != nil {
			return g.metaRefused("remove the app from WhatsApp Business Account "+*waba, err)
		}
		fmt.Fprintf(e.stdout, "removed app %s from WhatsApp Business Account %s\n", g.app.Name, *waba)
		return nil
	}
	if err := g.needAppID(); err != nil {
		return err
	}
	err = g.withAppToken(func(tok graph.Token) error { return g.client.Unsubscribe(ctx, tok, g.app.AppID, *object, fields) })
	if err != nil {
		return g.metaRefused("unsubscribe the app", err)
	}
	if len(fields) == 0 {
		fmt.Fprintf(e.stdout, "unsubscribed app %s (%s) from %s (every field): Meta sends no more %s webhooks to it\n", g.app.Name, g.app.AppID, *object, *object)
	} else {
		fmt.Fprintf(e.stdout, "unsubscribed app %s (%s) from %s fields %s\n", g.app.Name, g.app.AppID, *object, strings.Join(fields, ", "))
	}
	return nil
}

// messagingKinds maps the Messenger and Instagram subscription fields whose events arrive in
// entry[].messaging[] (which the decoder gives the field "messaging") to the event kinds
// (verbs) the decoder gives them.
var messagingKinds = map[string][]string{
	"messages":                     {"message"},
	"message_echoes":               {"echo"},
	"message_deliveries":           {"delivery"},
	"message_reads":                {"read"},
	"messaging_seen":               {"read"},
	"message_reactions":            {"reaction"},
	"message_edits":                {"message_edit"},
	"messaging_postbacks":          {"postback"},
	"messaging_optins":             {"optin"},
	"messaging_referrals":          {"referral"},
	"messaging_referral":           {"referral"},
	"messaging_handovers":          {"pass_thread_control", "take_thread_control", "request_thread_control", "app_roles"},
	"messaging_handover":           {"pass_thread_control", "take_thread_control", "request_thread_control", "app_roles"},
	"messaging_policy_enforcement": {"policy_enforcement"},
	"messaging_account_linking":    {"account_linking"},
	"messaging_game_plays":         {"game_play"},
	"messaging_feedback":           {"messaging_feedback"},
}

// decodedAs returns the field and event kinds that the changes of a subscribed field carry
// once decoded: the field itself (any verb) for most; "messaging" with the field's kinds for
// Messenger and Instagram messaging fields; "standby" for standby.
func decodedAs(object, field string) (string, []string) {
	if object != "page" && object != "instagram" {
		return field, nil
	}
	if field == "standby" {
		return "standby", nil
	}
	kinds, ok := messagingKinds[field]
	if !ok {
		return field, nil
	}
	if object == "instagram" && field == "messages" {
		return "messaging", []string{"message", "echo"} // Instagram sends echoes with messages
	}
	return "messaging", kinds
}

// selects reports whether a rule's selector can match changes of a subscribed field.
func selects(s rules.Selector, object, field string) bool {
	df, kinds := decodedAs(object, field)
	if len(s.Objects) > 0 && !slices.Contains(s.Objects, object) {
		return false
	}
	if len(s.Fields) > 0 && !slices.Contains(s.Fields, df) {
		return false
	}
	if len(s.Verbs) > 0 && kinds != nil && !slices.ContainsFunc(kinds, func(k string) bool { return slices.Contains(s.Verbs, k) }) {
		return false
	}
	return true
}

// routed reports whether some rule can route changes of a subscribed field (before its
// `when`, which needs a change to evaluate).
func routed(sels []rules.Selector, object, field string) bool {
	return slices.ContainsFunc(sels, func(s rules.Selector) bool { return selects(s, object, field) })
}

// drift lists where Meta's subscriptions and the config differ: inactive subscriptions,
// callbacks on a path the app does not serve, field versions other than the pinned one,
// subscribed fields no rule routes, and rules naming objects or fields not subscribed.
func drift(subs []graph.Subscription, appPath, appName, version string, sels []rules.Selector) []string {
	var out []string
	byObject := map[string]graph.Subscription{}
	for _, s := range subs {
		byObject[s.Object] = s
		if !s.Active {
			out = append(out, fmt.Sprintf("%s: the subscription is not active: Meta sends no webhooks for it", s.Object))
		}
		if u, err := url.Parse(s.CallbackURL); err != nil || cmpPath(u.Path) != appPath {
			path := s.CallbackURL
			if err == nil {
				path = cmpPath(u.Path)
			}
			out = append(out, fmt.Sprintf("%s: callback path %s is not served by app %s, which answers on %s", s.Object, path, appName, appPath))
		}
		for _, f := range s.Fields {
			if f.Version != "" && f.Version != version {
				out = append(out, fmt.Sprintf("%s: field %s sends %s payloads; graph.version is %s", s.Object, f.Name, f.Version, version))
			}
			if !routed(sels, s.Object, f.Name) {
				out = append(out, fmt.Sprintf("%s: field %s is subscribed but no rule routes it (its changes are logged as unmatched)", s.Object, f.Name))
			}
		}
	}
	for _, sel := range sels {
		if len(sel.Objects) == 0 && len(sel.Fields) == 0 {
			continue
		}
		objects := sel.Objects
		if len(objects) == 0 {
			for _, s := range subs {
				objects = append(objects, s.Object)
			}
		}
		for _, o := range sel.Objects {
			if _, ok := byObject[o]; !ok {
				out = append(out, fmt.Sprintf("rule %s routes object %s, which app %s is not subscribed to", sel.Name, o, appName))
			}
		}
		for _, f := range sel.Fields {
			covered := false
			for _, o := range objects {
				s, ok := byObject[o]
				if !ok {
					continue
				}
				one := rules.Selector{Objects: []string{o}, Fields: []string{f}, Verbs: sel.Verbs}
				if slices.ContainsFunc(s.Fields, func(sf graph.Field) bool { return selects(one, o, sf.Name) }) {
					covered = true
					break
				}
			}
			if !covered && (len(sel.Objects) == 0 || anySubscribed(sel.Objects, byObject)) {
				out = append(out, fmt.Sprintf("rule %s routes field %s of %s, which app %s is not subscribed to", sel.Name, f, strings.Join(sel.Objects, "/"), appName))
			}
		}
	}
	return out
}

// anySubscribed reports whether one of objects has a subscription (otherwise the rule was
// reported for its object already).
func anySubscribed(objects []string, byObject map[string]graph.Subscription) bool {
	return slices.ContainsFunc(objects, func(o string) bool { _, ok := byObject[o]; return ok })
}

func cmpPath(p string) string {
	if p == "" {
		return "/"
	}
	return p
}
