// Package httpsink delivers changes to an HTTP endpoint: one change per request with
// Deliver, or several in one request with DeliverBatch (the delivery engine batches when the
// sink's batch.max_changes is above one).
//
// By default the body of a Deliver request is the change's JSON envelope
// (relay.AppendEnvelope):
//
//	{"id":…,"app":…,"object":…,"entry":{"id":…,"uid":…,"time":…},"field":…,"verb":…,"value":…,"received_at":…}
//
// where value is the change exactly as Meta sent it. With Options.Raw the body is instead the
// whole notification as received, with Meta's X-Hub-Signature-256, so the receiver can verify
// Meta's signature itself.
//
// Every request carries Content-Type: application/json and User-Agent: hubrelay. A Deliver
// request carries the change id as Idempotency-Key and X-Hubrelay-Change-Id: delivery is at
// least once, so the receiver should drop a change whose id it has already taken. With
// Options.SignSecret the request is also signed: X-Hubrelay-Signature-256: sha256=<hex
// HMAC-SHA256 of the exact body>.
//
// # Batches
//
// A DeliverBatch request's body is a JSON array of the envelopes, in delivery order, each
// byte for byte what Deliver would send:
//
//	[{"id":"a",…},{"id":"b",…}]
//
// A batch of one change is still an array of one element, so a receiver of a batching sink
// always gets arrays. The request carries X-Hubrelay-Batch-Size: <number of elements> and
// Idempotency-Key: "batch:" + the lowercase hex SHA-256 of the change ids joined by "\n"
// (BatchKey), which is the same when the same batch is sent again; it carries no
// X-Hubrelay-Change-Id (the ids of a large batch would make a huge header). The engine may
// regroup changes differently on a later attempt, so receivers should drop repeats per
// element id, not only per key. The signature covers the whole array body. The endpoint must
// take the batch as a unit: a 2xx means every element was taken; any other answer means none
// may be assumed taken, and the batch is retried (a permanent answer makes the engine retry
// each change alone, in one-element batches, so one bad change never dead-letters the rest).
//
// Raw sinks do not batch: Meta's signature covers one notification, so an array of them
// could not be verified. DeliverBatch on a raw sink sends the changes one by one with
// Deliver, in order, and returns the first error.
//
// # Answers and retries
//
// A 2xx answer means delivered. Within one call the request is retried quickly on connection
// errors, timeouts, 408, 429 and 5xx (not 501), honouring Retry-After on 429 and 503 up to
// Options.MaxBackoff; a batch is replayed byte for byte. Any other 4xx is permanent: the
// call returns a *relay.StatusError wrapping relay.ErrPermanent. Every other failure is a
// non-permanent *relay.StatusError and the engine reschedules it. Redirects are not followed.
// Errors and logs never show header values, the signing secret, URL userinfo or query values.
package httpsink
