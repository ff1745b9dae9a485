package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Default option values, used when the corresponding Options field is zero.
const (
	DefaultMaxBatchDelay  = 0 // write a journal frame as soon as the previous one is synced
	DefaultCommitInterval = 20 * time.Millisecond
	DefaultApplyDelay     = 500 * time.Millisecond
	DefaultMaxBatchSize   = 1000
	DefaultDedupWindow    = 168 * time.Hour
	DefaultOpenTimeout    = time.Second
)

// MaxKeyLen is the longest dedup key Accept takes, in bytes.
const MaxKeyLen = 4096

// MaxSinkLen is the longest sink name Accept takes, in bytes.
const MaxSinkLen = 1024

// formatVersion is the on-disk layout version stored in the meta bucket. Version 1 kept whole
// dedup keys, version 2 kept them all in one B+tree (dedupkeys) with a time index
// (dedupkeyt); Open migrates both.
const formatVersion = 3

// maxPromote bounds the deliveries one Promote call moves, so it never holds the writer long.
const maxPromote = 1000

var (
	// ErrLocked is returned by Open when another process (or another Spool in this process)
	// holds the spool file.
	ErrLocked = errors.New("spool is locked by another process")

	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("spool is closed")

	// ErrNotFound is returned by Reschedule when the sink has no pending delivery with that
	// sequence number.
	ErrNotFound = errors.New("delivery not found")
)

var (
	bucketItems    = []byte("items")
	bucketRefs     = []byte("refs")
	bucketReady    = []byte("ready")
	bucketSched    = []byte("sched")
	bucketSchedIdx = []byte("schedidx")
	bucketDedup    = []byte("dedupkeys")

	// Format 2's time index of the dedup keys.
	bucketDedupT = []byte("dedupkeyt")

	// Format 1's dedup buckets, keyed by the whole key.
	bucketDedupV1  = []byte("dedup")
	bucketDedupTV1 = []byte("dedupt")
	bucketStats    = []byte("stats")
	bucketMeta     = []byte("meta")

	topBuckets = [][]byte{
		bucketItems, bucketRefs, bucketReady, bucketSched, bucketSchedIdx,
		bucketDedup, bucketDedupRuns, bucketStats, bucketMeta,
	}

	metaVersion   = []byte("version")
	metaDedupN    = []byte("dedupn")
	metaHeartbeat = []byte("heartbeat")
	// metaJournalLSN is the LSN of the last journal frame applied to the file.
	metaJournalLSN = []byte("jlsn")
)

// Options tunes a Spool. The zero value is usable: every zero field takes its default.
type Options struct {
	// CommitInterval is the least time between the starts of two commits of the spool file,
	// which apply the journal and record Done and Reschedule calls. Default 20ms.
	CommitInterval time.Duration
	// ApplyDelay is how long a journal frame may wait before it is applied to the spool file;
	// sooner when 4 MiB wait, or 256 items of which the oldest is 50ms old (4096 items while
	// the sinks keep up), or a caller needs the file (Reschedule, Stats, Sinks, DedupLen,
	// ExpireDedup, Close). A delivery done within it never touches the file, only its dedup
	// key does, and the frames that waited share commits. A crash loses no accepted item (Open
	// applies what the journal holds), but deliveries done only in memory, normally at most
	// ApplyDelay's worth, are made again. Default 500ms.
	ApplyDelay time.Duration
	// dedup sizes the dedup index (tests make it small).
	dedup dedupConfig
	// MaxBatchDelay is an extra wait before each journal frame for more Accept calls to join
	// it. Default 0: a frame is written as soon as the previous one is synced, and the calls
	// that arrived during that write and sync share it.
	MaxBatchDelay time.Duration
	// MaxBatchSize is the most calls one journal frame or one commit takes. Default 1000.
	MaxBatchSize int
	// DedupWindow is how long an accepted dedup key keeps repeats out. Default 168h.
	DedupWindow time.Duration
	// OpenTimeout is how long Open waits for the file lock before returning ErrLocked.
	// Default 1s.
	OpenTimeout time.Duration
	// Logger receives the spool's logs; nil discards them.
	Logger *slog.Logger
}

