// Package metrics turns what the relay does into Prometheus metrics.
//
// New registers the metrics on a registry; the result is the relay.Observer of the receiver
// and the relay.DeliveryObserver of the delivery engine, Reload records configuration
// reloads, WatchSpool makes each scrape read the spool and dead-letter state, and Handler
// serves it all. The per-request and per-change methods are on the hot path: they look up
// pre-curried label children in a copy-on-write map, so they neither lock nor allocate once a
// label combination has been seen.
//
// Label cardinality is bounded: object/field pairs past 200 distinct ones, and apps, rules and
// sinks past generous caps, are counted under the label value "other", as are label values that
// are not valid UTF-8 or longer than 128 bytes. An empty app label means the request was refused
// before an app was known.
//
// # Metrics
//
//	| metric | type | labels | meaning |
//	|---|---|---|---|
//	| hubrelay_requests_total | counter | app, outcome | webhook requests answered; outcome is accepted, duplicate, empty, verified, bad_token, bad_signature, malformed, too_large, too_many, spool_error, bad_method, not_found, read_error, overloaded, rate_limited, forbidden_client or stale |
//	| hubrelay_ack_duration_seconds | histogram | outcome | time from the start of a request to its response (1 ms–5 s; Meta wants the median under 250 ms and < 1% over 1 s) |
//	| hubrelay_changes_total | counter | object, field, result | changes decoded from signed notifications; result is accepted or duplicate |
//	| hubrelay_rule_matches_total | counter | rule | accepted changes each rule matched |
//	| hubrelay_unmatched_changes_total | counter | object, field | accepted changes that matched no rule |
//	| hubrelay_rule_errors_total | counter | rule | rule expressions that failed to evaluate |
//	| hubrelay_unrecognised_entries_total | counter | object | accepted entries the decoder did not recognise, kept whole as changes of source unknown |
//	| hubrelay_delivery_attempts_total | counter | sink, outcome | delivery attempts; outcome is ok, retry or permanent |
//	| hubrelay_deliveries_total | counter | sink, result | finished deliveries; result is delivered or dead_lettered |
//	| hubrelay_delivery_attempt_duration_seconds | histogram | sink | duration of one attempt (5 ms–60 s) |
//	| hubrelay_delivery_latency_seconds | histogram | sink | from acceptance to delivery (10 ms–7 days) |
//	| hubrelay_attempts_per_delivery | histogram | sink | attempts a delivered change took |
//	| hubrelay_spool_pending | gauge | sink, state | deliveries waiting in the spool; state is ready or scheduled |
//	| hubrelay_spool_oldest_pending_age_seconds | gauge | sink | age of the oldest pending delivery (0 when none) |
//	| hubrelay_spool_damaged_deliveries | gauge | sink | pending deliveries held back since the start because their stored data fails its checksum (above 0: run hubrelay spool recover) |
//	| hubrelay_dedup_keys | gauge | | dedup keys stored in the spool |
//	| hubrelay_dead_letters | gauge | sink | dead-letter files in the dead-letter directory |
//	| hubrelay_state_collect_errors_total | counter | source | scrapes that could not read the spool, dedup or dead_letters state |
//	| hubrelay_config_reloads_total | counter | result | configuration reloads; result is ok or error |
//	| hubrelay_config_last_reload_successful | gauge | | 1 if the last reload succeeded, else 0 |
//	| hubrelay_config_last_reload_success_timestamp_seconds | gauge | | Unix time of the last successful load (start-up or reload) |
//	| hubrelay_build_info | gauge | version, goversion | always 1 |
//	| hubrelay_postgres_commit_seconds | histogram | outcome | Postgres mode: latency of one accept transaction (a request's keys, changes and deliveries); outcome is ok or error |
//	| hubrelay_postgres_claim_lag_seconds | histogram | sink | Postgres mode: from a delivery becoming ready (accepted, or its retry due) to a replica claiming it |
//	| hubrelay_postgres_pool_acquired_connections, _idle_connections, _max_connections | gauge |  | Postgres mode: the connection pool in use, idle, and its size |
//
// The Go runtime (go_*), process (process_*) and scrape handler (promhttp_*) metrics are
// served as well. The spool and dead-letter gauges are read at scrape time and appear only once
// WatchSpool is called; configured sinks are reported even when nothing is pending for them.
//
// alerts.example.yaml in this directory holds example Prometheus alerting rules built on these
// metrics.
package metrics
