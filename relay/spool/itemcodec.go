package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Format 4 stores an item's value with a checksum and the sinks it was accepted for:
//
//	crc    uint32, big-endian: CRC-32C of the item's sequence number (8 bytes, big-endian)
//	       followed by everything after the crc
//	sinks  uvarint count, then each name as uvarint length + bytes
//	data   the rest
//
// The sequence number is in the checksum so that an item read under another key (a damaged
// key or page) does not check out. The sinks let Recover rebuild deliveries whose records
// were damaged (deliveries already done are then made again: at least once).

// errItemChecksum marks an item value that does not check out.
var errItemChecksum = errors.New("item fails its checksum")

// encItem encodes an item's value.
func encItem(seq uint64, sinks []string, data []byte) []byte {
	return appendItem(make([]byte, 0, itemLen(sinks, data)), seq, sinks, data)
}

// itemLen is the most bytes appendItem appends for an item.
func itemLen(sinks []string, data []byte) int {
	n := 4 + binary.MaxVarintLen64 + len(data)
	for _, s := range sinks {
		n += binary.MaxVarintLen64 + len(s)
	}
	return n
}

// appendItem appends the encoding of an item's value to dst.
func appendItem(dst []byte, seq uint64, sinks []string, data []byte) []byte {
	start := len(dst)
	b := append(dst, 0, 0, 0, 0)
	b = binary.AppendUvarint(b, uint64(len(sinks)))
	for _, s := range sinks {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	b = append(b, data...)
	binary.BigEndian.PutUint32(b[start:], itemSum(seq, b[start+4:]))
	return b
}

// itemSum is the checksum of item seq whose value after the crc is rest.
func itemSum(seq uint64, rest []byte) uint32 {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return crc32.Update(crc32.Checksum(k[:], crcTable), crcTable, rest)
}

// decItem checks and decodes item seq's value; data aliases v.
func decItem(seq uint64, v []byte) (sinks []string, data []byte, err error) {
	if len(v) < 5 || binary.BigEndian.Uint32(v) != itemSum(seq, v[4:]) {
		return nil, nil, errItemChecksum
	}
	d := decoder{b: v[4:]}
	n := d.uvarint()
	if n > uint64(len(v)) {
		return nil, nil, errItemChecksum
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		sinks = append(sinks, string(d.bytes()))
	}
	if d.err != nil {
		return nil, nil, errItemChecksum
	}
	return sinks, v[4+d.off:], nil
}

// checkItem reports whether v is a valid format-4 value of item seq, without decoding it.
func checkItem(seq uint64, v []byte) bool {
	return len(v) >= 5 && binary.BigEndian.Uint32(v) == itemSum(seq, v[4:])
}

// encLSN encodes the meta bucket's last applied journal frame with a checksum of its own
// (format 4), so that a damaged value is not taken for a later frame, skipping frames.
func encLSN(lsn uint64) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 12), lsn)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// decLSN decodes a value of encLSN, or format 3's bare 8 bytes; ok is false for anything
// else, or a checksum that fails.
func decLSN(v []byte) (uint64, bool) {
	switch len(v) {
	case 0:
		return 0, true
	case 8:
		return binary.BigEndian.Uint64(v), true
	case 12:
		return binary.BigEndian.Uint64(v), crc32.Checksum(v[:8], crcTable) == binary.BigEndian.Uint32(v[8:])
	}
	return 0, false
}