// Spool is a durable queue of deliveries and an index of dedup keys, backed by one bbolt
// file and a write-ahead journal in front of it. Its methods are safe for concurrent use.
type Spool struct {
	db       *bolt.DB
	dedup    *dedupIndex
	commits  *committer
	path     string
	window   time.Duration
	log      *slog.Logger
	delay    time.Duration
	maxBatch int

	// The journal's writer: Accept queues calls, journalLoop writes them.
	jr      *journal
	jmu     sync.Mutex
	jcond   *sync.Cond
	jqueue  []*acceptCall
	jclosed bool
	jdone   chan struct{}
	lastLSN uint64 // last frame written (journalLoop only)
	lastSeq uint64 // last sequence number given (journalLoop only)

	// Frames written but not yet applied to the bbolt file, and what Ready and the dedup
	// check need of them.
	pmu          sync.Mutex
	pcond        *sync.Cond // broadcast when a frame is applied
	frames       []*pendingFrame
	pending      []*pendingItem // in Seq order
	pendingKeys  map[string]pendingKey
	pendingBytes int64
	pendingLSN   uint64 // last frame made pending
	appliedLSN   uint64 // every frame up to this one is applied
	applyCalls   uint64 // apply calls queued so far; the last one's id
	applyQueued  bool   // the last apply call has not started yet
	applyFailing bool   // an apply failed; none runs until the retry
	applyDelay   time.Duration
	applyTimer   *time.Timer // queueApply's, for when the oldest frame is due (see applyDue)
	applyTimerAt time.Time   // when applyTimer fires; zero when it is not set
	applyWaiters int         // callers waiting for frames to reach the file: apply them now
	sinksKeepUp  bool        // the last apply that was not forced found at least half of its items delivered (see applyEarlyItems)
	applyErr     error       // the last apply error, until every frame written by then is applied
	failedLSN    uint64

	closed    atomic.Bool
	closeOnce sync.Once
	// writeTxs counts the write transactions committed to the file since Open.
	writeTxs atomic.Uint64
	closeErr error

	checkMu  sync.Mutex
	checking *probe // the probe Check callers are waiting for, if one runs

	// promoteLimit bounds the deliveries one Promote call moves (maxPromote; tests lower it).
	promoteLimit int

	// acceptHook, when set by tests, receives the ID of the transaction that committed each
	// successful Accept call.
	acceptHook func(txid int)
}

