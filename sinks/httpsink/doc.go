// Package httpsink delivers changes to an HTTP endpoint, one change per request.
//
// By default the body is the change's JSON envelope (relay.AppendEnvelope):
//
//	{"id":…,"app":…,"object":…,"entry":{"id":…,"uid":…,"time":…},"field":…,"verb":…,"value":…,"received_at":…}
//
// where value is the change exactly as Meta sent it. With Options.Raw the body is instead the
// whole notification as received, with Meta's X-Hub-Signature-256, so the receiver can verify
// Meta's signature itself.
//
// Every request carries Content-Type: application/json, User-Agent: hubrelay, and the change
// id as Idempotency-Key and X-Hubrelay-Change-Id: delivery is at least once, so the receiver
// should drop a change whose id it has already taken. With Options.SignSecret the request is
// also signed: X-Hubrelay-Signature-256: sha256=<hex HMAC-SHA256 of the exact body>.
//
// A 2xx answer means delivered. Within one Deliver call the request is retried quickly on
// connection errors, timeouts, 408, 429 and 5xx (not 501), honouring Retry-After on 429 and
// 503 up to Options.MaxBackoff. Any other 4xx is permanent: Deliver returns a
// *relay.StatusError wrapping relay.ErrPermanent and the change is dead-lettered. Every other
// failure is a non-permanent *relay.StatusError and the engine reschedules it. Redirects are
// not followed. Errors and logs never show header values, the signing secret, URL userinfo or
// query values.
package httpsink
