package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hubrelay/hubrelay/relay/internal/logsample"
)

// The journal is the spool's write-ahead log. Accept appends one frame per group of calls to
// the active segment file and fdatasyncs it: one sequential write and one sync, where a bbolt
// commit writes pages at scattered offsets and syncs twice. The frame is then applied to the
// bbolt file by the ordinary group commit, off the request path, and a segment is deleted once
// every frame in it is in a committed bbolt transaction (meta "jlsn" records the last one).
// Open applies whatever frames a crash left unapplied.
//
// Segment files are named <first LSN, 20 digits>.wal in the directory <spool file>.journal.
// A frame is
//
//	length  uint32, big-endian: bytes of payload
//	crc     uint32, big-endian: CRC-32C of payload
//	payload lsn uvarint, item count uvarint, then per item:
//	        seq uvarint (0: no delivery), accepted-at varint (Unix ns),
//	        key, data (uvarint length + bytes each), sink count uvarint, sinks (same form)
//
// Only a torn tail may be dropped: an incomplete last frame of the newest segment (fewer bytes
// than its header, or a length that runs past the end of the file while the bytes there do not
// check out as a whole payload, or nothing but zeros), which a crash in the middle of a write
// leaves and which was never acknowledged, because its sync did not return. Any other frame
// that fails its checksum held acknowledged changes: Open refuses the spool (scan.go) and
// Recover applies every frame that still checks out and sets the damaged segment aside.

// journalSegmentSize is the size at which the journal starts a new segment, unless tests set
// another (testHooks.segmentSize).
const journalSegmentSize = 32 << 20

// maxKeptFrameBuf is the largest frame buffer the journal keeps for the next frame. Frames
// of 32 calls of 50 changes each are about 2 MiB: a buffer kept for them spares every such
// frame a fresh allocation, and its growth, of its whole size.
const maxKeptFrameBuf = 4 << 20

// maxFrameLen bounds a frame's payload when reading, so a corrupt length cannot make Open
// allocate gigabytes.
const maxFrameLen = 1 << 30

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errCorruptFrame marks a frame that does not check out.
var errCorruptFrame = errors.New("torn or corrupt journal frame")

// jItem is one accepted item as the journal records it.
type jItem struct {
	seq   uint64 // 0 when the item has no delivery (its key is only recorded)
	at    int64  // acceptance time, Unix nanoseconds
	key   string
	data  []byte
	sinks []string
	// hash is dedupHash(key) when the journal group computed it (not journaled).
	hash []byte
	// fresh reports that the key was neither pending nor in the file when the item was
	// accepted, so it cannot be in the file when the item's frame is applied (a later item
	// with the same key is a repeat while this one is pending, and frames apply in order):
	// apply need not look it up. It is not journaled; replayed items are looked up.
	fresh bool
}

// jFrame is one group of accepted items, written and synced together.
type jFrame struct {
	lsn   uint64
	items []jItem
}

// appendFrame appends f's encoding to buf, growing it once to the frame's size.
func appendFrame(buf []byte, f *jFrame) []byte {
	start := len(buf)
	buf = slices.Grow(buf, frameSize(f))
	buf = append(buf, 0, 0, 0, 0, 0, 0, 0, 0)
	buf = binary.AppendUvarint(buf, f.lsn)
	buf = binary.AppendUvarint(buf, uint64(len(f.items)))
	for i := range f.items {
		it := &f.items[i]
		buf = binary.AppendUvarint(buf, it.seq)
		buf = binary.AppendVarint(buf, it.at)
		buf = binary.AppendUvarint(buf, uint64(len(it.key)))
		buf = append(buf, it.key...)
		buf = binary.AppendUvarint(buf, uint64(len(it.data)))
		buf = append(buf, it.data...)
		buf = binary.AppendUvarint(buf, uint64(len(it.sinks)))
		for _, s := range it.sinks {
			buf = binary.AppendUvarint(buf, uint64(len(s)))
			buf = append(buf, s...)
		}
	}
	payload := buf[start+8:]
	binary.BigEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, crcTable))
	return buf
}

// frameSize returns an upper bound of the bytes appendFrame appends for f: the header and
// the payload with every varint at its longest.
func frameSize(f *jFrame) int {
	n := 8 + 2*binary.MaxVarintLen64
	for i := range f.items {
		it := &f.items[i]
		n += 5*binary.MaxVarintLen64 + len(it.key) + len(it.data)
		for _, s := range it.sinks {
			n += binary.MaxVarintLen64 + len(s)
		}
	}
	return n
}

// frameReader decodes the frames of one segment held in memory.
type frameReader struct {
	b   []byte
	off int
}

// next returns the next frame, io.EOF at a clean end, or errCorruptFrame.
func (r *frameReader) next() (*jFrame, error) {
	if r.off == len(r.b) {
		return nil, io.EOF
	}
	f, n, err := frameAt(r.b, r.off)
	if err != nil {
		return nil, err
	}
	r.off += n
	return f, nil
}

// decodeFrame decodes a payload whose checksum matched.
func decodeFrame(p []byte) (*jFrame, error) {
	d := decoder{b: p}
	f := &jFrame{lsn: d.uvarint()}
	n := d.uvarint()
	if n > uint64(len(p)) {
		return nil, errCorruptFrame
	}
	f.items = make([]jItem, 0, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		it := jItem{seq: d.uvarint(), at: d.varint()}
		it.key = string(d.bytes())
		it.data = d.bytes()
		ns := d.uvarint()
		if ns > uint64(len(p)) {
			return nil, errCorruptFrame
		}
		for j := uint64(0); j < ns && d.err == nil; j++ {
			it.sinks = append(it.sinks, string(d.bytes()))
		}
		f.items = append(f.items, it)
	}
	if d.err != nil || d.off != len(p) {
		return nil, errCorruptFrame
	}
	return f, nil
}

