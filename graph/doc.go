// Package graph is the small part of Meta's Graph API that hubrelay needs to go live: it
// subscribes an app to webhooks (POST, GET and DELETE /{app-id}/subscriptions) and subscribes
// an app to a WhatsApp Business Account (POST, GET and DELETE /{waba-id}/subscribed_apps).
//
// Every call goes to BaseURL/Version/..., the version pinned by the caller, so that a new
// Graph release never changes what a subscription means. The access token travels in the
// Authorization header, never in a URL; a Token prints as "REDACTED" through fmt and slog, and
// every message Meta sends back is scrubbed of the token, its app secret and any other secret
// the call carried (the verify token) before it reaches an error or a log.
//
// A call is retried, with exponential backoff and jitter between Options.MinBackoff and
// MaxBackoff, when the connection fails, when Graph answers 5xx, and when its error says the
// call was throttled (codes 4, 17, 32, 613 and the business use case limits 80000–80014) or is
// marked is_transient; a Retry-After header is honoured. A throttled call is not retried when
// Meta's X-Business-Use-Case-Usage header says access returns later than MaxBackoff: the
// *Error then carries that wait (RegainAccess). Every other error is final. Graph's
// errors become *Error, which keeps Meta's message, type, code, error_subcode and fbtrace_id.
//
// Subscribing an app and a WhatsApp Business Account are idempotent on Meta's side (the same
// subscription again updates it), so retrying them is safe.
package graph
