package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrDamaged is wrapped by the errors of Open, Verify and Recover that report damaged storage:
// bytes of the journal or of the spool file that fail their checksum or cannot be read.
var ErrDamaged = errors.New("spool is damaged")

// RecoverHint is what a person should do about an ErrDamaged error; commands add it to the
// error they print.
const RecoverHint = "nothing was changed; `hubrelay spool verify` reports what is damaged, and " +
	"`hubrelay spool recover` applies every change that still checks out and moves the damaged " +
	"files aside (see the README, \"Recovering a damaged spool\")"

// Damage is one damaged part of the spool.
type Damage struct {
	// File is the damaged file.
	File string `json:"file"`
	// Offset is where the damage begins in File, in bytes, and Len how many bytes it spans.
	Offset int64 `json:"offset"`
	Len    int64 `json:"len"`
	// What says what is damaged, in words.
	What string `json:"what"`
	// AfterLSN and BeforeLSN bound the journal frames the damaged bytes held: every one of
	// them has an LSN strictly between the two (BeforeLSN 0: no intact frame follows).
	AfterLSN  uint64 `json:"after_lsn,omitempty"`
	BeforeLSN uint64 `json:"before_lsn,omitempty"`
	// Applied reports that every frame the damaged bytes can have held is already in the spool
	// file, so setting them aside loses nothing.
	Applied bool `json:"applied"`
	// ToEnd reports that the file is cut short at Offset: what followed is missing.
	ToEnd bool `json:"to_end,omitempty"`
}

func (d Damage) String() string {
	s := fmt.Sprintf("%s: %d bytes at offset %d: %s", d.File, d.Len, d.Offset, d.What)
	if d.ToEnd {
		s = fmt.Sprintf("%s: everything from offset %d on: %s", d.File, d.Offset, d.What)
	}
	switch {
	case d.Applied:
		s += " (only frames already in the spool file)"
	case d.BeforeLSN != 0:
		s += fmt.Sprintf(" (frames after LSN %d and before %d)", d.AfterLSN, d.BeforeLSN)
	case d.AfterLSN != 0:
		s += fmt.Sprintf(" (frames after LSN %d)", d.AfterLSN)
	}
	return s
}

// DamageError is the error Open returns when part of the spool fails its checksum: it lists
// what is damaged, and Open changed nothing.
type DamageError struct {
	// Path is the spool file.
	Path string
	// Damage lists the damaged parts.
	Damage []Damage
}

func (e *DamageError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "damaged spool: ")
	for i, d := range e.Damage {
		if i > 0 {
			b.WriteString("; ")
		}
		if i == 3 {
			fmt.Fprintf(&b, "and %d more", len(e.Damage)-i)
			break
		}
		b.WriteString(d.String())
	}
	return b.String()
}

// Unwrap makes errors.Is(err, ErrDamaged) true.
func (e *DamageError) Unwrap() error { return ErrDamaged }

// frameAt decodes the frame that starts at off in b, returning it and its encoded length.
func frameAt(b []byte, off int) (*jFrame, int, error) {
	if len(b)-off < 8 {
		return nil, 0, errCorruptFrame
	}
	n := int(binary.BigEndian.Uint32(b[off:]))
	sum := binary.BigEndian.Uint32(b[off+4:])
	if n > maxFrameLen || n > len(b)-off-8 {
		return nil, 0, errCorruptFrame
	}
	payload := b[off+8 : off+8+n]
	if crc32.Checksum(payload, crcTable) != sum {
		return nil, 0, errCorruptFrame
	}
	f, err := decodeFrame(payload)
	if err != nil {
		return nil, 0, errCorruptFrame
	}
	return f, 8 + n, nil
}

// badRange is a stretch of a segment that holds no intact frame.
type badRange struct {
	off, end int
}

// segScan is what scanning one segment file found.
type segScan struct {
	path   string
	first  uint64 // the LSN its name gives
	size   int
	frames []*jFrame
	offs   []int // offs[i]: where frames[i] begins
	bad    []badRange
	torn   bool // its last bad range is a torn tail (decided by scanJournal, newest segment only)
}

// scanSegment reads every intact frame of a segment: after a frame that fails its checksum it
// looks for the next offset where an intact frame with a larger LSN begins, so that a damaged
// frame costs only itself. The stretches in between are returned as bad ranges.
func scanSegment(b []byte) ([]*jFrame, []int, []badRange) {
	var frames []*jFrame
	var offs []int
	var bad []badRange
	var last uint64
	for off := 0; off < len(b); {
		f, n, err := frameAt(b, off)
		if err == nil && f.lsn > last {
			frames, offs = append(frames, f), append(offs, off)
			last = f.lsn
			off += n
			continue
		}
		next := len(b)
		for p := off + 1; p+8 <= len(b); p++ {
			if f, _, err := frameAt(b, p); err == nil && f.lsn > last {
				next = p
				break
			}
		}
		bad = append(bad, badRange{off, next})
		off = next
	}
	return frames, offs, bad
}

