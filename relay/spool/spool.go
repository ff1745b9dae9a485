package spool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
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
	dedup dedupindex.Config
	// test holds the hooks tests set.
	test testHooks
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

// testHooks are the fault injections and tunings tests set through Options.test, per spool,
// so that tests can run in parallel. The zero value is what production runs with.
type testHooks struct {
	// applyFault is called before each journal frame is applied; an error fails the apply.
	applyFault func() error
	// commitFault can turn a commit of the file that succeeded into a reported failure, as
	// when bbolt's last fdatasync fails after the new meta page was written.
	commitFault func() error
	// applyRetryDelay is the pause before a failed apply is tried again (0:
	// defaultApplyRetryDelay).
	applyRetryDelay time.Duration
	// segmentSize is the size at which the journal starts a new segment (0:
	// journalSegmentSize).
	segmentSize int64
	// syncFile makes a journal write, and Check's probe, durable (nil: fdatasync).
	syncFile func(*os.File) error
}

// Spool is a durable queue of deliveries and an index of dedup keys, backed by one bbolt
// file and a write-ahead journal in front of it. Its methods are safe for concurrent use.
// LOCKS.md gives the order its locks are taken in.
type Spool struct {
	db      *bolt.DB
	dedup   *dedupindex.Index
	commits *committer // the file's group commit
	apply   *applier   // applies journal frames to the file, holds those not applied yet
	jr      *journal
	jq      acceptQueue // Accept calls waiting for their journal frame
	path    string
	window  time.Duration
	log     *slog.Logger

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	// writeTxs counts the write transactions committed to the file since Open.
	writeTxs atomic.Uint64

	probes probes // Check's disk probe

	mem memBound // BoundMemory's bound on the file's resident pages
	// pageFile is the file open again, read only, for the dedup index's lookups (SetPageFile).
	pageFile *os.File

	damaged damagedItems // items Ready found failing their checksum

	// promoteLimit bounds the deliveries one Promote call moves (maxPromote; tests lower it).
	promoteLimit int

	// acceptHook, when set by tests, receives the ID of the transaction that committed each
	// successful Accept call.
	acceptHook func(txid int)
}

// acceptQueue is the journal's writer: Accept queues calls, journalLoop takes them in groups
// of up to maxBatch and writes one frame per group.
type acceptQueue struct {
	delay    time.Duration // MaxBatchDelay
	maxBatch int

	mu     sync.Mutex
	cond   *sync.Cond // signalled when a call is queued or the queue closes
	calls  []*acceptCall
	closed bool
	done   chan struct{} // closed when journalLoop returns

	lastLSN uint64 // last frame written (journalLoop only)
	lastSeq uint64 // last sequence number given (journalLoop only)
}

// probes is Check's disk probe: one at a time, shared by the callers that arrive while it runs.
type probes struct {
	mu      sync.Mutex
	running *probe // the probe Check callers are waiting for, if one runs
}

// Open opens the spool file at path, creating it and its directory if needed. It returns
// ErrLocked if the file stays locked by another process for opt.OpenTimeout. Every commit is
// fsync'd. Open applies the journal frames a crash left unapplied; if any part of the journal
// other than a torn tail fails its checksum, it applies nothing and returns a *DamageError
// (errors.Is ErrDamaged), and Recover repairs the spool.
func Open(path string, opt Options) (*Spool, error) {
	opt = opt.withDefaults()
	log := opt.logger()
	db, dedup, pageFile, jlsn, err := openFile(path, opt, log)
	if err != nil {
		return nil, err
	}
	jlsn, err = replayJournal(db, dedup, path, jlsn, opt.DedupWindow, log)
	var seq, dedupN uint64
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error {
			seq = tx.Bucket(bucketItems).Sequence()
			dedupN = dedup.Len(tx)
			return nil
		})
	}
	if err != nil {
		_ = db.Close()
		closePageFile(pageFile)
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	log.Info("spool opened", "path", path, "seq", seq, "dedup_keys", dedupN,
		"dedup_window", opt.DedupWindow, "max_batch_delay", opt.MaxBatchDelay)
	s := &Spool{db: db, dedup: dedup, path: path, window: opt.DedupWindow, log: log,
		promoteLimit: maxPromote, pageFile: pageFile}
	s.jr = newJournal(journalDir(path), log, jlsn, opt.test)
	s.jq = acceptQueue{delay: opt.MaxBatchDelay, maxBatch: opt.MaxBatchSize,
		done: make(chan struct{}), lastLSN: jlsn, lastSeq: seq}
	s.jq.cond = sync.NewCond(&s.jq.mu)
	s.commits = newCommitter(db, opt.MaxBatchSize, opt.CommitInterval, &s.writeTxs, opt.test.commitFault, s.checkMemory)
	dedup.SetRelease(s.checkMemoryIn)
	s.apply = newApplier(s, jlsn, opt.ApplyDelay, opt.test)
	go s.journalLoop()
	return s, nil
}

// openFile opens the bbolt file of the spool at path, creating it if needed, migrates an
// older format and loads the dedup index. It returns the last journal LSN the file records.
func openFile(path string, opt Options, log *slog.Logger) (*bolt.DB, *dedupindex.Index, *os.File, uint64, error) {
	db, err := openBolt(path, opt, log)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	dedup := dedupindex.New(opt.dedup, bucketMeta)
	jlsn, err := prepareFile(db, dedup, log)
	// The dedup index's lookups in read transactions, and its Load, read its partitions and
	// final runs from the file rather than the map (dedupindex.SetPageFile): a second
	// descriptor, read only (bbolt's and the spool's locks are flock's, which closing it
	// leaves alone). Without it they read through the map.
	var pageFile *os.File
	if err == nil {
		if pageFile, err = os.Open(path); err != nil {
			log.Warn("dedup lookups read through the map", "path", path, "err", err)
			pageFile, err = nil, nil
		} else {
			dedup.SetPageFile(pageFile, db.Info().PageSize)
		}
		err = db.View(dedup.Load)
	}
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error {
			if d := verifyContent(tx, path); len(d) > 0 {
				return &DamageError{Path: path, Damage: d}
			}
			return nil
		})
	}
	if err != nil {
		_ = db.Close()
		closePageFile(pageFile)
		var de *DamageError
		if errors.As(err, &de) {
			return nil, nil, nil, 0, err
		}
		return nil, nil, nil, 0, fmt.Errorf("open spool %s: %w", path, err)
	}
	return db, dedup, pageFile, jlsn, nil
}

