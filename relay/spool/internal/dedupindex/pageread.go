package dedupindex

import (
	"bytes"
	"encoding/binary"
	"io"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// A lookup of the final level reads one partition's tree: a branch page or two and one or two
// leaves (chunks are keyed by their last hash, so the chunk that may hold a hash is usually the
// first of the next leaf); a lookup that the filter of a final run (or of a level-2 run, which
// becomes one: their chunks are split at partition bounds) lets through reads that run's tree
// the same way (its chunks are keyed by their first hash: the last chunk at or before the
// hash). Read through bbolt's map, each page of a large index is a page fault that maps the
// 64 KiB around it, and the spool's bound on resident file pages then has to release the whole
// map every few hundred lookups, after which every page faults again: on a 2-vCPU VM a fault
// and its share of the releases cost 5–10 µs, a pread of the page from the page cache about
// 2 µs, and it leaves nothing resident. So a read-only View reads the pages of partitions and
// final runs from the file (SetPageFile) and walks them itself, as bbolt's cursor would;
// anything it does not recognise sends the lookup back to the cursor. The branch pages, few and
// read by every lookup of their tree, are kept in memory until the tree changes (branchCache),
// and a leaf is read with its overflow page in one pread: a lookup makes one or two.
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

	// maxPageWalk bounds the pages one lookup looks at before it gives up and asks the cursor:
	// a tree is a few levels deep, and a leaf of hashes never needs a second to its right
	// unless it is empty, which bbolt's rebalance does not leave in a committed tree.
	maxPageWalk = 16
	// maxPageBytes bounds one page with its overflow: a partition's leaves are two pages.
	maxPageBytes = 1 << 20
	// readSpan is how many pages a read takes from the page asked for (page).
	readSpan = 2
)

// pageFile is where a read-only View reads partition pages from (SetPageFile), with the
// branch pages read so far.
type pageFile struct {
	f        io.ReaderAt
	pageSize int
	branches branchCache
	wins     sync.Pool // *[]pageWindow of released Views
}

// branchCache holds copies of the branch pages of the partitions (a few thousand at 100M keys,
// each read by every lookup of its partition) and of the final runs, so that a lookup reads
// only its leaves. Its owners are the Parts partitions and, as one more, all the runs
// (runsOwner).
//
// A page's content is fixed while a transaction that reaches it is open, but bbolt reuses the
// ids of freed pages. A partition's pages are freed only by a transaction that changes that
// partition (writePart and the deletes of rewritePart and expireParts, which all call
// partsChanged before they commit), and a run's only by one that writes to or deletes a run
// (writeRun, rewritePart's takeRange, merge marking runs final, dropRun: runsChanged), so a
// copy of one of an owner's pages holds for every transaction that sees the owner as it was
// when the copy was read.
// partsChanged drops the owner's copies and sets its since to the changing transaction's id,
// which is above that of every transaction open then and at most that of every one that sees
// the change; a copy is used or stored only by a transaction at least since. A transaction
// that rolls back leaves since ahead of the file, which only keeps the owner's pages out until
// the next commit has its id. The runs change together, at every flush of L0 and sweep step,
// so they are one owner: the copies of the few tens of final runs are read again after each.
type branchCache struct {
	mu     sync.Mutex
	owners [Parts + 1]partPages // the partitions, then runsOwner
	bytes  int                  // held for all owners, at most maxBranchBytes
}

// runsOwner is the branchCache owner of the runs' pages.
const runsOwner = Parts

// partPages is what branchCache holds of one owner.
type partPages struct {
	since uint64            // the id of the last transaction that changed the owner's trees
	pages map[uint64][]byte // page id -> copy; never changed once stored
	bytes int
}

// maxBranchBytes bounds the branch pages held: the ~4100 pages of 4 KiB of 100M keys' 1024
// partitions (a root and three below it each), of which the part their elements use is held
// (~10 MiB), and the final runs' (~1 MiB).
const maxBranchBytes = 24 << 20

