// Package sinks holds hubrelay's delivery destinations, one package each, all implementing
// relay.Sink (Name, Deliver):
//
//	httpsink  POST each change to an HTTP endpoint: its JSON envelope, or the raw signed
//	          notification; optional HMAC signature of the body; Idempotency-Key = change id
//	slack     post a message rendered from each change to a Slack incoming webhook
//	file      append each change's envelope to a JSON Lines file, fsynced with group commit,
//	          with size-based rotation
//
// httpsink and file also implement relay.BatchSink (DeliverBatch), which the engine uses when
// a sink's batch.max_changes is above one. A batch is delivered as a unit, in order: httpsink
// POSTs a JSON array of the envelopes with X-Hubrelay-Batch-Size and Idempotency-Key
// "batch:<hex SHA-256 of the ids joined by \n>" (receivers dedup per element id); file
// appends the lines in one write and one fsync and never rotates in the middle of a batch
// that fits in a file. Raw HTTP sinks send a batch change by change. Slack does not batch:
// one message per change.
//
// The HTTP sinks share sinks/internal/webhook: quick retries inside one Deliver call through
// go-retryablehttp (connection errors, 408, 429, 5xx; Retry-After honoured), 4xx as permanent
// errors wrapping relay.ErrPermanent, and secrets (URL credentials, header values, signing
// secrets, Slack webhook paths) scrubbed from logs and errors. Every failure a longer wait may
// cure is returned as non-permanent, for the delivery engine to reschedule.
//
// Sinks depend on relay only; the command turns the config of each sink into the sink
// package's Options.
package sinks
