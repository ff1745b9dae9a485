// Package dedupindex is the spool's dedup index: the keys accepted within the dedup window,
// each with the time it was accepted, kept log-structured inside the spool's bbolt file.
//
// It owns three top-level buckets of that file (L0Bucket, RunsBucket, PartsBucket) and five
// keys of the owner's meta bucket (layout.go, part.go), and works in the owner's
// transactions: View and its Lookup in a read transaction, Writer (Add, then Finish) and
// Expire in a write transaction. It knows nothing else of the spool. Keys are given as their
// Hash.
//
// New keys go to a small mutable level, L0 (key hash -> accepted at). Dedup keys are hashes,
// so they land at random places: in one large B+tree every new key rewrites a page of its own
// at the next commit, and looking it up touches pages nothing else reads. Kept small, L0 stays
// in the CPU's caches and a commit's keys share its few pages.
//
// When L0 holds Config.L0Max keys (8192), the Finish that filled it writes them, in hash
// order, as an immutable sorted run: a sub-bucket of RunsBucket holding chunks of fixed-size
// records (hash, accepted at), written once, sequentially. When Config.FanIn (4) runs of one
// level exist, the same transaction merges them into one run of the next level, dropping keys
// past the window and older copies of a key accepted again. Runs that would merge into more
// than Config.MaxRun records (262144, 6 MiB) are marked FinalLevel instead, so that no
// transaction writes more than a few MiB: level-2 runs (131072 keys) become final. Every run
// has a blocked Bloom filter (10 bits a key, stored with the run and read by Load), so a
// lookup reads L0 and then only the runs that may hold the key: one cache line per run.
//
// Final runs do not stay (part.go): the final level is Parts (1024) partitions by the first 10
// bits of the key hash, each one sorted base (a sub-bucket of PartsBucket) without a filter.
// The sweep goes round the partitions, one per step, merging into a partition's base the
// records every final run holds in its range and deleting them from the runs (whose chunks are
// split at partition bounds, so this deletes whole chunks); a run left empty is dropped with
// its filter. Each Finish that flushes L0 sweeps until it has written Config.SweepRatio (16)
// records of partitions per key flushed: a step writes one partition (~2.3 MiB at 100M keys),
// and the final runs waiting for the sweep hold about the keys of one round (a few million at
// 100M keys: tens of runs, a few MiB of filters). A lookup then probes L0, the runs' filters
// and one chunk of one partition (chunks are keyed by their last hash: one Seek, a branch page
// and one or two 4 KiB leaves), so neither memory nor the lookup's cost grows with the keys in
// the final level. In a read transaction the pages of the partition, and of the runs of level
// 2 and up (the final runs, whose chunks are split at partition bounds) that a filter lets a
// lookup into, are read from the file with pread, not through bbolt's map (SetPageFile,
// pageread.go): a large index's pages would otherwise fault into the process's resident memory
// one 64 KiB block at a time. Copies of their branch pages are kept (at most 24 MiB), each
// partition's until it changes, the runs' until any run changes.
// The spool's format 5 introduced the partitions; its migration from format 4 only rewrites
// runs whose chunks cross partition bounds (AlignRun).
//
// A key is seen when some level holds it with a time inside the window. Expire deletes runs
// whose newest key is past the window, rewrites one run a call of which at least half is past
// it, deletes partitions wholly past it and rewrites one partition a call (of the next few
// after the last one looked at) of which at least half is, and deletes expired keys of L0.
// Expired records that stay are not seen; merges and the sweep drop them too.
//
// Index.mu guards the filters only; it is taken inside the owner's transactions and nothing is
// taken while it is held (the spool's LOCKS.md).
package dedupindex
