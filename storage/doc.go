// Package storage holds hubrelay's storage engines, one folder each, behind the contract that
// relay/store.go declares (relay.Store) and relay/storetest checks:
//
//	embedded/  the journal + bbolt spool of relay/spool in storage.dir; one process owns it
//	postgres/  PostgreSQL (storage.postgres.url); any number of replicas share one database
//
// cmd/hubrelay picks the engine from the config; nothing else knows which one runs.
package storage
