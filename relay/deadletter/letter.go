package deadletter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Version is the version of the dead-letter file format this package writes and reads. Files
// with a newer version are reported as ErrCorrupt rather than misread.
const Version = 1

// maxLetterBytes bounds how much of one file is read, so a stray huge file dropped into the
// directory cannot exhaust memory. Letters hold one change, itself bounded by the server's
// max_body_bytes, so real letters are far smaller.
const maxLetterBytes = 64 << 20

// maxIDLen keeps "<id>.json" and the temporary name ".tmp-<id>.json-<random>" under the usual
// 255-byte file name limit.
const maxIDLen = 200

// maxSinkIDLen bounds the sink part of a generated id ("<sink>-<20 digits>").
const maxSinkIDLen = maxIDLen - 21 - 9 // room for "-"+20 digits and "."+8 hex digits

// ErrCorrupt is wrapped by errors about files that cannot be read as dead letters of this
// Version: malformed JSON, a missing version, sink or change, or a newer format.
var ErrCorrupt = errors.New("corrupt dead letter")

// ErrInvalidID is wrapped by errors about ids that cannot name a dead-letter file: empty, too
// long, starting with a dot, or holding anything but ASCII letters, digits, '.', '-' and '_'
// (so never a path separator or "..").
var ErrInvalidID = errors.New("invalid dead letter id")

// ErrNotRegular is wrapped by errors about entries named like letters that are not regular
// files inside the directory: named pipes, devices, sockets, folders, and symbolic links that
// lead out of the directory, to nothing or to one of those. They are skipped, never read.
var ErrNotRegular = errors.New("not a regular file")

// Attempt is one failed delivery attempt.
type Attempt struct {
	// At is when the attempt started.
	At time.Time `json:"at"`
	// Status is the HTTP status of the response, 0 when none arrived.
	Status int `json:"status,omitempty"`
	// Error describes the failure. The caller redacts it; Write stores it as given.
	Error string `json:"error"`
}

// Letter is one abandoned delivery of one change to one sink. Its JSON form is the file
// format documented in the package comment.
type Letter struct {
	// Version is the file format version; Write sets it to Version when zero.
	Version int `json:"version"`
	// ID names the file (ID + ".json"). Write sets it to "<sink>-<seq, 20 digits>" when empty.
	ID string `json:"id"`
	// Sink is the name of the sink the change could not be delivered to.
	Sink string `json:"sink"`
	// Seq is the spool sequence number of the delivery.
	Seq uint64 `json:"seq"`
	// ChangeID is the change's identity (relay.Event.ID, its dedup key).
	ChangeID string `json:"change_id"`
	// Rules names the rules that routed the change to the sink.
	Rules []string `json:"rules,omitempty"`
	// Reason says why delivery stopped, with the last error: "permanent: …",
	// "giving up after 10 attempt(s): …", "max age 24h0m0s exceeded after 7 attempt(s): …",
	// "permanent: sink "x" is not configured: …".
	Reason string `json:"reason"`
	// FirstAt is when the change was accepted.
	FirstAt time.Time `json:"first_at"`
	// DeadAt is when the delivery was abandoned; Write sets it to now when zero.
	DeadAt time.Time `json:"dead_at"`
	// Attempts lists the failed attempts, oldest first: the first one and the 19 most recent
	// when there were more than 20.
	Attempts []Attempt `json:"attempts"`
	// Change is the change envelope as JSON. In the file it is indented with the rest of the
	// letter; letters read back hold it compacted, so compact JSON round-trips byte for byte.
	Change json.RawMessage `json:"change"`
	// Signature is Meta's X-Hub-Signature-256 header, kept only for raw-body changes so a
	// replay can forward it. It is a MAC of the body, not the app secret.
	Signature string `json:"signature,omitempty"`
	// Body is, for raw-body changes only, the notification exactly as Meta sent it, as a JSON
	// string: Change shows it readably, but indentation rewrites its bytes, and Meta's
	// signature covers the exact bytes, so a replay forwards Body.
	Body string `json:"body,omitempty"`
	// OrderKey is the change's ordering key for the sink (the sink's order_by), "" when the
	// sink does not order its changes. Dead-lettering the change released its key.
	OrderKey string `json:"order_key,omitempty"`
	// DeliveredAfter lists the ids of the changes of OrderKey that were waiting behind this one
	// when it was dead-lettered, oldest first (at most MaxDeliveredAfter): released by its
	// dead-lettering, they are delivered after it, so a replay reaches the sink after them.
	DeliveredAfter []string `json:"delivered_after,omitempty"`
	// DeliveredAfterMore is set when more changes than DeliveredAfter lists were waiting.
	DeliveredAfterMore bool `json:"delivered_after_more,omitempty"`
}

// MaxDeliveredAfter bounds Letter.DeliveredAfter.
const MaxDeliveredAfter = 100

// generateID returns the default id of a delivery of seq to sink: the sink's id prefix, a dash
// and seq as 20 zero-padded digits, so ids sort by sequence within a sink.
func generateID(sink string, seq uint64) string {
	return fmt.Sprintf("%s-%020d", sinkPrefix(sink), seq)
}

// sinkPrefix is the part of generated ids that names the sink: the name itself when it is made
// of id characters only, else the sanitized name and a short hash of the real one, so two sinks
// whose names sanitize alike ("crm v2", "crm_v2") never share ids.
func sinkPrefix(sink string) string {
	clean := sanitizeSink(sink)
	if clean == sink {
		return clean
	}
	h := fnv.New32a()
	h.Write([]byte(sink))
	return fmt.Sprintf("%s.%08x", clean, h.Sum32())
}

