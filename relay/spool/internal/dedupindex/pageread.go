package dedupindex

import (
	"bytes"
	"encoding/binary"
	"io"

	bolt "go.etcd.io/bbolt"
)

// A lookup of the final level reads one partition's tree: a branch page or two and one or two
// leaves (chunks are keyed by their last hash, so the chunk that may hold a hash is usually the
// first of the next leaf). Read through bbolt's map, each page of a large index is a page fault
// that maps the 64 KiB around it, and the spool's bound on resident file pages then has to
// release the whole map every few hundred lookups, after which every page faults again: on a
// 2-vCPU VM a fault and its share of the releases cost 5–10 µs, a pread of the page from the
// page cache about 2 µs, and it leaves nothing resident. So a read-only View reads partition
// pages from the file (SetPageFile) and walks them itself, as bbolt's cursor would; anything it
// does not recognise sends the lookup back to the cursor.
//
// The layout read is bbolt's on-disk page, unchanged since its first release (a file of 2014
// opens today): a 16-byte header {id uint64, flags uint16, count uint16, overflow uint32} in
// the machine's byte order, then count elements of 16 bytes, {pos, ksize uint32, pgid uint64}
// in a branch page and {flags, pos, ksize, vsize uint32} in a leaf, pos counted from the
// element itself. A page a read transaction reaches from its root is neither freed nor reused
// while the transaction is open, and bbolt writes a commit's pages before the meta page that
// makes them reachable, so the bytes pread returns are those the map would show.

const (
	pageHeaderSize  = 16
	pageElementSize = 16
	branchPageFlag  = 0x01
	leafPageFlag    = 0x02
	bucketLeafFlag  = 0x01

	// maxPageWalk bounds the pages one lookup reads before it gives up and asks the cursor:
	// a tree is a few levels deep, and a leaf of hashes never needs a second to its right
	// unless it is empty, which bbolt's rebalance does not leave in a committed tree.
	maxPageWalk = 16
	// maxPageBytes bounds one page with its overflow: a partition's pages are single pages.
	maxPageBytes = 1 << 20
)

// pageFile is where a read-only View reads partition pages from (SetPageFile).
type pageFile struct {
	f        io.ReaderAt
	pageSize int
}

// SetPageFile has lookups in read-only transactions read the final level's pages from f, the
// index's bbolt file with pages of pageSize bytes, instead of through bbolt's map (pageread.go).
// Call it before the index is shared between goroutines; f must stay open while the index is
// used. Without it, or in a write transaction, lookups use bbolt's cursor.
func (d *Index) SetPageFile(f io.ReaderAt, pageSize int) {
	if f == nil || pageSize < pageHeaderSize+pageElementSize {
		d.pages = nil
		return
	}
	d.pages = &pageFile{f: f, pageSize: pageSize}
}

// pageReader reads one transaction's pages for the lookups of one View, one buffer per level
// of the walk. It is not safe for concurrent use, as a View is not.
type pageReader struct {
	pf    *pageFile
	limit int64 // the transaction's file size: no page of its tree lies beyond
	bufs  [][]byte
	reads int // pages read by the lookup in progress

	paged, cursor int // seeks answered from the file's pages, and sent back to the cursor
}

// page reads page id into the buffer of walk level depth and returns it with its flags and
// count, ok false if it is not a sound branch or leaf page with id in its header.
func (r *pageReader) page(id uint64, depth int) (p []byte, flags uint16, count int, ok bool) {
	ps := int64(r.pf.pageSize)
	if id < 2 || id > uint64(r.limit/ps) || r.reads >= maxPageWalk {
		return nil, 0, 0, false
	}
	r.reads++
	for len(r.bufs) <= depth {
		r.bufs = append(r.bufs, make([]byte, r.pf.pageSize))
	}
	off := int64(id) * ps
	if off+ps > r.limit {
		return nil, 0, 0, false
	}
	buf := r.bufs[depth][:ps]
	if n, err := r.pf.f.ReadAt(buf, off); n != len(buf) {
		_ = err
		return nil, 0, 0, false
	}
	ne := binary.NativeEndian
	if ne.Uint64(buf) != id {
		return nil, 0, 0, false
	}
	flags, count = ne.Uint16(buf[8:]), int(ne.Uint16(buf[10:]))
	if over := int64(ne.Uint32(buf[12:])); over > 0 {
		n := (over + 1) * ps
		if n > maxPageBytes || off+n > r.limit {
			return nil, 0, 0, false
		}
		if int64(cap(r.bufs[depth])) < n {
			r.bufs[depth] = make([]byte, n)
			copy(r.bufs[depth], buf)
		}
		buf = r.bufs[depth][:n]
		if m, _ := r.pf.f.ReadAt(buf[ps:], off+ps); int64(m) != n-ps {
			return nil, 0, 0, false
		}
	}
	if (flags != branchPageFlag && flags != leafPageFlag) || pageHeaderSize+count*pageElementSize > len(buf) {
		return nil, 0, 0, false
	}
	return buf, flags, count, true
}