// decoder reads varints and length-prefixed byte strings, remembering the first error.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.err = errCorruptFrame
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.err = errCorruptFrame
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)-d.off) {
		d.err = errCorruptFrame
		return nil
	}
	b := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return b
}

// segment is a journal file that is no longer written to.
type segment struct {
	path string
	last uint64 // LSN of its last frame
}

// journal owns the segment files. Only the spool's journal goroutine writes; removeApplied
// runs on the committer's goroutine, so the sealed list has its own lock.
type journal struct {
	dir string
	log *slog.Logger
	// sample thins the failure lines, which repeat per write and per apply on a full or
	// failing disk, to one of each kind per second with the count of the others.
	sample  *logsample.Sampler
	f       *os.File // active segment; nil until the first write after open or a failure
	size    int64
	active  segment // path and last LSN of the active segment
	durable uint64  // LSN of the last frame synced (or applied when the spool opened)
	buf     []byte

	segmentSize int64                // journalSegmentSize, or what tests set
	sync        func(*os.File) error // fdatasync, or what tests set

	mu     sync.Mutex
	sealed []segment
}

// newJournal returns the journal in dir, whose frames up to durable are applied.
func newJournal(dir string, log *slog.Logger, durable uint64, h testHooks) *journal {
	j := &journal{dir: dir, log: log, sample: logsample.New(logsample.DefaultEvery), durable: durable,
		segmentSize: h.segmentSize, sync: h.syncFile}
	if j.segmentSize <= 0 {
		j.segmentSize = journalSegmentSize
	}
	if j.sync == nil {
		j.sync = fdatasync
	}
	return j
}

// journalDir is the directory of the journal of the spool file at path.
func journalDir(path string) string { return path + ".journal" }

// segmentName is the file name of a segment whose first frame has LSN first.
func segmentName(first uint64) string { return fmt.Sprintf("%020d.wal", first) }

// listSegments returns the segment files in dir in LSN order.
func listSegments(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	type named struct {
		first uint64
		path  string
	}
	var segs []named
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".wal") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(name, ".wal"), 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, named{first, filepath.Join(dir, name)})
	}
	slices.SortFunc(segs, func(a, b named) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.path
	}
	return out, nil
}

// write appends frame to the active segment and syncs it, opening a new segment first when
// there is none or the active one is full. After a failed write or sync the segment is closed
// (best effort truncated back to where the frame began) and the next write starts a new one:
// after a failed fsync the kernel may have dropped the dirty pages, so the file cannot be
// trusted to hold what later writes expect.
func (j *journal) write(f *jFrame) error {
	if j.f != nil && j.size >= j.segmentSize {
		j.seal()
	}
	if j.f == nil {
		// A segment is named after the frame that follows the last durable one, also when a
		// failed write burnt numbers since: the names then tile the LSNs without a gap, and a
		// gap means missing frames.
		if err := j.open(j.durable + 1); err != nil {
			return err
		}
	}
	j.buf = appendFrame(j.buf[:0], f)
	if _, err := j.f.Write(j.buf); err != nil {
		j.fail(err)
		return fmt.Errorf("write journal: %w", err)
	}
	if err := j.sync(j.f); err != nil {
		j.fail(err)
		return fmt.Errorf("sync journal: %w", err)
	}
	j.size += int64(len(j.buf))
	j.active.last = f.lsn
	j.durable = f.lsn
	if cap(j.buf) > maxKeptFrameBuf {
		j.buf = nil // do not keep a large frame's buffer
	}
	return nil
}

// open creates the segment whose first frame is first, and syncs the directory so that the
// file survives a crash.
func (j *journal) open(first uint64) error {
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return fmt.Errorf("create journal directory: %w", err)
	}
	path := filepath.Join(j.dir, segmentName(first))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create journal segment: %w", err)
	}
	if err := syncDir(j.dir); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return fmt.Errorf("create journal segment: %w", err)
	}
	j.f, j.size = f, 0
	j.active = segment{path: path}
	return nil
}

// seal closes the active segment and adds it to the sealed list (if it holds any frame).
func (j *journal) seal() {
	if j.f == nil {
		return
	}
	_ = j.f.Close()
	j.f = nil
	if j.size > 0 {
		j.mu.Lock()
		j.sealed = append(j.sealed, j.active)
		j.mu.Unlock()
	} else {
		_ = os.Remove(j.active.path)
	}
	j.active = segment{}
}

// fail abandons the active segment after a failed write or sync.
func (j *journal) fail(err error) {
	j.sample.Log(j.log, slog.LevelError, "write", "journal write failed; starting a new segment", "segment", j.active.path, "err", err)
	_ = j.f.Truncate(j.size)
	j.seal()
}

// removeApplied deletes the sealed segments whose frames are all applied (LSN <= applied).
func (j *journal) removeApplied(applied uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, s := range j.sealed {
		if s.last > applied {
			break
		}
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.sample.Log(j.log, slog.LevelWarn, "remove", "remove applied journal segment", "segment", s.path, "err", err)
			break
		}
		n++
	}
	j.sealed = append(j.sealed[:0], j.sealed[n:]...)
}

// close closes the active segment and writes the count of failure lines left out. Segments
// stay on disk; Open applies what they hold.
func (j *journal) close() {
	j.sample.Flush()
	if j.f != nil {
		_ = j.f.Close()
		j.f = nil
	}
}

// syncDir fsyncs a directory so that entries created or removed in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
