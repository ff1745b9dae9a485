package dedupindex

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// bloomPrefix starts the keys of a run's stored filter: 'b' + 4-byte index -> 64 KiB of it.
const bloomPrefix = 'b'

// bloom is a blocked Bloom filter over key hashes: each key sets 7 bits of one 512-bit block
// (one cache line), chosen from the hash's own bits, which SHA-256 makes uniform. At 10 bits a
// key it answers "maybe" for about 1 % of the keys it does not hold.
type bloom struct {
	words  []uint64
	blocks uint64
}

func newBloom(keys int) *bloom {
	blocks := max(1, (keys*10+511)/512)
	return &bloom{words: make([]uint64, blocks*8), blocks: uint64(blocks)}
}

func (f *bloom) add(h []byte) {
	base := (binary.BigEndian.Uint64(h[:8]) % f.blocks) * 8
	bits := binary.BigEndian.Uint64(h[8:16])
	for i := range 7 {
		bit := (bits >> (9 * i)) & 511
		f.words[base+bit/64] |= 1 << (bit % 64)
	}
}

func (f *bloom) has(h []byte) bool {
	base := (binary.BigEndian.Uint64(h[:8]) % f.blocks) * 8
	bits := binary.BigEndian.Uint64(h[8:16])
	for i := range 7 {
		bit := (bits >> (9 * i)) & 511
		if f.words[base+bit/64]&(1<<(bit%64)) == 0 {
			return false
		}
	}
	return true
}

// bloomValue is the size of one stored piece of a filter.
const bloomValue = 64 << 10

// write stores f in run bucket b, in pieces of bloomValue bytes.
func (f *bloom) write(b *bolt.Bucket) error {
	buf := make([]byte, 0, len(f.words)*8)
	for _, w := range f.words {
		buf = binary.LittleEndian.AppendUint64(buf, w)
	}
	for i, off := 0, 0; off < len(buf); i, off = i+1, off+bloomValue {
		key := binary.BigEndian.AppendUint32([]byte{bloomPrefix}, uint32(i))
		if err := b.Put(key, buf[off:min(off+bloomValue, len(buf))]); err != nil {
			return err
		}
	}
	return nil
}

// readBloom loads the filter stored in run bucket b, sized as it was written (the sweep takes
// records out of a final run and leaves its filter as it is); false if b holds none.
func readBloom(b *bolt.Bucket) (*bloom, bool) {
	c := b.Cursor()
	size := 0
	for k, v := c.Seek([]byte{bloomPrefix}); k != nil && k[0] == bloomPrefix; k, v = c.Next() {
		size += len(v)
	}
	if size == 0 || size%64 != 0 {
		return nil, false
	}
	f := &bloom{words: make([]uint64, size/8), blocks: uint64(size / 64)}
	w := 0
	for k, v := c.Seek([]byte{bloomPrefix}); k != nil && k[0] == bloomPrefix; k, v = c.Next() {
		if len(v)%8 != 0 {
			return nil, false
		}
		for i := 0; i < len(v); i += 8 {
			f.words[w] = binary.LittleEndian.Uint64(v[i:])
			w++
		}
	}
	return f, true
}
