// Package relay is the core of hubrelay: it receives Meta webhook notifications and turns each
// into durable, individually delivered changes.
//
// The flow of one POST, one file per stage:
//
//	ingest.go   HTTP: GET subscribe challenge; POST, size-capped, app chosen by path
//	verify.go   X-Hub-Signature-256 over the exact bytes received, every secret of the app
//	decode.go   notification envelope -> []Event (changes, changed_fields, messaging, standby)
//	key.go      the dedup key of each change, independent of entry.time
//	route.go    rules -> sink names for each change
//	spool/      changes, deliveries and dedup keys committed in one fsync'd transaction;
//	            only then does Meta get its 200
//	deliver.go  per-sink workers pull deliveries, retry with backoff, reschedule in the spool
//	deadletter/ a readable file per abandoned delivery, replayable
//
// Sinks live in their own packages under sinks/ and implement Sink, declared here.
package relay
