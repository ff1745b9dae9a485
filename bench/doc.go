// Package bench measures hubrelay against a bare net/http reference on loopback: the engine
// behind `hubrelay bench`.
//
// One run starts every target as a child process of the calling binary, so that the CPU time
// and peak memory it reports are the target's own and not the load generator's:
//
//   - reference: `hubrelay bench-reference`, a bare net/http server that reads the body,
//     checks the HMAC, parses the JSON and answers 200 (ServeReference);
//   - reference-fsync: the same, also appending every body to a file with group-committed
//     fsync, the least any durable receiver must do;
//   - hubrelay: `hubrelay serve` with its real spool, a rule and two HTTP sinks pointing at
//     receivers the bench runs in-process; hubrelay-batch turns on the sinks' batching, and
//     hubrelay-sinks-down keeps both sinks answering 503 (ingest alone).
//
// A load generator posts unique, correctly signed WhatsApp-shaped notifications (optionally a
// fraction with a bad signature, which must be refused) from a fixed pool of keep-alive
// connections or at a fixed rate. For every target and phase the report holds acknowledged
// requests and changes per second, acknowledgement latency percentiles, CPU time per change and
// peak RSS of the target process; for hubrelay also, per sink, the delivered rate, the
// end-to-end latency (the relay's received_at to arrival at the sink) and the delivery
// accounting: the change ids acknowledged (computed with relay.Decode and relay.Key from the
// bytes sent) against the ids each sink received, so a lost or duplicated delivery is counted
// exactly (Account). Ratios of hubrelay to the fsync reference are measured in the same run.
//
// The outage scenario posts a backlog while both sinks answer 503, samples the relay's
// memory, then lets the sinks recover and measures how fast the backlog drains.
//
// Everything listens on 127.0.0.1, every phase is bounded in time, and every child is stopped
// before Run returns. CPU time and memory are read from /proc and are reported only on Linux.
package bench