// partsChanged is called by write transaction tx as it changes partition p (or, as
// runsChanged, any run), before it commits.
func (d *Index) partsChanged(tx *bolt.Tx, p int) {
	if d.pages == nil || p < 0 || p > runsOwner {
		return
	}
	c := &d.pages.branches
	c.mu.Lock()
	defer c.mu.Unlock()
	pp := &c.owners[p]
	pp.since = uint64(tx.ID())
	clear(pp.pages)
	c.bytes -= pp.bytes
	pp.bytes = 0
}

// runsChanged is called by write transaction tx as it writes to or deletes a run, before it
// commits.
func (d *Index) runsChanged(tx *bolt.Tx) { d.partsChanged(tx, runsOwner) }

// get returns the copy of owner p's page id held for read transaction txid, nil if none.
func (c *branchCache) get(p int, txid, id uint64) []byte {
	if p < 0 || p > runsOwner {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pp := &c.owners[p]
	if txid < pp.since {
		return nil
	}
	return pp.pages[id]
}

// put stores a copy of the part of branch page pg that its count elements and their keys use
// (a partition of a few chunks has a branch page of a few elements: ~100 bytes, not 4 KiB),
// read as owner p's page id by read transaction txid.
func (c *branchCache) put(p int, txid, id uint64, pg []byte, count int) {
	if p < 0 || p > runsOwner {
		return
	}
	used := pageHeaderSize + count*pageElementSize
	for i := range count {
		e := pg[pageHeaderSize+i*pageElementSize:]
		end := pageHeaderSize + i*pageElementSize + int(binary.NativeEndian.Uint32(e)) + int(binary.NativeEndian.Uint32(e[4:]))
		if end > len(pg) { // a key outside the page: not kept (a walk checks each key it reads)
			return
		}
		used = max(used, end)
	}
	pg = pg[:used]
	c.mu.Lock()
	defer c.mu.Unlock()
	pp := &c.owners[p]
	if txid < pp.since || c.bytes+len(pg) > maxBranchBytes {
		return
	}
	if pp.pages == nil {
		pp.pages = map[uint64][]byte{}
	}
	if _, ok := pp.pages[id]; !ok {
		pp.pages[id] = bytes.Clone(pg)
		pp.bytes += len(pg)
		c.bytes += len(pg)
	}
}

// SetPageFile has lookups in read-only transactions read the pages of the final level and of
// final runs from f, the index's bbolt file with pages of pageSize bytes, instead of through
// bbolt's map (pageread.go).
// Call it before the index is shared between goroutines; f must stay open while the index is
// used. Without it, or in a write transaction, lookups use bbolt's cursor.
func (d *Index) SetPageFile(f io.ReaderAt, pageSize int) {
	if f == nil || pageSize < pageHeaderSize+pageElementSize {
		d.pages = nil
		return
	}
	d.pages = &pageFile{f: f, pageSize: pageSize}
}

// release hands r's buffers on to the next View (View.Release).
func (r *pageReader) release() {
	if r == nil || r.wins == nil {
		return
	}
	w := r.wins
	for i := range w {
		w[i].n = 0
	}
	r.wins = nil
	r.pf.wins.Put(&w)
}

// pageWindow holds pages [start, start+n) of the file, read with one pread.
type pageWindow struct {
	buf      []byte
	start, n uint64
}

// pageReader reads one transaction's pages for the lookups of one View, one buffer per level
// of the walk. It is not safe for concurrent use, as a View is not.
type pageReader struct {
	pf     *pageFile
	limit  int64        // the transaction's file size: no page of its tree lies beyond
	txid   uint64       // the transaction's id, for the branch cache
	owner  int          // the branchCache owner of the tree of the seek in progress
	wins   []pageWindow // per depth of the walk: the pages read last
	visits int          // pages the seek in progress has looked at, read or held

	preads, cached int // preads made in all, branch pages taken from the cache (tests)

	paged, cursor int // seeks answered from the file's pages, and sent back to the cursor
	floors        int // of the paged, those of a run's tree (floorBucket)
}

// page returns page id, read into the window of walk level depth, with its flags and count,
// ok false if it is not a sound branch or leaf page with id in its header. A read takes
// readSpan pages from id: a partition's leaf holds two chunks of ~3.8 KiB (bbolt puts at least
// two keys in a node), a page and its overflow. A page inside the window is served from it; a
// page larger than the window (a final run's filter pieces, 64 KiB, can share a leaf with its
// first chunks) is read whole into the window, grown to hold it. (Reading four pages to take
// the sibling leaf too, when it follows in the file, made fewer preads but cost more: 16 KiB
// preads.)
func (r *pageReader) page(id uint64, depth int) (p []byte, flags uint16, count int, ok bool) {
	ps := uint64(r.pf.pageSize)
	total := uint64(r.limit) / ps
	if id < 2 || id >= total {
		return nil, 0, 0, false
	}
	if r.wins == nil {
		if w, ok := r.pf.wins.Get().(*[]pageWindow); ok {
			r.wins = *w
		}
	}
	for len(r.wins) <= depth {
		r.wins = append(r.wins, pageWindow{buf: make([]byte, readSpan*ps)})
	}
	w := &r.wins[depth]
	if w.n == 0 || id < w.start || id >= w.start+w.n {
		span := min(readSpan, total-id)
		r.preads++
		w.n = 0
		if m, _ := r.pf.f.ReadAt(w.buf[:span*ps], int64(id*ps)); uint64(m) != span*ps {
			return nil, 0, 0, false
		}
		w.start, w.n = id, span
	}
	at := (id - w.start) * ps
	buf := w.buf[at : at+ps]
	ne := binary.NativeEndian
	if ne.Uint64(buf) != id {
		return nil, 0, 0, false
	}
	flags, count = ne.Uint16(buf[8:]), int(ne.Uint16(buf[10:]))
	if over := uint64(ne.Uint32(buf[12:])); over > 0 {
		n := (over + 1) * ps
		switch {
		case n > maxPageBytes || id+over >= total:
			return nil, 0, 0, false
		case id+1+over <= w.start+w.n:
			buf = w.buf[at : at+n]
		default: // a page larger than the window: read whole, into the window
			if uint64(len(w.buf)) < n {
				w.buf = make([]byte, n)
			}
			r.preads++
			w.n = 0
			if m, _ := r.pf.f.ReadAt(w.buf[:n], int64(id*ps)); uint64(m) != n {
				return nil, 0, 0, false
			}
			w.start, w.n = id, over+1
			buf = w.buf[:n]
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

// leafElement returns element i of leaf page p as a seek's answer: its key and value (nil for
// a nested bucket), found; ok false if they do not lie inside p.
func leafElement(p []byte, i int) (key, val []byte, found, ok bool) {
	k, _, v, lf, ok := element(p, leafPageFlag, i)
	if !ok {
		return nil, nil, false, false
	}
	if lf&bucketLeafFlag != 0 {
		v = nil
	}
	return k, v, true, true
}

// search returns the first of page p's count elements whose key is at or after target (atOrAfter)
// or after it, count if there is none; ok is false if a key it compared lies outside p.
func search(p []byte, flags uint16, count int, target []byte, atOrAfter bool) (int, bool) {
	lo, hi := 0, count
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		k, _, _, _, ok := element(p, flags, m)
		if !ok {
			return 0, false
		}
		if c := bytes.Compare(k, target); c < 0 || (c == 0 && !atOrAfter) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, true
}

// seek returns the first key at or after target in the tree under page root and its value
// (nil for a nested bucket), as bbolt's Cursor.Seek would. found is false when the tree holds
// no such key; ok is false when the walk could not be made (then ask the cursor).
func (r *pageReader) seek(root uint64, target []byte) (key, val []byte, found, ok bool) {
	r.visits = 0
	return r.seekIn(root, target, 0)
}

// node returns page id of the tree of the seek in progress, for walk level depth: a branch
// page's copy from the branch cache, else the page read (page), a branch page then stored in
// the cache. ok is false if the seek has looked at maxPageWalk pages, or the page is unsound.
func (r *pageReader) node(id uint64, depth int) (p []byte, flags uint16, count int, ok bool) {
	if r.visits++; r.visits > maxPageWalk { // a damaged tree's cycle, or a walk gone wrong
		return nil, 0, 0, false
	}
	if p := r.pf.branches.get(r.owner, r.txid, id); p != nil { // checked when it was read
		r.cached++
		return p, branchPageFlag, int(binary.NativeEndian.Uint16(p[10:])), true
	}
	p, flags, count, ok = r.page(id, depth)
	if ok && flags == branchPageFlag {
		r.pf.branches.put(r.owner, r.txid, id, p, count)
	}
	return p, flags, count, ok
}

func (r *pageReader) seekIn(id uint64, target []byte, depth int) (key, val []byte, found, ok bool) {
	p, flags, count, ok := r.node(id, depth)
	if !ok {
		return nil, nil, false, false
	}
	if flags == leafPageFlag {
		lo, ok := search(p, flags, count, target, true)
		if !ok {
			return nil, nil, false, false
		}
		if lo == count {
			return nil, nil, false, true
		}
		return leafElement(p, lo)
	}
	if count == 0 {
		return nil, nil, false, false
	}
	// The child whose first key is the last at or before target (the first child if none is),
	// as bbolt's search descends; if its subtree holds nothing at or after target, the answer
	// is the first key of the next child's.
	lo, ok := search(p, flags, count, target, false)
	if !ok {
		return nil, nil, false, false
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

// floor returns the last key at or before target in the tree under page root and its value
// (nil for a nested bucket): what bbolt's Cursor.Seek(target) finds if it is target, else what
// the cursor's Prev from there finds (Last where Seek finds nothing). found is false when the
// tree holds no such key; ok is false when the walk could not be made (then ask the cursor).
func (r *pageReader) floor(root uint64, target []byte) (key, val []byte, found, ok bool) {
	r.visits = 0
	return r.floorIn(root, target, 0)
}

func (r *pageReader) floorIn(id uint64, target []byte, depth int) (key, val []byte, found, ok bool) {
	p, flags, count, ok := r.node(id, depth)
	if !ok {
		return nil, nil, false, false
	}
	// The first element whose key is after target: the floor is the one before it, in a leaf;
	// in a branch, in the subtree of the one before it (a branch element's key is its child's
	// first), or, if that subtree holds nothing at or before target, in the one before that.
	lo, ok := search(p, flags, count, target, false)
	if !ok {
		return nil, nil, false, false
	}
	if flags == leafPageFlag {
		if lo == 0 {
			return nil, nil, false, true
		}
		return leafElement(p, lo-1)
	}
	if count == 0 {
		return nil, nil, false, false
	}
	for i := lo - 1; i >= 0; i-- {
		_, child, _, _, ok := element(p, flags, i)
		if !ok {
			return nil, nil, false, false
		}
		key, val, found, ok := r.floorIn(child, target, depth+1)
		if !ok || found {
			return key, val, found, ok
		}
	}
	return nil, nil, false, true
}

// floorBucket is floor for the bucket b of one of the runs in the View's transaction, from the
// file's pages where it can (r not nil and b not inline), else by the cursor.
func (r *pageReader) floorBucket(b *bolt.Bucket, target []byte) (key, val []byte) {
	if root := uint64(b.Root()); r != nil && root != 0 {
		r.owner = runsOwner
		key, val, found, ok := r.floor(root, target)
		if ok {
			r.paged++
			r.floors++
			if !found {
				return nil, nil
			}
			return key, val
		}
		r.cursor++
	}
	c := b.Cursor()
	k, v := c.Seek(target)
	if k != nil && bytes.Equal(k, target) {
		return k, v
	}
	if k == nil {
		return c.Last()
	}
	return c.Prev()
}

// seekBucket is b.Cursor().Seek(target) for partition p's bucket b in the View's transaction:
// from the file's pages where it can (r not nil and b not inline), else by the cursor.
func (r *pageReader) seekBucket(b *bolt.Bucket, p int, target []byte) (key, val []byte) {
	if root := uint64(b.Root()); r != nil && root != 0 {
		r.owner = p
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