// Open opens the spool file at path, creating it and its directory if needed. It returns
// ErrLocked if the file stays locked by another process for opt.OpenTimeout. Every commit is
// fsync'd. Open applies the journal frames a crash left unapplied; if any part of the journal
// other than a torn tail fails its checksum, it applies nothing and returns a *DamageError
// (errors.Is ErrDamaged), and Recover repairs the spool.
func Open(path string, opt Options) (*Spool, error) {
	opt = opt.withDefaults()
	log := opt.logger()

	db, dedup, jlsn, err := openFile(path, opt, log)
	if err != nil {
		return nil, err
	}
	jdir := journalDir(path)
	jlsn, err = replayJournal(db, dedup, path, jlsn, opt.DedupWindow, log)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	var seq, dedupN uint64
	err = db.View(func(tx *bolt.Tx) error {
		seq = tx.Bucket(bucketItems).Sequence()
		dedupN = decUint(tx.Bucket(bucketMeta).Get(metaDedupN))
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	log.Info("spool opened", "path", path, "seq", seq, "dedup_keys", dedupN,
		"dedup_window", opt.DedupWindow, "max_batch_delay", opt.MaxBatchDelay)
	s := &Spool{db: db, path: path,
		window: opt.DedupWindow, log: log, promoteLimit: maxPromote, dedup: dedup,
		delay: opt.MaxBatchDelay, maxBatch: opt.MaxBatchSize, applyDelay: opt.ApplyDelay,
		jr:      &journal{dir: jdir, log: log, durable: jlsn},
		jdone:   make(chan struct{}),
		lastLSN: jlsn, lastSeq: seq, pendingLSN: jlsn, appliedLSN: jlsn,
		pendingKeys: map[string]pendingKey{},
	}
	s.commits = newCommitter(db, opt.MaxBatchSize, opt.CommitInterval, &s.writeTxs)
	s.jcond = sync.NewCond(&s.jmu)
	s.pcond = sync.NewCond(&s.pmu)
	go s.journalLoop()
	return s, nil
}

// openFile opens the bbolt file of the spool at path, creating it if needed, migrates an
// older format and loads the dedup index. It returns the last journal LSN the file records.
func openFile(path string, opt Options, log *slog.Logger) (*bolt.DB, *dedupIndex, uint64, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, 0, fmt.Errorf("open spool: create directory: %w", err)
	}
	bopt := &bolt.Options{
		Timeout:         opt.OpenTimeout,
		FreelistType:    bolt.FreelistMapType,
		NoFreelistSync:  true,
		InitialMmapSize: initialMmapSize(),
	}
	db, err := bolt.Open(path, 0o600, bopt)
	if err != nil && !errors.Is(err, bolterrors.ErrTimeout) && bopt.InitialMmapSize > 0 {
		// Address space may be limited (ulimit -v): map the file at its size instead.
		log.Warn("open spool with a 1 GiB mapping; trying its size", "err", err)
		bopt.InitialMmapSize = 0
		db, err = bolt.Open(path, 0o600, bopt)
	}
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, nil, 0, fmt.Errorf("open spool %s: %w", path, ErrLocked)
		}
		return nil, nil, 0, fmt.Errorf("open spool %s: %w", path, err)
	}

	var jlsn uint64
	var from uint64 // the format to migrate from, 0 for none
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range topBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaVersion); v == nil {
			if err := meta.Put(metaVersion, encUint(formatVersion)); err != nil {
				return err
			}
		} else if got := decUint(v); got == 1 || got == 2 {
			from = got
		} else if got != formatVersion {
			return fmt.Errorf("unsupported format version %d (want %d)", got, formatVersion)
		}
		jlsn = decUint(meta.Get(metaJournalLSN))
		return nil
	})
	if err == nil && from == 1 {
		err = migrateDedupV1(db, log)
	}
	dedup := newDedupIndex(opt.dedup)
	if err == nil && from != 0 {
		err = migrateDedupV2(db, dedup, log)
	}
	if err == nil {
		err = db.View(dedup.load)
	}
	if err != nil {
		_ = db.Close()
		return nil, nil, 0, fmt.Errorf("open spool %s: %w", path, err)
	}
	return db, dedup, jlsn, nil
}

// migrateDedupV2 turns format 2's dedup index into format 3's. Each transaction takes the
// maxRun oldest entries of the time index (deletes there are sequential) and writes their keys
// as a final run, so that each run covers a stretch of time and expires as a whole; dedupkeys
// is only read meanwhile. A crash in between resumes where it stopped, and a format-2 binary
// still finds every key. The last transaction empties dedupkeys (now L0), drops the time
// index and records format 3.
func migrateDedupV2(db *bolt.DB, dedup *dedupIndex, log *slog.Logger) error {
	moved := 0
	var err error
	for done := false; err == nil && !done; {
		err = db.Update(func(tx *bolt.Tx) error {
			n, more, err := migrateRun(tx, dedup)
			moved += n
			done = !more
			return err
		})
		if err == nil && !done {
			log.Info("migrating the dedup index", "format", formatVersion, "keys_so_far", moved)
		}
	}
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			for _, name := range [][]byte{bucketDedupT, bucketDedup} {
				if tx.Bucket(name) != nil {
					if err := tx.DeleteBucket(name); err != nil {
						return err
					}
				}
			}
			if _, err := tx.CreateBucket(bucketDedup); err != nil {
				return err
			}
			meta := tx.Bucket(bucketMeta)
			if err := meta.Put(metaDedupL0N, encUint(0)); err != nil {
				return err
			}
			return meta.Put(metaVersion, encUint(formatVersion))
		})
	}
	if err != nil {
		return fmt.Errorf("migrate dedup keys to format %d: %w", formatVersion, err)
	}
	log.Info("dedup index migrated", "format", formatVersion, "keys", moved)
	return nil
}

