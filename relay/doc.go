// Package relay is the core of hubrelay: it receives Meta webhook notifications and turns each
// into durable, individually delivered changes.
//
// The flow of one POST, one file per stage:
//
//	front/        the front door, before the Receiver: TLS and certificate reload, connection
//	              limits, client address, bodies read under a budget, concurrency limits,
//	              mutual-TLS identity or trusted-proxy subject
//	ingest.go     HTTP: GET subscribe challenge; POST, size-capped, app chosen by path
//	verify.go     X-Hub-Signature-256 over the exact bytes received, every secret of the app
//	decode.go     notification envelope -> []Event (changes, changed_fields, messaging, standby);
//	              entrytime.go reads entry.time, intern.go the names that cost no allocation
//	stale.go      the stale cutoff: every entry.time older than max_event_age
//	key.go        the dedup key of each change, independent of entry.time
//	route.go      rules -> sink names for each change (values decoded for `when` by jsonscan)
//	codec.go      the spool encoding of an Event
//	store.go      the storage contract (Store: Spooler for the receiver, Queue for delivery),
//	              in relay's own types; storetest/ is the suite every engine passes
//	spool/        the embedded engine (storage/embedded adapts it): changes, deliveries and
//	              dedup keys committed in one fsync'd transaction (group commit); only then
//	              does Meta get its 200
//	deliver.go    the delivery engine (Engine): one runner per sink, the promoter of retries
//	runner.go     a sink's runner: workers, the committer of Done and reschedules, in-flight set
//	dispatch.go   a runner's dispatch loop: its queue in Seq order, batches, rewinds, sweeps
//	attempt.go    one attempt and its outcome: delivered, rescheduled or dead-lettered
//	retry.go      the retry policy: backoffs (the engine's and the sinks' quick retries) and
//	              Decide, the pure give-up-or-retry-at-T decision
//	pause.go      an operator's pause of a sink (SinkControls in storage), in the engine
//	deadletter/   a readable file per abandoned delivery; replay.go puts letters back
//	envelope.go   the JSON envelope sinks send and dead letters hold
//
// internal/jsonscan holds the JSON readers all of these share (the strict scanner decode.go and
// key.go walk notifications with, the value parser rules see values through) and the string
// writer envelope.go uses; internal/hexdigit the hex digits of signatures and escapes.
//
// Sinks live in their own packages under sinks/ and implement Sink, declared here.
package relay