// closePageFile closes the dedup index's page file, if there is one (read only).
func closePageFile(f *os.File) {
	if f != nil {
		_ = f.Close()
	}
}

// openBolt opens (or creates) the bbolt file at path and its directory.
func openBolt(path string, opt Options, log *slog.Logger) (*bolt.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open spool: create directory: %w", err)
	}
	bopt := &bolt.Options{
		Timeout:         opt.OpenTimeout,
		FreelistType:    bolt.FreelistMapType,
		NoFreelistSync:  true,
		InitialMmapSize: initialMmapSize(),
	}
	db, _, err := openChecked(path, bopt, log)
	if err != nil && !errors.Is(err, ErrLocked) && !errors.Is(err, ErrDamaged) && bopt.InitialMmapSize > 0 {
		// Address space may be limited (ulimit -v): map the file at its size instead.
		log.Warn("open spool with a 1 GiB mapping; trying its size", "err", err)
		bopt.InitialMmapSize = 0
		db, _, err = openChecked(path, bopt, log)
	}
	var de *DamageError
	if errors.As(err, &de) {
		return nil, err
	}
	if errors.Is(err, ErrLocked) {
		return nil, fmt.Errorf("open spool %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open spool %s: %w", path, err)
	}
	// The journal directory marks a spool that was opened before (see checkSpoolFile).
	if err := os.MkdirAll(journalDir(path), 0o700); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open spool %s: create the journal directory: %w", path, err)
	}
	return db, nil
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

// Close waits for running transactions and closes the file. Calls after the first return
// the first call's result.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.jq.mu.Lock()
		s.jq.closed = true
		s.jq.cond.Broadcast()
		s.jq.mu.Unlock()
		<-s.jq.done // queued Accept calls fail with ErrClosed; nothing more is written
		// Frames still waiting for their delay are applied now, in as many commits as the
		// weight bound needs; if that fails the next Open replays them from the journal.
		s.apply.drain()
		s.commits.close()
		s.apply.wake()
		s.jr.close()
		// One more commit records the last applied frame in both meta pages before the
		// journal that holds it goes (see applier.settled).
		if s.apply.clean() && settle(s.db) == nil {
			if paths, err := listSegments(s.jr.dir); err == nil {
				for _, p := range paths {
					_ = os.Remove(p)
				}
			}
			if err := persistFreelist(s.db); err != nil {
				s.log.Warn("close spool: the freelist was not kept: the next open rebuilds it", "path", s.path, "err", err)
			}
		}
		s.mem.close()
		closePageFile(s.pageFile)
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
	if applyErr := s.apply.failure(); applyErr != nil {
		return fmt.Errorf("check spool: applying the journal: %w", applyErr)
	}
	s.probes.mu.Lock()
	p := s.probes.running
	if p == nil {
		// One probe at a time: while the disk hangs, callers share it instead of piling up
		// goroutines stuck in fdatasync.
		p = &probe{done: make(chan struct{})}
		s.probes.running = p
		go func() {
			p.err = probeDir(s.jr.dir, s.jr.sync)
			if p.err != nil {
				p.err = fmt.Errorf("journal directory: %w", p.err)
			} else {
				p.err = s.update(func(tx *bolt.Tx) error {
					return tx.Bucket(bucketMeta).Put(metaHeartbeat, encTime(time.Now()))
				})
			}
			s.probes.mu.Lock()
			s.probes.running = nil
			s.probes.mu.Unlock()
			close(p.done)
		}()
	}
	s.probes.mu.Unlock()
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

// probeDir writes and syncs (with sync) a small file in dir, as a journal write would.
func probeDir(dir string, sync func(*os.File) error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "probe"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(encTime(time.Now()))
	if werr == nil {
		werr = sync(f)
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

// withDefaults fills the zero fields of opt with their defaults.
func (opt Options) withDefaults() Options {
	if opt.MaxBatchDelay < 0 {
		opt.MaxBatchDelay = 0
	}
	if opt.CommitInterval <= 0 {
		opt.CommitInterval = DefaultCommitInterval
	}
	if opt.ApplyDelay <= 0 {
		opt.ApplyDelay = DefaultApplyDelay
	}
	if opt.MaxBatchSize <= 0 {
		opt.MaxBatchSize = DefaultMaxBatchSize
	}
	if opt.DedupWindow <= 0 {
		opt.DedupWindow = DefaultDedupWindow
	}
	if opt.OpenTimeout <= 0 {
		opt.OpenTimeout = DefaultOpenTimeout
	}
	return opt
}

// logger is opt.Logger with the spool's component, or a logger that discards.
func (opt Options) logger() *slog.Logger {
	if opt.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return opt.Logger.With("component", "spool")
}

// withoutPath returns the reason of err when it is an *os.PathError about path, which the
// caller names already ("open spool PATH: is a directory", not "... PATH: open PATH: ...").
func withoutPath(err error, path string) error {
	var pe *os.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return pe.Err
	}
	return err
}