// migrateRun writes the keys of the maxRun oldest entries of format 2's time index as a final
// run and deletes those entries. It returns how many keys it wrote, and whether entries are
// left.
func migrateRun(tx *bolt.Tx, dedup *dedupIndex) (int, bool, error) {
	idx := tx.Bucket(bucketDedupT)
	if idx == nil {
		return 0, false, nil
	}
	l0 := tx.Bucket(bucketDedup)
	var entries, recs [][]byte
	c := idx.Cursor()
	for k, _ := c.First(); k != nil && len(entries) < dedup.cfg.maxRun; k, _ = c.Next() {
		entries = append(entries, slices.Clone(k))
		if len(k) != 24 {
			continue
		}
		// An entry whose key carries another time is stale (the key was accepted again).
		if v := l0.Get(k[8:]); v != nil && string(v) == string(k[:8]) {
			recs = append(recs, append(slices.Clone(k[8:]), k[:8]...))
		}
	}
	if len(entries) == 0 {
		return 0, false, nil
	}
	slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:16], b[:16]) })
	var run []byte
	minT, maxT := ^uint64(0), uint64(0)
	for _, r := range recs {
		run = append(run, r...)
		t := binary.BigEndian.Uint64(r[16:])
		minT, maxT = min(minT, t), max(maxT, t)
	}
	for _, k := range entries {
		if err := idx.Delete(k); err != nil {
			return 0, false, err
		}
	}
	if len(recs) > 0 {
		if err := dedup.writeRun(tx, runInfo{level: finalLevel, count: len(recs), minT: minT, maxT: maxT}, run); err != nil {
			return 0, false, err
		}
	}
	return len(recs), true, nil
}

// initialMmapSize is the address space the bbolt file is mapped with from the start. While
// the file outgrows its mapping, every commit that grows it remaps the file: it waits for all
// read transactions to end (Ready, the journal's dedup lookups), holds new ones off meanwhile,
// and copies every node the commit changed out of the old mapping. 1 GiB of address space
// spares a spool that never gets that large all of it. Only pages the relay reads count
// towards its resident memory. Windows grows the file itself to the mapping's size, and
// 32-bit platforms lack the address space, so they keep bbolt's default.
func initialMmapSize() int {
	if runtime.GOOS == "windows" || math.MaxInt == math.MaxInt32 {
		return 0
	}
	return 1 << 30
}

// migrateDedupV1 moves format 1's dedup keys to the hashed buckets, in transactions of a
// bounded size (a crash in between resumes where it stopped), then records format 2.
func migrateDedupV1(db *bolt.DB, log *slog.Logger) error {
	moved := 0
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			old, oldT := tx.Bucket(bucketDedupV1), tx.Bucket(bucketDedupTV1)
			if old == nil {
				done = true
				return tx.Bucket(bucketMeta).Put(metaVersion, encUint(2))
			}
			b := openBuckets(tx)
			dedupT, err := tx.CreateBucketIfNotExists(bucketDedupT)
			if err != nil {
				return err
			}
			var keys, vals [][]byte
			c := old.Cursor()
			for k, v := c.First(); k != nil && len(keys) < 10000; k, v = c.Next() {
				keys, vals = append(keys, slices.Clone(k)), append(vals, slices.Clone(v))
			}
			for i, k := range keys {
				h := dedupHash(k)
				if err := b.dedup.Put(h, vals[i]); err != nil {
					return err
				}
				if err := dedupT.Put(dedupTKey(vals[i], h), nil); err != nil {
					return err
				}
				if err := old.Delete(k); err != nil {
					return err
				}
				if oldT != nil {
					if err := oldT.Delete(dedupTKey(vals[i], k)); err != nil {
						return err
					}
				}
			}
			moved += len(keys)
			if len(keys) == 0 {
				if err := tx.DeleteBucket(bucketDedupV1); err != nil {
					return err
				}
				if oldT != nil {
					return tx.DeleteBucket(bucketDedupTV1)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("migrate dedup keys to format %d: %w", formatVersion, err)
		}
	}
	log.Info("spool migrated to format 2 (hashed dedup keys)", "keys", moved)
	return nil
}

