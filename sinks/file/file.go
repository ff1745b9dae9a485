package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hubrelay/hubrelay/relay"
)

// DefaultMaxFiles is the number of rotated files kept when Options.MaxFiles is zero.
const DefaultMaxFiles = 10

// Log attribute keys.
const (
	keySink  = "sink"
	keyPath  = "path"
	keyError = "error"
	keySize  = "size"
)

const (
	// maxPooledLine and maxKeptBuf bound the buffers kept for reuse between deliveries.
	maxPooledLine = 64 << 10
	maxKeptBuf    = 4 << 20
)

// ErrClosed is returned by Deliver after Close. It is not permanent: the delivery is retried
// after restart.
var ErrClosed = errors.New("sink closed")

// Options configures a Sink. The command fills it from the sink's config.
type Options struct {
	// Name is the sink name, used in errors and logs.
	Name string
	// Path is the file to append to; its directory is created if needed.
	Path string
	// MaxBytes rotates the file before a write would make it larger; 0 never rotates. A single
	// line longer than MaxBytes still gets written, alone in its file.
	MaxBytes int64
	// MaxFiles is the number of rotated files kept (path.1 … path.MaxFiles); 0 means
	// DefaultMaxFiles.
	MaxFiles int
	// Logger receives rotation and error logs; nil discards them.
	Logger *slog.Logger
}

// Sink appends changes to one file. It is safe for concurrent use.
type Sink struct {
	name     string
	path     string
	maxBytes int64
	maxFiles int
	log      *slog.Logger

	mu      sync.Mutex
	idle    sync.Cond // broadcast when leading turns false
	queue   []*waiter // lines waiting for the next batch
	spare   []*waiter // the other queue buffer
	leading bool      // a leader is writing a batch
	closed  bool

	// Owned by the current leader (or by Close once no leader runs).
	f    *os.File
	size int64 // bytes in f, all of them fsynced
	wbuf []byte

	syncs atomic.Int64 // fsyncs of the file, for tests
}

var (
	_ relay.BatchSink  = (*Sink)(nil)
	_ relay.SinkCloser = (*Sink)(nil)
)

// waiter is one Deliver or DeliverBatch call waiting for its lines to be committed.
type waiter struct {
	line []byte      // one or more complete lines, written together
	ends []int       // for a batch of several changes, the end offset of each line in line
	ch   chan result // capacity 1: exactly one result or lead handoff is ever sent
}

// result tells a waiter that its batch is committed (err) or that it leads the next batch.
type result struct {
	err  error
	lead bool
}

var waiters = sync.Pool{New: func() any { return &waiter{ch: make(chan result, 1)} }}

// New creates the file's directory and opens the file for appending (mode 0640).
func New(o Options) (*Sink, error) {
	switch {
	case o.Name == "":
		return nil, errors.New("sink name is empty")
	case o.Path == "":
		return nil, fmt.Errorf("%s: path is empty", o.Name)
	case o.MaxBytes < 0:
		return nil, fmt.Errorf("%s: max bytes must not be negative (got %d)", o.Name, o.MaxBytes)
	case o.MaxFiles < 0:
		return nil, fmt.Errorf("%s: max files must not be negative (got %d)", o.Name, o.MaxFiles)
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		name:     o.Name,
		path:     o.Path,
		maxBytes: o.MaxBytes,
		maxFiles: o.MaxFiles,
		log:      logger.With(keySink, o.Name, keyPath, o.Path),
	}
	if s.maxFiles == 0 {
		s.maxFiles = DefaultMaxFiles
	}
	s.idle.L = &s.mu
	if err := os.MkdirAll(filepath.Dir(o.Path), 0o750); err != nil {
		return nil, fmt.Errorf("%s: create directory: %w", o.Name, err)
	}
	if err := s.open(); err != nil {
		return nil, err
	}
	return s, nil
}

// Name returns the sink name.
func (s *Sink) Name() string { return s.name }

// Deliver appends ev's envelope as one line and returns once it is fsynced. Appending the
// same change twice writes it twice. Errors are never permanent: a failed write (disk full)
// may succeed later, and after Close it returns ErrClosed. When ctx ends while the line waits
// for its batch it returns ctx's error; the line may still be written.
func (s *Sink) Deliver(ctx context.Context, ev *relay.Event) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	w := waiters.Get().(*waiter)
	w.line = appendLine(w.line[:0], ev)
	return s.commitPooled(ctx, w)
}

