// Package console is hubrelay's browser console: a few server-rendered pages and the JSON API
// they use, served on the admin listener under /console/ (never on the webhook listener).
//
// A Feed is the console's only hook into the relay. The receiver calls it once per request
// and once per change (it implements relay.Observer), the delivery engine once per attempt
// (relay.DeliveryObserver and relay.DeliveryTracer). It keeps bounded in-memory history — the
// most recent changes, delivery attempts and ten minutes of per-app and per-sink counters in
// fixed-size rings — so its memory does not grow with traffic and a record costs a mutex and
// a few stores, without allocating. What it forgets (older changes, or everything at a
// restart) the spool and the dead-letter directory still hold: the story of a change says
// which of those it was read from.
//
// Handler serves the pages and the API. With a token set, every request needs it, as a bearer
// token (scripts, the CLI) or as the password of basic auth (a person in a browser). Requests
// that change state (replay, route, pause) also need a CSRF defence unless they carry a
// bearer token, which browsers never add on their own: the Origin (or Sec-Fetch-Site) must be
// the console's own, and the X-Console-CSRF header must hold the token the page was served
// with, which is bound to a per-browser session cookie. Without a token (allowed only on a
// loopback admin listener) the Host header must also name a loopback address, so that a web
// page cannot reach the console through DNS rebinding. No secret of the config — app
// secrets, verify tokens, sink headers, Slack URLs, the admin token — is ever sent to the
// page: the console never reads them, and every error text it passes on is scrubbed of them.
//
// The JSON API is documented in API.md next to this file.
package console
