package relay

import (
	"context"
	"errors"
	"time"
)

// This file declares the storage contract: what the receiver (ingest.go) and the delivery
// engine (deliver.go) need of durable storage, in relay's own types. Two engines implement it:
// the embedded spool (storage/embedded over relay/spool, one process owning a directory) and
// PostgreSQL (storage/postgres, any number of replicas sharing a database). Both pass the
// conformance suite in relay/storetest; an engine is done when it passes that suite.

// Item is one change offered to Spooler.Accept.
type Item struct {
	// Key is the dedup key; "" means the item is never deduplicated (dead-letter replays).
	Key string
	// Data is the encoded change (AppendBinary), stored once however many sinks need it.
	Data []byte
	// Sinks names the sinks that get one delivery each. It may be empty: the key is still
	// recorded so that a repeat is dropped. A name listed twice gets one delivery.
	Sinks []string
}

// Delivery is one pending (item, sink) pair as Queue.Ready returns it.
type Delivery struct {
	// Sink is the sink the delivery is for.
	Sink string
	// Seq is the acceptance sequence number of the item, shared by its deliveries to every
	// sink; it never changes, even when the delivery is rescheduled and promoted again.
	Seq uint64
	// Data is the item's data, a copy that stays valid after the call.
	Data []byte
	// Attempt is the number of attempts made so far, 0 for a new delivery.
	Attempt int
	// FirstAt is when the item was accepted.
	FirstAt time.Time
	// History is whatever the engine last stored with Reschedule (its attempt log); nil at
	// first.
	History []byte
}

// Retry is a failed attempt of one pending delivery, as Queue.RescheduleBatch records it.
type Retry struct {
	// Seq is the delivery's sequence number.
	Seq uint64
	// At is when the delivery becomes due again.
	At time.Time
	// Attempt is the number of attempts made so far.
	Attempt int
	// History replaces what the delivery carries (the engine's attempt log).
	History []byte
}

// SinkStats describes the pending deliveries of one sink.
type SinkStats struct {
	// Ready is the number of deliveries due now.
	Ready int
	// Scheduled is the number of deliveries parked by Reschedule until a later time.
	Scheduled int
	// Oldest is when the oldest pending delivery's item was accepted; zero if none is pending.
	Oldest time.Time
	// OldestReady is when the ready delivery with the lowest Seq was accepted; zero if none is
	// ready. With a healthy sink it stays recent: one that grows old is a delivery stuck.
	OldestReady time.Time
	// OldestScheduled is when the scheduled delivery with the lowest Seq was accepted; zero if
	// none is scheduled.
	OldestScheduled time.Time
	// NextDue is the earliest time a scheduled delivery of the sink falls due; zero if none is
	// scheduled. Once well past, a promotion was missed.
	NextDue time.Time
	// Damaged is the number of pending deliveries held back since the store opened because
	// their stored data fails its checksum (the embedded spool's; see spool.Recover).
	Damaged int
}

// SinkState is an operator's pause of one sink, as storage keeps it (SinkControls): a paused
// sink keeps its deliveries, and the engine starts no attempt of them until it is resumed.
type SinkState struct {
	// Sink is the sink's name.
	Sink string
	// Paused reports whether the sink is paused now.
	Paused bool
	// Since is when the sink was last paused (Paused) or resumed (not Paused). After a resume,
	// the max_age of the sink's deliveries counts from Since (see RetryPolicy.Decide).
	Since time.Time
	// By says who changed it and from where ("api: alice@ops1 from 127.0.0.1:50412").
	By string
}

// ErrNotFound is wrapped by Queue.Reschedule's error when the sink has no pending delivery with
// that Seq.
var ErrNotFound = errors.New("delivery not found")

// Spooler is what the receiver needs of storage: a durable, deduplicating accept.
type Spooler interface {
	// Accept records durably every item whose Key was not seen within the dedup window (in
	// storage, by any replica, or earlier in this same call): the key with time now, the data,
	// and one delivery per sink, all under one new Seq per item, greater than every Seq an
	// earlier Accept of this Spooler returned from. It returns only once all of that is
	// committed (fsync'd, or committed by the database), which is when Meta may get its 200.
	// dup[i] reports that items[i] was dropped as a repeat. On error nothing of this call is
	// stored, and the caller answers 503 so that Meta retries.
	Accept(ctx context.Context, items []Item, now time.Time) (dup []bool, err error)
}