// DeliverBatch appends the envelopes of evs as consecutive lines, in order, in one write, and
// returns once they are fsynced: it joins the same group commit as Deliver, so concurrent
// callers still share one fsync. Rotation never splits a batch across files, unless the
// batch alone is larger than MaxBytes: it is then written line by line as single changes
// would be, filling each file. Errors are those of Deliver; after an error any of the lines
// may have been written, and they are written again on retry. An empty evs is a no-op.
func (s *Sink) DeliverBatch(ctx context.Context, evs []*relay.Event) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	if len(evs) == 0 {
		return nil
	}
	w := waiters.Get().(*waiter)
	w.line = w.line[:0]
	for _, ev := range evs {
		w.line = appendLine(w.line, ev)
		if len(evs) > 1 {
			w.ends = append(w.ends, len(w.line))
		}
	}
	return s.commitPooled(ctx, w)
}

// commitPooled commits w and puts it back in the pool when no batch can still reference it.
func (s *Sink) commitPooled(ctx context.Context, w *waiter) error {
	reusable, err := s.commit(ctx, w)
	if reusable {
		if cap(w.line) > maxPooledLine {
			w.line = nil
		}
		if cap(w.ends) > maxPooledLine/64 {
			w.ends = nil
		}
		w.ends = w.ends[:0]
		waiters.Put(w)
	}
	return err
}

// appendLine appends ev's envelope and a newline, turning raw line breaks (insignificant
// whitespace in valid JSON) into spaces so that the change takes exactly one line.
func appendLine(dst []byte, ev *relay.Event) []byte {
	start := len(dst)
	dst = relay.AppendEnvelope(dst, ev)
	for b := dst[start:]; ; {
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			break
		}
		b[i] = ' '
		b = b[i+1:]
	}
	return append(dst, '\n')
}

// commit queues w and waits until its line is committed. The first caller to find no leader
// becomes the leader: it takes the whole queue as one batch, writes and fsyncs it, hands each
// waiter of the batch the result and hands leadership to the first waiter that queued
// meanwhile. reusable is false when a batch still being written may reference w.
func (s *Sink) commit(ctx context.Context, w *waiter) (reusable bool, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return true, fmt.Errorf("%s: %w", s.name, ErrClosed)
	}
	s.queue = append(s.queue, w)
	if !s.leading {
		s.leading = true
	} else {
		s.mu.Unlock()
		var r result
		select {
		case r = <-w.ch:
		case <-ctx.Done():
			s.mu.Lock()
			select {
			case r = <-w.ch: // decided meanwhile: take it as if ctx had not ended
				s.mu.Unlock()
			default:
				if i := slices.Index(s.queue, w); i >= 0 {
					s.queue = slices.Delete(s.queue, i, i+1) // not taken yet: nothing written
					s.mu.Unlock()
					return true, fmt.Errorf("%s: %w", s.name, ctx.Err())
				}
				// In the batch being written: its leader will still send to w.ch.
				s.mu.Unlock()
				return false, fmt.Errorf("%s: %w", s.name, ctx.Err())
			}
		}
		if !r.lead {
			return true, r.err
		}
		s.mu.Lock()
	}

	// Leader: w is in the queue, and no one else touches the file until leading is false.
	batch := s.queue
	s.queue = s.spare[:0]
	s.mu.Unlock()

	err = s.write(batch)

	s.mu.Lock()
	for _, b := range batch {
		if b != w {
			b.ch <- result{err: err}
		}
	}
	clear(batch)
	s.spare = batch[:0]
	if len(s.queue) > 0 {
		s.queue[0].ch <- result{lead: true}
	} else {
		s.leading = false
		s.idle.Broadcast()
	}
	s.mu.Unlock()
	return true, err
}