// sanitizeSink maps a sink name to the characters allowed in an id: ASCII letters, digits,
// '-', '_' and '.' (not first) are kept, every other byte becomes '_'. Empty names become "_".
func sanitizeSink(sink string) string {
	if sink == "" {
		return "_"
	}
	if len(sink) > maxSinkIDLen {
		sink = sink[:maxSinkIDLen]
	}
	b := []byte(sink)
	for i, c := range b {
		if !idByte(c) || (i == 0 && c == '.') {
			b[i] = '_'
		}
	}
	return string(b)
}

func idByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.'
}

// checkID returns an error wrapping ErrInvalidID unless id can safely name a file in the
// directory.
func checkID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case len(id) > maxIDLen:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidID, maxIDLen)
	case id[0] == '.':
		return fmt.Errorf("%w %q: starts with a dot", ErrInvalidID, id)
	}
	for i := 0; i < len(id); i++ {
		if !idByte(id[i]) {
			return fmt.Errorf("%w %q: only ASCII letters, digits, '.', '-' and '_' are allowed", ErrInvalidID, id)
		}
	}
	return nil
}

// encode returns the file contents of l: indented JSON with a trailing newline. Times are
// written in UTC and HTML characters are not escaped, so the change stays as readable, and as
// close to the bytes received, as JSON allows.
func encode(l *Letter) ([]byte, error) {
	c := *l
	c.FirstAt = c.FirstAt.UTC()
	c.DeadAt = c.DeadAt.UTC()
	c.Attempts = make([]Attempt, len(l.Attempts))
	for i, a := range l.Attempts {
		a.At = a.At.UTC()
		c.Attempts[i] = a
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decode parses the contents of the file named id+".json". The file name is authoritative:
// the returned letter's ID is id whatever the file says, so a copied or renamed letter is
// handled by its new name.
func decode(data []byte, id string) (*Letter, error) {
	l := new(Letter)
	if err := json.Unmarshal(data, l); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	switch {
	case l.Version == 0:
		return nil, fmt.Errorf("%w: no version", ErrCorrupt)
	case l.Version < 0 || l.Version > Version:
		return nil, fmt.Errorf("%w: version %d, this build reads version %d", ErrCorrupt, l.Version, Version)
	case l.Sink == "":
		return nil, fmt.Errorf("%w: no sink", ErrCorrupt)
	case len(l.Change) == 0 || string(l.Change) == "null":
		return nil, fmt.Errorf("%w: no change", ErrCorrupt)
	}
	var change bytes.Buffer
	if err := json.Compact(&change, l.Change); err != nil {
		return nil, fmt.Errorf("%w: change: %w", ErrCorrupt, err)
	}
	l.Change = change.Bytes()
	l.ID = id
	return l, nil
}

// readLetter reads and decodes the file name (which is id+".json") in dir. It opens only a
// regular file inside dir: a named pipe, device, socket or folder, or a symbolic link leading
// out of dir or to nothing, is reported as ErrNotRegular without being read (a named pipe
// would block the reader for ever, /dev/zero never end), and so is, as ErrCorrupt, a file over
// maxLetterBytes. The file is opened non-blocking, and checked again once open, so one swapped
// in meanwhile cannot block the reader either. Errors name the file and keep fs.ErrNotExist
// visible to errors.Is.
func readLetter(dir, name, id string) (*Letter, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("read dead letter: %w", err)
	}
	defer root.Close()
	return readLetterIn(root, dir, name, id)
}

// readLetterIn is readLetter in root, the directory dir already opened.
func readLetterIn(root *os.Root, dir, name, id string) (*Letter, error) {
	path := filepath.Join(dir, name)
	fi, err := root.Lstat(name)
	if err != nil {
		return nil, fmt.Errorf("read dead letter: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if fi, err = root.Stat(name); err != nil {
			return nil, fmt.Errorf("read dead letter %s: %w: symbolic link leading out of the directory or to nothing, skipped", path, ErrNotRegular)
		}
	}
	if err := checkRegular(fi); err != nil {
		return nil, fmt.Errorf("read dead letter %s: %w", path, err)
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read dead letter: %w", err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("read dead letter %s: %w", path, err)
	}
	if err := checkRegular(fi); err != nil {
		return nil, fmt.Errorf("read dead letter %s: %w", path, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxLetterBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read dead letter %s: %w", path, err)
	}
	if len(data) > maxLetterBytes {
		return nil, fmt.Errorf("read dead letter %s: %w: larger than %d bytes, skipped", path, ErrCorrupt, maxLetterBytes)
	}
	l, err := decode(data, id)
	if err != nil {
		return nil, fmt.Errorf("read dead letter %s: %w", path, err)
	}
	return l, nil
}

// checkRegular returns an error unless fi is a regular file of at most maxLetterBytes.
func checkRegular(fi fs.FileInfo) error {
	m := fi.Mode()
	if !m.IsRegular() {
		return fmt.Errorf("%w: %s, skipped", ErrNotRegular, describeType(m))
	}
	if fi.Size() > maxLetterBytes {
		return fmt.Errorf("%w: %d bytes, larger than %d, skipped", ErrCorrupt, fi.Size(), maxLetterBytes)
	}
	return nil
}

// describeType names the kind of a file that is not a regular one.
func describeType(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file (" + m.Type().String() + ")"
}

// letterID returns the id of a directory entry name and whether the entry should be looked at
// at all: dot files (temporary files, editor swap files) and names not ending in ".json" are
// not letters.
func letterID(name string) (string, bool) {
	if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") {
		return "", false
	}
	return strings.TrimSuffix(name, ".json"), true
}

// GenerateID returns the id Write gives a letter of seq to sink when its ID is empty:
// "<sink>-<seq, 20 digits>". Other dead-letter stores (the Postgres engine's) use it so ids
// read the same wherever letters live.
func GenerateID(sink string, seq uint64) string { return generateID(sink, seq) }
