package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
)

// codecVersion is the first byte of every spooled event. Bump it when the layout changes and
// keep decoding the old ones: spools outlive binaries. Version 2 added Entry.TimeJSON after
// Entry.Time and RuleErrors after Rules; version 3 added Order (sink, key pairs) at the end.
const codecVersion = 3

// errCodec is returned for spool records that cannot be decoded.
var errCodec = errors.New("corrupt spooled event")

// AppendBinary appends the spool encoding of ev to dst: a version byte, then each field as a
// uvarint length and its bytes (strings, value), varints for numbers. It is several times
// faster than JSON and keeps Value byte for byte.
func AppendBinary(dst []byte, ev *Event) []byte {
	dst = append(dst, codecVersion)
	dst = appendString(dst, ev.ID)
	dst = appendString(dst, ev.App)
	dst = appendString(dst, ev.Object)
	dst = appendString(dst, ev.Entry.ID)
	dst = appendString(dst, ev.Entry.UID)
	dst = binary.AppendVarint(dst, ev.Entry.Time)
	dst = appendString(dst, ev.Entry.TimeJSON)
	dst = appendString(dst, ev.Field)
	dst = appendString(dst, ev.Verb)
	dst = append(dst, byte(ev.Source))
	dst = binary.AppendUvarint(dst, uint64(len(ev.Value)))
	dst = append(dst, ev.Value...)
	dst = appendString(dst, ev.Signature)
	dst = binary.AppendVarint(dst, ev.ReceivedAt.UnixNano())
	dst = binary.AppendUvarint(dst, uint64(len(ev.Rules)))
	for _, r := range ev.Rules {
		dst = appendString(dst, r)
	}
	dst = binary.AppendUvarint(dst, uint64(len(ev.RuleErrors)))
	for _, r := range ev.RuleErrors {
		dst = appendString(dst, r.Rule)
		dst = appendString(dst, r.Class)
	}
	dst = binary.AppendUvarint(dst, uint64(len(ev.Order)))
	for _, o := range ev.Order {
		dst = appendString(dst, o.Sink)
		dst = appendString(dst, o.Key)
	}
	return dst
}

// binarySizeMax is an upper bound of len(AppendBinary(nil, ev)): the bytes of its strings
// and value, and the most every length, number and count can take as varints. A buffer of
// that capacity is encoded into without growing.
func binarySizeMax(ev *Event) int {
	const v = binary.MaxVarintLen64
	n := 2 + len(ev.ID) + len(ev.App) + len(ev.Object) + len(ev.Entry.ID) + len(ev.Entry.UID) +
		len(ev.Entry.TimeJSON) + len(ev.Field) + len(ev.Verb) + len(ev.Value) + len(ev.Signature) + 15*v
	for _, r := range ev.Rules {
		n += v + len(r)
	}
	for _, r := range ev.RuleErrors {
		n += 2*v + len(r.Rule) + len(r.Class)
	}
	for _, o := range ev.Order {
		n += 2*v + len(o.Sink) + len(o.Key)
	}
	return n
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// UnmarshalBinary decodes a spooled event written by AppendBinary, of this version or an
// earlier one. Value aliases data. The fixed string fields share one allocation (they are read
// per delivery attempt).
func UnmarshalBinary(data []byte, ev *Event) error {
	if len(data) == 0 || data[0] < 1 || data[0] > codecVersion {
		return fmt.Errorf("decode spooled event: version %v: %w", firstByte(data), errCodec)
	}
	version := data[0]
	d := eventReader{b: data[1:]}
	var f [numFixed][]byte
	f[fID] = d.bytes()
	f[fApp] = d.bytes()
	f[fObject] = d.bytes()
	f[fEntryID] = d.bytes()
	f[fEntryUID] = d.bytes()
	ev.Entry.Time = d.varint()
	f[fTimeJSON] = nil
	if version >= 2 {
		f[fTimeJSON] = d.bytes()
	}
	f[fField] = d.bytes()
	f[fVerb] = d.bytes()
	ev.Source = Source(d.byte())
	if v := d.bytes(); len(v) > 0 {
		ev.Value = v
	} else {
		ev.Value = nil
	}
	f[fSignature] = d.bytes()
	var str [numFixed]string
	joinStrings(&str, &f)
	ev.ID, ev.App, ev.Object = str[fID], str[fApp], str[fObject]
	ev.Entry.ID, ev.Entry.UID, ev.Entry.TimeJSON = str[fEntryID], str[fEntryUID], str[fTimeJSON]
	ev.Field, ev.Verb, ev.Signature = str[fField], str[fVerb], str[fSignature]
	ev.ReceivedAt = time.Unix(0, d.varint()).UTC()
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = true
	} else {
		ev.Rules = nil
		for i := uint64(0); i < n && !d.err; i++ {
			ev.Rules = append(ev.Rules, d.str())
		}
	}
	ev.RuleErrors = nil
	if version >= 2 {
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			d.err = true
		}
		for i := uint64(0); i < n && !d.err; i++ {
			ev.RuleErrors = append(ev.RuleErrors, RuleError{Rule: d.str(), Class: d.str()})
		}
	}
	ev.Order = nil
	if version >= 3 {
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			d.err = true
		}
		for i := uint64(0); i < n && !d.err; i++ {
			ev.Order = append(ev.Order, OrderKey{Sink: d.str(), Key: d.str()})
		}
	}
	if d.err {
		return fmt.Errorf("decode spooled event: %w", errCodec)
	}
	return nil
}

// The fixed string fields of a spooled event, as UnmarshalBinary gathers them.
const (
	fID = iota
	fApp
	fObject
	fEntryID
	fEntryUID
	fTimeJSON
	fField
	fVerb
	fSignature
	numFixed
)

// joinStrings sets out[i] to string(in[i]) for every i, with one allocation for all of them.
func joinStrings(out *[numFixed]string, in *[numFixed][]byte) {
	n := 0
	for _, b := range in {
		n += len(b)
	}
	if n == 0 {
		return
	}
	var sb strings.Builder
	sb.Grow(n)
	for _, b := range in {
		sb.Write(b)
	}
	all := sb.String()
	off := 0
	for i, b := range in {
		out[i] = all[off : off+len(b)]
		off += len(b)
	}
}

func firstByte(b []byte) any {
	if len(b) == 0 {
		return "none"
	}
	return b[0]
}

// eventReader reads the fields AppendBinary wrote; err is set, and every read returns zero,
// once the input runs short or a length is out of range.
type eventReader struct {
	b   []byte
	err bool
}

func (d *eventReader) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		d.b = nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *eventReader) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = true
		d.b = nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *eventReader) byte() byte {
	if len(d.b) == 0 {
		d.err = true
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *eventReader) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = true
		d.b = nil
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *eventReader) str() string { return string(d.bytes()) }
