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
// sinktest is the conformance suite every sink runs (as relay/storetest is for storage).
//
// Sinks depend on relay only; the command turns the config of each sink into the sink
// package's Options.
//
// # Adding a sink
//
// The contract is relay.Sink (relay/sink.go): Deliver is at least once, honours ctx, returns
// an error wrapping relay.ErrPermanent when retrying cannot help, and a *relay.StatusError
// when it speaks HTTP. A new sink of type T touches, in order:
//
//  1. config/types.go: the constant SinkT, and any new fields of config.Sink.
//  2. config/sinks.go: sinkKeys (each new key with the types it applies to), sinkTypes, and
//     the case for T in the decoder's type switch (required keys, file:line:col errors).
//  3. config/defaults.go: the case for T in DefaultSink.
//  4. sinks/T: the package itself (doc.go, Options, New, compile-time assertions such as
//     var _ relay.Sink = (*Sink)(nil)); relay.BatchSink if it can take a batch as a unit,
//     relay.SinkCloser (Close(ctx) error) if it holds resources (the command closes replaced
//     sinks on reload and every sink at shutdown, within a timeout).
//  5. cmd/hubrelay/sinks.go: the case for T in buildSink, which maps config.Sink to Options;
//     the quick-retry bounds come from relay.RetryPolicy.Quick (relay/retry.go).
//  6. Tests: TestConformance running sinks/sinktest (context cancellation, ErrPermanent,
//     StatusError for HTTP, batch as a unit, Close) against a real destination:
//     sinktest.NewEndpoint for an HTTP sink, temp files otherwise; then the sink's own
//     tests, and this file's list above.
package sinks