// write appends the lines of batch, rotating first where a waiter's lines would overflow
// MaxBytes, and fsyncs. A waiter's lines stay in one file unless they alone exceed MaxBytes;
// then they are placed line by line. Only the leader calls it.
func (s *Sink) write(batch []*waiter) error {
	if s.f == nil { // a previous rotation failed to open the new file
		if err := s.open(); err != nil {
			return err
		}
	}
	buf := s.wbuf[:0]
	var err error
	for _, w := range batch {
		if s.maxBytes > 0 && len(w.ends) > 1 && int64(len(w.line)) > s.maxBytes {
			start := 0
			for _, end := range w.ends {
				if buf, err = s.place(buf, w.line[start:end]); err != nil {
					return err
				}
				start = end
			}
			continue
		}
		if buf, err = s.place(buf, w.line); err != nil {
			return err
		}
	}
	err = s.flush(buf)
	if cap(buf) <= maxKeptBuf {
		s.wbuf = buf[:0]
	} else {
		s.wbuf = nil
	}
	return err
}

// place appends lines, which must stay in one file, to buf (the bytes pending for the current
// file). When the current file is not empty and lines would make it exceed MaxBytes, it
// first flushes buf and rotates.
func (s *Sink) place(buf, lines []byte) ([]byte, error) {
	if s.maxBytes > 0 && s.size+int64(len(buf)) > 0 && s.size+int64(len(buf)+len(lines)) > s.maxBytes {
		if err := s.flush(buf); err != nil {
			return buf, err
		}
		buf = buf[:0]
		if err := s.rotate(); err != nil {
			return buf, err
		}
	}
	return append(buf, lines...), nil
}

// flush writes buf and fsyncs the file. On failure it cuts the file back to its last synced
// size so that a partial line never precedes the next one.
func (s *Sink) flush(buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	_, err := s.f.Write(buf)
	if err == nil {
		s.syncs.Add(1)
		err = s.f.Sync()
	}
	if err != nil {
		if terr := s.f.Truncate(s.size); terr != nil {
			s.log.Error("cut back failed write", keyError, terr, keySize, s.size)
		}
		return fmt.Errorf("%s: append to %s: %w", s.name, s.path, err)
	}
	s.size += int64(len(buf))
	return nil
}

// rotate closes the (synced) file, shifts path.i to path.i+1 and path to path.1, and opens a
// new path.
func (s *Sink) rotate() error {
	if err := s.f.Close(); err != nil {
		s.f = nil
		return fmt.Errorf("%s: rotate %s: close: %w", s.name, s.path, err)
	}
	s.f = nil
	for i := s.maxFiles - 1; i >= 1; i-- {
		err := os.Rename(s.rotated(i), s.rotated(i+1))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: rotate %s: %w", s.name, s.path, err)
		}
	}
	if err := os.Rename(s.path, s.rotated(1)); err != nil {
		return fmt.Errorf("%s: rotate %s: %w", s.name, s.path, err)
	}
	size := s.size
	if err := s.open(); err != nil {
		return err
	}
	s.log.Info("rotated file", keySize, size)
	return nil
}

func (s *Sink) rotated(i int) string { return s.path + "." + strconv.Itoa(i) }

// open opens path for appending, makes sure its last line is terminated (a crash may have
// cut one short), and fsyncs the directory so the file's entry survives a crash.
func (s *Sink) open() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("%s: %w", s.name, err) // an *os.PathError: "open PATH: ..."
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("%s: %w", s.name, err) // "stat PATH: ..."
	}
	size := fi.Size()
	if size > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, size-1); err != nil {
			_ = f.Close()
			return fmt.Errorf("%s: open: read last byte: %w", s.name, err)
		}
		if last[0] != '\n' {
			if _, err := f.Write([]byte{'\n'}); err != nil {
				_ = f.Close()
				return fmt.Errorf("%s: open: terminate last line: %w", s.name, err)
			}
			size++
			s.log.Warn("terminated a partial last line")
		}
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		_ = f.Close()
		return fmt.Errorf("%s: %w", s.name, err) // "sync directory: ..."
	}
	s.f, s.size = f, size
	return nil
}

// syncDir fsyncs a directory so that renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// Close waits for the lines already queued to be committed, then closes the file. Later
// Deliver calls return ErrClosed. Closing twice is harmless. When ctx ends before the commit
// in progress does (a hung disk), Close returns ctx's error and the file is closed once that
// commit ends.
func (s *Sink) Close(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.close() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: close: %w", s.name, ctx.Err())
	}
}

func (s *Sink) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for s.leading {
		s.idle.Wait()
	}
	f := s.f
	s.f = nil
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: close: %w", s.name, err)
	}
	return nil
}