// SinkControls is the operator's pause and resume of sinks, kept in storage so that a paused
// sink stays paused across restarts and reloads, and, in a shared store, on every replica.
type SinkControls interface {
	// SetPaused pauses (paused true) or resumes sink at time at, recording by (who and from
	// where), durably, and returns the sink's state afterwards. changed is false when the sink
	// already was in that state: its state, Since and By included, is then left as it was. A
	// sink never paused counts as resumed since the zero time.
	SetPaused(sink string, paused bool, at time.Time, by string) (st SinkState, changed bool, err error)
	// SinkStates returns the state of every sink ever paused, by name (resumed ones included,
	// for their Since). Sinks missing from it have never been paused.
	SinkStates() (map[string]SinkState, error)
}

// Queue is what the delivery engine needs of storage: each sink's queue of pending deliveries,
// ready ones in Seq order and scheduled ones parked until a time, and which sinks an operator
// paused.
//
// Every method is safe for concurrent use. Errors other than ErrNotFound mean the storage could
// not be read or written; the engine logs them and tries again, so a delivery is never lost to
// one (at least once: a delivery whose Done failed is delivered again).
type Queue interface {
	// Ready returns up to max ready deliveries of sink with Seq greater than after, in Seq
	// order. A shared store claims what it returns: another replica is not given the same
	// delivery until it is Done, Rescheduled, or this replica's lease lapses (it died). The
	// same replica may be given it again; the engine skips what it has in flight.
	Ready(sink string, after uint64, max int) ([]Delivery, error)
	// Done removes deliveries of sink, ready or scheduled, once they were delivered or
	// dead-lettered. Seqs without a pending delivery are ignored, so Done is idempotent.
	Done(sink string, seqs ...uint64) error
	// DoneSync is Done that returns only once the removal is durable (survives a crash), where
	// Done may keep it in memory for a while (and the delivery is then delivered again after
	// a crash). The engine uses it for deliveries with an ordering key, so that a crash never
	// brings a change back after a later change of its key was delivered.
	DoneSync(sink string, seqs ...uint64) error
	// Reschedule records a failed attempt of a pending delivery of sink: it is parked until at
	// with its attempt count and history replaced, and Promote makes it ready again from then
	// on. It returns an error wrapping ErrNotFound when sink has no pending delivery seq.
	Reschedule(sink string, seq uint64, at time.Time, attempt int, history []byte) error
	// RescheduleBatch records failed attempts of pending deliveries of sink as Reschedule does,
	// all in one commit, so that a failing sink costs one commit per batch of failures rather
	// than one per failure. A Seq without a pending delivery is skipped (it was done meanwhile),
	// so it is idempotent. On error none of rs is recorded. rs is the caller's again once it
	// returns (the engine reuses it).
	RescheduleBatch(sink string, rs []Retry) error
	// Promote makes scheduled deliveries due at or before now ready again, keeping their Seq,
	// attempt count and history, and returns for each sink the lowest promoted Seq so the
	// engine can rewind its cursor. One call may move only part of what is due; NextScheduled
	// then reports a time not after now and the caller calls Promote again.
	Promote(now time.Time) (map[string]uint64, error)
	// Scheduled returns up to max scheduled (parked by Reschedule, not yet promoted)
	// deliveries of sink with Seq greater than after, in Seq order, whatever their due time.
	// It claims nothing. The engine reads them when a sink's runner starts, to learn which
	// ordering keys wait for a retry.
	Scheduled(sink string, after uint64, max int) ([]Delivery, error)
	// NextScheduled returns the earliest time a scheduled delivery becomes due; ok is false
	// when none is scheduled.
	NextScheduled() (t time.Time, ok bool, err error)
	// Sinks returns, in name order, the sinks that have pending (ready or scheduled)
	// deliveries.
	Sinks() ([]string, error)
	SinkControls
}

// Store is a storage engine: everything the receiver, the delivery engine, readiness and
// metrics use. relay/storetest is its conformance suite.
type Store interface {
	Spooler
	Queue
	// Stats returns the pending deliveries of every sink that has or had one; its cost must not
	// grow with the length of a queue beyond a scan of an index, as metrics call it per scrape.
	Stats() (map[string]SinkStats, error)
	// DedupLen returns the number of dedup keys stored (an estimate where counting is costly).
	DedupLen() (int, error)
	// ExpireDedup drops dedup keys accepted at least the dedup window before now and returns
	// how many it dropped (an estimate where dropping is by whole partitions). It works in small
	// steps; callers call it again at once while it returns max or more.
	ExpireDedup(now time.Time, max int) (int, error)
	// Check reports whether the store can commit now (readiness): nil when it can.
	Check(ctx context.Context) error
}

// Poller is implemented by stores whose queues also change outside this process: deliveries
// accepted by another replica, promoted by another replica, or committed after a delivery with
// a higher Seq was read, sinks paused or resumed by another replica. The engine's dispatchers
// then re-read their sink's queue from its start every PollInterval, besides being woken by
// Notify, and the engine re-reads SinkStates as often.
type Poller interface {
	PollInterval() time.Duration
}