// tornTail reports whether rest, the bytes from the first bad offset to the end of the newest
// segment, are what a crash in the middle of a frame's write leaves: fewer bytes than a
// header, zeros (a filesystem that extended the file before writing it), or a frame whose
// length runs past the end while what follows its header is not a whole payload with its
// checksum (then only the length is damaged).
func tornTail(rest []byte) bool {
	if len(rest) < 8 {
		return true
	}
	zero := true
	for _, c := range rest {
		if c != 0 {
			zero = false
			break
		}
	}
	if zero {
		return true
	}
	n := int64(binary.BigEndian.Uint32(rest))
	if n <= int64(len(rest)-8) {
		return false // the whole frame is there and fails its checksum
	}
	return crc32.Checksum(rest[8:], crcTable) != binary.BigEndian.Uint32(rest[4:])
}

// journalScan is what scanning every segment of a journal found.
type journalScan struct {
	dir  string
	segs []*segScan
}

// scanJournal reads every segment of the journal in dir.
func scanJournal(dir string) (*journalScan, error) {
	paths, err := listSegments(dir)
	if err != nil {
		return nil, fmt.Errorf("list journal: %w", err)
	}
	js := &journalScan{dir: dir}
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read journal segment: %w", err)
		}
		first, _ := strconv.ParseUint(strings.TrimSuffix(filepath.Base(p), ".wal"), 10, 64)
		ss := &segScan{path: p, first: first, size: len(b)}
		ss.frames, ss.offs, ss.bad = scanSegment(b)
		if i == len(paths)-1 && len(ss.bad) > 0 {
			if last := ss.bad[len(ss.bad)-1]; last.end == len(b) && tornTail(b[last.off:]) {
				ss.torn = true
			}
		}
		js.segs = append(js.segs, ss)
	}
	return js, nil
}

// frames returns the intact frames in LSN order, each LSN once (a frame whose number does not
// increase was written again after a failed write or sync, or is a stray copy: skipped).
func (js *journalScan) frames() []*jFrame {
	var out []*jFrame
	var last uint64
	for _, ss := range js.segs {
		for _, f := range ss.frames {
			if f.lsn > last {
				out = append(out, f)
				last = f.lsn
			}
		}
	}
	return out
}

// damage lists the bad ranges that are not a torn tail; applied is the last LSN the spool
// file holds, to tell which damaged bytes held only applied frames.
func (js *journalScan) damage(applied uint64) []Damage {
	var out []Damage
	// Segments are deleted only once both meta pages of the file record their frames
	// (applier.settled): a journal that begins after the file's applied frame means the
	// file lost frames it had applied (a rollback, or an older copy of the file).
	if len(js.segs) > 0 && js.segs[0].first > applied+1 {
		first := js.segs[0].first
		out = append(out, Damage{File: js.segs[0].path, What: fmt.Sprintf(
			"the spool file has applied journal frames up to %d but the journal begins at frame %d: frames %d to %d are in neither (the spool file lost changes it had applied)",
			applied, first, applied+1, first-1), AfterLSN: applied, BeforeLSN: first})
	}
	var prev uint64 // LSN of the last intact frame before the range
	for i, ss := range js.segs {
		if ss.first > 0 && prev < ss.first-1 {
			prev = ss.first - 1 // frames before the segment's first are in earlier segments
		}
		fi := 0 // frames of ss before the current range
		for bi, r := range ss.bad {
			for fi < len(ss.frames) && ss.offs[fi] < r.off {
				prev = max(prev, ss.frames[fi].lsn)
				fi++
			}
			if ss.torn && bi == len(ss.bad)-1 {
				continue
			}
			d := Damage{File: ss.path, Offset: int64(r.off), Len: int64(r.end - r.off), AfterLSN: prev}
			switch {
			case r.end == ss.size && i < len(js.segs)-1:
				d.What = "the segment ends in a frame that fails its checksum"
			case r.end == ss.size:
				d.What = "frames that fail their checksum at the end of the newest segment"
			default:
				d.What = "frames that fail their checksum"
			}
			d.BeforeLSN = js.nextLSN(i, fi)
			d.Applied = d.BeforeLSN != 0 && d.BeforeLSN-1 <= applied
			out = append(out, d)
		}
		for _, f := range ss.frames {
			prev = max(prev, f.lsn)
		}
		// The next segment is named after the frame that follows this one's last durable
		// frame: a larger name means frames are missing (a segment cut at a frame boundary,
		// or deleted).
		if i+1 < len(js.segs) {
			if next := js.segs[i+1].first; next > prev+1 {
				out = append(out, Damage{File: ss.path, Offset: int64(ss.size), What: fmt.Sprintf(
					"the segment ends at frame %d but the next one starts at %d: frames are missing", prev, next),
					AfterLSN: prev, BeforeLSN: next, Applied: next-1 <= applied})
			}
		}
	}
	return out
}

// nextLSN is the LSN of the first intact frame at or after frame fi of segment i, 0 if none.
func (js *journalScan) nextLSN(i, fi int) uint64 {
	for ; i < len(js.segs); i, fi = i+1, 0 {
		if fi < len(js.segs[i].frames) {
			return js.segs[i].frames[fi].lsn
		}
		if i+1 < len(js.segs) && js.segs[i+1].first > 0 {
			return js.segs[i+1].first
		}
	}
	return 0
}
