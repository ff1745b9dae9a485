// Package spool is hubrelay's durable delivery queue and dedup index: one embedded bbolt file
// that holds every accepted change until each of its sinks has taken it or given up on it.
//
// Accept is the only write on the request path. It stores, in a single transaction, the dedup
// key of every item that was not seen within the dedup window, the item's data (once, however
// many sinks need it) and one delivery per sink, each numbered with a global, increasing
// sequence. Concurrent Accept calls share one transaction and therefore one fsync (group
// commit, commit.go: a commit starts as soon as the previous one ends and takes every call
// that arrived meanwhile); Accept returns only after that commit is on disk, so the
// caller may acknowledge the change to Meta as soon as it returns. If Accept fails, nothing of
// the call is stored and the caller answers 503 so Meta retries.
//
// The delivery engine reads a sink's due deliveries in sequence order with Ready, removes them
// with Done once delivered or dead-lettered, and parks failed ones with Reschedule. Promote
// moves parked deliveries whose time has come back to the ready queue with their original
// sequence number, attempt count and history. An item's data is deleted when its last
// delivery is done.
//
// Dedup keys are kept with the time they were accepted. A key counts as seen only while it is
// younger than the dedup window; ExpireDedup deletes older keys in small transactions, and a key
// accepted again after its window is a new item. Keys survive restarts.
//
// On-disk layout (all integers big-endian so keys sort numerically):
//
//	items              seq -> data
//	refs               seq -> number of deliveries still pending (uvarint)
//	ready/<sink>       seq -> delivery meta (attempt, first accepted, history)
//	sched/<sink>       (due, seq) -> delivery meta
//	schedidx/<sink>    seq -> due
//	dedup              key -> accepted at
//	dedupt             (accepted at, key) -> empty, scanned by ExpireDedup
//	stats              sink -> (ready count, scheduled count)
//	meta               format version, dedup key count, heartbeat
//
// The sequence counter is the items bucket's own sequence. Times are stored as nanoseconds
// since the Unix epoch with the sign bit flipped, so they sort correctly as bytes.
package spool