// replayJournal applies the intact frames of the journal of the spool file at path that come
// after the applied LSN, then deletes the journal's segments; a segment that ends in a torn
// tail is moved aside instead (setAside). It returns the last LSN, from which the journal
// continues. If any other part of the journal fails its checksum it changes nothing and
// returns a *DamageError.
func replayJournal(db *bolt.DB, dedup *dedupIndex, path string, applied uint64, window time.Duration, log *slog.Logger) (uint64, error) {
	js, err := scanJournal(journalDir(path))
	if err != nil {
		return 0, err
	}
	if d := js.damage(applied); len(d) > 0 {
		return 0, &DamageError{Path: path, Damage: d}
	}
	last, nitems, err := applyFrames(db, dedup, js.frames(), applied, window)
	if err != nil {
		return 0, err
	}
	if nitems > 0 {
		log.Info("journal replayed", "items", nitems, "last_lsn", last)
	}
	var torn []string
	for _, ss := range js.segs {
		if ss.torn {
			r := ss.bad[len(ss.bad)-1]
			log.Warn("journal segment ends in a torn frame (a crash during its write, never acknowledged); the segment is set aside",
				"segment", ss.path, "offset", r.off, "bytes", r.end-r.off)
			torn = append(torn, ss.path)
		}
	}
	if len(torn) > 0 {
		dir, err := setAside(path, torn, "torn tail of the newest journal segment: the last write before a crash, never acknowledged\n")
		if err != nil {
			return 0, err
		}
		log.Warn("torn journal segment set aside", "dir", dir)
	}
	if err := removeSegments(js, torn); err != nil {
		return 0, err
	}
	return last, nil
}

// removeSegments deletes the segments of js except those in keep (already moved) and syncs
// the journal's directory.
func removeSegments(js *journalScan, keep []string) error {
	removed := 0
	for _, ss := range js.segs {
		if slices.Contains(keep, ss.path) {
			continue
		}
		if err := os.Remove(ss.path); err != nil {
			return fmt.Errorf("remove replayed journal segment: %w", err)
		}
		removed++
	}
	if removed > 0 {
		if err := syncDir(js.dir); err != nil {
			return fmt.Errorf("sync journal directory: %w", err)
		}
	}
	return nil
}

// applyFrames applies the frames after the applied LSN, in transactions of a bounded size. It
// returns the last LSN and the number of items applied.
func applyFrames(db *bolt.DB, dedup *dedupIndex, frames []*jFrame, applied uint64, window time.Duration) (uint64, int, error) {
	last := applied
	var todo []*jFrame
	nitems := 0
	for _, f := range frames {
		if f.lsn > last {
			todo = append(todo, f)
			nitems += len(f.items)
			last = f.lsn
		}
	}
	for len(todo) > 0 {
		n, size := 0, 0
		for n < len(todo) && (n == 0 || size+len(todo[n].items) <= 10000) {
			size += len(todo[n].items)
			n++
		}
		chunk := todo[:n]
		todo = todo[n:]
		err := db.Update(func(tx *bolt.Tx) error {
			for _, f := range chunk {
				if err := applyItems(tx, dedup, f.items, f.lsn, window); err != nil {
					return fmt.Errorf("frame %d: %w", f.lsn, err)
				}
			}
			return nil
		})
		if err != nil {
			return 0, 0, fmt.Errorf("replay journal: %w", err)
		}
	}
	return last, nitems, nil
}

// Close waits for running transactions and closes the file. Calls after the first return
// the first call's result.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.jmu.Lock()
		s.jclosed = true
		s.jcond.Broadcast()
		s.jmu.Unlock()
		<-s.jdone // queued Accept calls fail with ErrClosed; nothing more is written
		// Frames still waiting for their delay are applied now, in as many commits as the
		// weight bound needs; if that fails the next Open replays them from the journal.
		s.pmu.Lock()
		for s.appliedLSN < s.pendingLSN && !s.applyFailing {
			s.queueApply()
			s.pcond.Wait()
		}
		if s.applyTimer != nil {
			s.applyTimer.Stop()
		}
		s.pmu.Unlock()
		s.commits.close()
		s.pmu.Lock()
		s.pcond.Broadcast()
		s.pmu.Unlock()
		s.jr.close()
		s.pmu.Lock()
		clean := s.appliedLSN == s.pendingLSN
		s.pmu.Unlock()
		if clean {
			if paths, err := listSegments(s.jr.dir); err == nil {
				for _, p := range paths {
					_ = os.Remove(p)
				}
			}
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close spool: %w", err)
			return
		}
		s.log.Info("spool closed", "path", s.path)
	})
	return s.closeErr
}

