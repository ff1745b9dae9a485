// Package dedupindex is the spool's dedup index: the keys accepted within the dedup window,
// each with the time it was accepted, kept log-structured inside the spool's bbolt file.
//
// It owns two top-level buckets of that file (L0Bucket, RunsBucket) and three keys of the
// owner's meta bucket (layout.go), and works in the owner's transactions: View and its Lookup
// in a read transaction, Writer (Add, then Finish) and Expire in a write transaction. It knows
// nothing else of the spool. Keys are given as their Hash.
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
// transaction writes more than a few MiB: level-2 runs (131072 keys) become final, so the index
// holds about one run per 131,072 keys in the window (runs migrated from the spool's format 2
// hold 262144). Every run has a blocked Bloom filter (10 bits a key: 1.25 MB of memory per
// million keys, stored with the run and read by Load), so a lookup reads L0 and then only the
// runs that may hold the key: one cache line per run, and ~1 % false positives that cost a
// binary search in one chunk. Up to tens of millions of keys in the window that costs a few
// microseconds a key; far beyond (a 168h window at 170 changes/s holds 100M keys: ~760 runs,
// 125 MB of filters, ~8 false-positive searches a lookup) lookups slow down in proportion, and
// compacting final runs further is the next step.
//
// A key is seen when some level holds it with a time inside the window. Expire deletes runs
// whose newest key is past the window, rewrites one run a call of which at least half is past
// it, and deletes expired keys of L0. Expired records that stay are not seen; merges drop them
// too.
//
// Index.mu guards the filters only; it is taken inside the owner's transactions and nothing is
// taken while it is held (the spool's LOCKS.md).
package dedupindex
