// Package rules compiles routing rules and evaluates them against one change.
//
// A rule names the objects, fields and verbs it applies to (an empty list means any) and an
// optional `when` expression written in the expr language (github.com/expr-lang/expr). Every
// expression is compiled once, at config load, against the typed environment Env, so a typo such
// as `valeu.item` or a `when` that is not boolean is reported before the relay starts. At run
// time Set.Match first filters rules by exact object, field and verb strings (rules are indexed
// by object) and only then runs the compiled `when` programs, on virtual machines reused from a
// pool, so matching a change allocates nothing unless more than one rule matches.
//
// Expressions see one change:
//
//	object       string   the envelope's object, e.g. "page" or "whatsapp_business_account"
//	field        string   the change's field, e.g. "feed" or "messages"
//	verb         string   the change's verb ("" when it has none)
//	value        any      the change value decoded from JSON (maps, lists, float64, string, bool, nil)
//	entry.id     string   the entry id (page, WhatsApp business account, user ...)
//	entry.uid    string   the entry uid, when Meta sends one
//	entry.time   int      the entry time, seconds since the Unix epoch
//	app          string   the name of the configured app that received the notification
//	received_at  time     when the relay accepted the notification
//
// For example:
//
//	value.messages != nil
//	value.item == "photo" && verb in ["add", "edited"]
//	any(value.statuses, .status == "failed")
//	"New " + field + " on page " + entry.id
//
// A caller that decodes change values for Match need not decode all of them: Set.Projection
// names the top-level keys the expressions read, and which of them are only compared with nil,
// so that routing on `value.messages != nil` builds neither the messages nor the rest.
//
// Templates (CompileText, CompileAny) use the same environment for non-boolean results such as
// the text of a Slack message.
package rules