// Check reports whether the spool can take changes: it writes and syncs a probe file in the
// journal's directory (Accept's path), writes a heartbeat key in a tiny transaction of the
// file (the apply's path), and fails while applying the journal fails. It returns when both
// are on disk or ctx is done, whichever comes first.
func (s *Spool) Check(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("check spool: %w", ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("check spool: %w", err)
	}
	s.pmu.Lock()
	applyErr := s.applyErr
	s.pmu.Unlock()
	if applyErr != nil {
		return fmt.Errorf("check spool: applying the journal: %w", applyErr)
	}
	s.checkMu.Lock()
	p := s.checking
	if p == nil {
		// One probe at a time: while the disk hangs, callers share it instead of piling up
		// goroutines stuck in fdatasync.
		p = &probe{done: make(chan struct{})}
		s.checking = p
		go func() {
			p.err = probeDir(s.jr.dir)
			if p.err != nil {
				p.err = fmt.Errorf("journal directory: %w", p.err)
			} else {
				p.err = s.update(func(tx *bolt.Tx) error {
					return tx.Bucket(bucketMeta).Put(metaHeartbeat, encTime(time.Now()))
				})
			}
			s.checkMu.Lock()
			s.checking = nil
			s.checkMu.Unlock()
			close(p.done)
		}()
	}
	s.checkMu.Unlock()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("check spool: %w", p.err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("check spool: %w", ctx.Err())
	}
}

// probe is one run of Check's disk probe, shared by the callers that arrive while it runs.
type probe struct {
	done chan struct{}
	err  error // set before done is closed
}

// probeDir writes and syncs a small file in dir, as a journal write would.
func probeDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(encTime(time.Now()))
	if werr == nil {
		werr = syncFile(f)
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	return werr
}

// mapErr turns bbolt's "database not open" into ErrClosed.
func (s *Spool) mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// view runs fn in a read transaction, failing with ErrClosed after Close.
func (s *Spool) view(fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.mapErr(s.db.View(fn))
}

// update runs fn in its own write transaction, failing with ErrClosed after Close.
func (s *Spool) update(fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	err := s.mapErr(s.db.Update(fn))
	if err == nil {
		s.writeTxs.Add(1)
	}
	return err
}

// updateIf runs fn in its own write transaction and commits it only if fn reports a change:
// a transaction that changed nothing is rolled back and writes nothing to disk (bbolt would
// still write and sync a meta page).
func (s *Spool) updateIf(fn func(*bolt.Tx) (bool, error)) error {
	if s.closed.Load() {
		return ErrClosed
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return s.mapErr(err)
	}
	changed, err := fn(tx)
	if err != nil || !changed {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.mapErr(err)
	}
	s.writeTxs.Add(1)
	return nil
}

// WriteTransactions returns the number of write transactions committed to the spool file
// since Open (each is a write and an fsync): an idle spool commits none.
func (s *Spool) WriteTransactions() uint64 { return s.writeTxs.Load() }

// batch runs fn in a write transaction shared with concurrent callers (group commit); weight
// is roughly the records fn writes (see maxCommitWeight). fn may run more than once and must
// reset anything it reports at its start.
func (s *Spool) batch(fn func(*bolt.Tx) error, weight int) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.mapErr(s.commits.do(fn, weight))
}

// encUint encodes v as 8 big-endian bytes.
func encUint(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// decUint decodes 8 big-endian bytes; anything shorter decodes as 0.
func decUint(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// timeBits maps t to a uint64 that sorts like t (nanoseconds with the sign bit flipped).
func timeBits(t time.Time) uint64 {
	return uint64(t.UnixNano()) ^ (1 << 63)
}

// bitsTime is the inverse of timeBits.
func bitsTime(u uint64) time.Time {
	return time.Unix(0, int64(u^(1<<63)))
}

// encTime encodes t as 8 sortable bytes.
func encTime(t time.Time) []byte { return encUint(timeBits(t)) }

// decTime decodes 8 sortable bytes written by encTime.
func decTime(b []byte) time.Time { return bitsTime(decUint(b)) }