// element returns element i's key and its second field (a branch's child page, a leaf's
// value), ok false if they do not lie inside p.
func element(p []byte, flags uint16, i int) (key []byte, child uint64, val []byte, leafFlags uint32, ok bool) {
	ne := binary.NativeEndian
	at := pageHeaderSize + i*pageElementSize
	e := p[at : at+pageElementSize]
	if flags == branchPageFlag {
		pos, ksize := int64(ne.Uint32(e)), int64(ne.Uint32(e[4:]))
		k0 := int64(at) + pos
		if k0 > int64(len(p)) || ksize > int64(len(p))-k0 {
			return nil, 0, nil, 0, false
		}
		return p[k0 : k0+ksize], ne.Uint64(e[8:]), nil, 0, true
	}
	lf, pos, ksize, vsize := ne.Uint32(e), int64(ne.Uint32(e[4:])), int64(ne.Uint32(e[8:])), int64(ne.Uint32(e[12:]))
	k0 := int64(at) + pos
	if k0 > int64(len(p)) || ksize > int64(len(p))-k0 || vsize > int64(len(p))-k0-ksize {
		return nil, 0, nil, 0, false
	}
	return p[k0 : k0+ksize], 0, p[k0+ksize : k0+ksize+vsize], lf, true
}

// seek returns the first key at or after target in the tree under page root and its value
// (nil for a nested bucket), as bbolt's Cursor.Seek would. found is false when the tree holds
// no such key; ok is false when the walk could not be made (then ask the cursor).
func (r *pageReader) seek(root uint64, target []byte) (key, val []byte, found, ok bool) {
	r.reads = 0
	return r.seekIn(root, target, 0)
}

func (r *pageReader) seekIn(id uint64, target []byte, depth int) (key, val []byte, found, ok bool) {
	p, flags, count, ok := r.page(id, depth)
	if !ok {
		return nil, nil, false, false
	}
	if flags == leafPageFlag {
		// The first element whose key is at or after target.
		lo, hi := 0, count
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			k, _, _, _, ok := element(p, flags, m)
			if !ok {
				return nil, nil, false, false
			}
			if bytes.Compare(k, target) < 0 {
				lo = m + 1
			} else {
				hi = m
			}
		}
		if lo == count {
			return nil, nil, false, true
		}
		k, _, v, lf, ok := element(p, flags, lo)
		if !ok {
			return nil, nil, false, false
		}
		if lf&bucketLeafFlag != 0 {
			v = nil
		}
		return k, v, true, true
	}
	if count == 0 {
		return nil, nil, false, false
	}
	// The child whose first key is the last at or before target (the first child if none is),
	// as bbolt's search descends; if its subtree holds nothing at or after target, the answer
	// is the first key of the next child's.
	lo, hi := 0, count
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		k, _, _, _, ok := element(p, flags, m)
		if !ok {
			return nil, nil, false, false
		}
		if bytes.Compare(k, target) <= 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	for i := max(lo-1, 0); i < count; i++ {
		_, child, _, _, ok := element(p, flags, i)
		if !ok {
			return nil, nil, false, false
		}
		key, val, found, ok := r.seekIn(child, target, depth+1)
		if !ok || found {
			return key, val, found, ok
		}
	}
	return nil, nil, false, true
}

// seekBucket is b.Cursor().Seek(target) for a partition bucket of the View's transaction:
// from the file's pages where it can (r not nil and b not inline), else by the cursor.
func (r *pageReader) seekBucket(b *bolt.Bucket, target []byte) (key, val []byte) {
	if root := uint64(b.Root()); r != nil && root != 0 {
		key, val, found, ok := r.seek(root, target)
		if ok {
			r.paged++
			if !found {
				return nil, nil
			}
			return key, val
		}
		r.cursor++
	}
	return b.Cursor().Seek(target)
}
