// Package spool is hubrelay's durable delivery queue and dedup index: an embedded bbolt file,
// with a write-ahead journal in front of it, that holds every accepted change until each of
// its sinks has taken it or given up on it.
//
// Accept is the only write on the request path, and it writes to a journal, not to the bbolt
// file. Concurrent Accept calls share one journal frame: the dedup check, a new global,
// increasing sequence number per item that has sinks, one sequential write and one fdatasync
// (group commit: a frame starts as soon as the previous one is synced and takes every call
// that arrived meanwhile, up to Options.MaxBatchSize). Accept returns only after that sync, so
// the caller may acknowledge the change to Meta as soon as it returns. If Accept fails, nothing
// of the call is stored and the caller answers 503 so Meta retries.
//
// A frame's items are then applied to the bbolt file by the applier, through the file's own
// group commit, which also records Done and Reschedule calls. Nothing waits for it on the
// request path: a frame waits up to Options.ApplyDelay (DefaultApplyDelay) before it is
// applied; sooner when applyEarlyBytes wait, or applyEarlyItems with the oldest applyEarlyAge
// old (maxCommitWeight items while the sinks keep up: the last apply that was not forced found
// at least half of its items delivered), or when a caller needs the file (Reschedule, Stats,
// Sinks, DedupLen, ExpireDedup, Close). The frames that waited share commits. Until then the
// items are held in memory (bounded by maxPendingBytes: Accept waits, up to maxBacklogWait,
// and then fails) and Ready returns them from there. A delivery that is done before its frame
// is applied never reaches the file; only its dedup key does, so a sink that keeps up costs
// the file little more than one key per change. The file records the last frame it applied,
// journal segments are deleted once every frame in them is applied, and Open applies whatever
// frames a crash left behind, so an accepted item survives a crash whether or not its frame
// was applied. A delivery done only in memory before a crash (normally at most ApplyDelay's
// worth; while applies fail, up to the memory bound) is delivered again after it: at least
// once.
//
// The delivery engine reads a sink's due deliveries in sequence order with Ready, removes them
// with Done once delivered or dead-lettered, and parks failed ones with Reschedule. Promote
// moves parked deliveries whose time has come back to the ready queue with their original
// sequence number, attempt count and history, at most maxPromote a call. An item's data is
// deleted when its last delivery is done.
//
// Dedup keys are kept with the time they were accepted. A key counts as seen only while it is
// younger than the dedup window (Options.DedupWindow, DefaultDedupWindow); a key accepted again
// after its window is a new item. Keys survive restarts. The index (internal/dedupindex) is
// log-structured: new keys go to a small mutable level that a commit's keys share a few pages
// of, which is written, once full, as an immutable sorted run; runs of a level are merged into
// larger ones, and a Bloom filter per run spares lookups the runs that do not hold a key. No
// key costs a random page write in a large tree. ExpireDedup deletes runs whose keys are all
// past the window, rewrites one run a call of which at least half is, and deletes expired keys
// of the mutable level.
//
// Where things are:
//
//	accept.go          Accept, the journal goroutine (one frame per group of calls)
//	journal.go         the journal's segments and frame format; scan.go reads and checks them
//	apply.go           the applier: schedules and runs the applies of frames to the file
//	pending.go         the applier's frames not applied yet, as Ready, Done and dedup see them
//	commit.go          the file's group commit (committer)
//	queue.go           Ready, Done, Reschedule, Promote
//	stats.go           Stats, Sinks, ExpireDedup, DedupLen
//	pause.go           the operator's pause of sinks (SetPaused, SinkStates)
//	memory*.go         the file's pages in the process's resident memory: ReleaseMemory, BoundMemory
//	layout.go          the file's buckets, meta keys and value encoders
//	migrate.go         the format check and the migrations from older formats
//	recover.go         Open's journal replay, Verify and Recover
//	spool.go           Options, Spool, Open, Close, Check
//	internal/dedupindex  the dedup index
//	LOCKS.md           the order locks are taken in
//
// On-disk layout (format formatVersion; all integers big-endian so keys sort numerically):
//
//	items              seq -> CRC-32C (of seq and the rest), sinks accepted for, data (itemcodec.go)
//	refs               seq -> number of deliveries still pending (uvarint)
//	ready/<sink>       seq -> delivery meta (encMeta: attempt, first accepted, history)
//	sched/<sink>       (due, seq) -> delivery meta
//	schedidx/<sink>    seq -> due
//	stats              sink -> (ready count, scheduled count)
//	sinkstate          sink -> operator's pause: version, paused, since, by (pause.go)
//	meta               format version, heartbeat, last applied journal frame, and the dedup
//	                   index's counters
//	dedupkeys, dedupruns/<run>, dedupparts/<partition>
//	                   the dedup index's (internal/dedupindex, layout.go)
//
// The file is checked before bbolt maps it (boltfile.go: meta pages, size, every page the
// tree reaches), and its content against itself as it opens (verify.go): a damaged file is
// refused with a *DamageError, never a crash, and Recover salvages what checks out
// (salvage.go). Journal segments are kept until a later commit has recorded their frames in
// both of bbolt's meta pages, so that the file falling back to its older meta page loses
// nothing the journal cannot give back.
//
// The sequence counter is the items bucket's own sequence (the highest applied). Times are
// stored as nanoseconds since the Unix epoch with the sign bit flipped (timeBits), so they
// sort correctly as bytes.
package spool
