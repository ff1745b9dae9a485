package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
	"strings"
)

// The spool file is a bbolt file, and bbolt trusts it: a page id or length that a damaged
// byte changed makes bolt.Open fail an assertion (in a goroutine of its own, where no recover
// can catch it), read past the end of a truncated file through its mapping (SIGBUS), or, with
// one meta page damaged, silently open the previous transaction instead. So before bbolt maps
// the file, checkBoltFile reads it with plain reads, never through a mapping, following
// bbolt's layout (go.etcd.io/bbolt/internal/common, format version 2): both meta pages and
// their checksums, the file's size against the pages the meta page claims, and every page the
// tree reaches from the meta page bbolt will use: its id, type, bounds, element offsets and
// key order. bbolt only opens a file whose every reachable page checks out, so no damaged
// byte can crash the relay; the damaged file is refused with a *DamageError instead.
//
// Layout (native byte order, as bbolt writes it):
//
//	page header  id u64, flags u16, count u16, overflow u32 (16 bytes)
//	meta         at 16: magic u32, version u32, page size u32, flags u32, root (pgid u64,
//	             sequence u64), freelist pgid u64, high water mark pgid u64, txid u64,
//	             checksum u64 (FNV-64a of the 56 bytes before it)
//	branch elem  pos u32, ksize u32, pgid u64: key at elem+pos
//	leaf elem    flags u32, pos u32, ksize u32, vsize u32: key at elem+pos, value after it
//	bucket value root pgid u64, sequence u64; root 0: an inline bucket, whose leaf page
//	             follows in the value

const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16
	boltElemSize     = 16
	boltMetaSize     = 64
	boltBranchFlag   = 0x01
	boltLeafFlag     = 0x02
	boltMetaFlag     = 0x04
	boltFreelistFlag = 0x10
	boltBucketFlag   = 0x01
	boltNoFreelist   = ^uint64(0)
	boltMinPageSize  = 1024
	boltMaxPageSize  = 1 << 24
)

var ne = binary.NativeEndian

// boltMeta is a decoded meta page.
type boltMeta struct {
	page     int // 0 or 1
	magic    uint32
	version  uint32
	pageSize uint32
	root     uint64 // the root bucket's page
	freelist uint64
	hwm      uint64 // pages below this id are in use or free
	txid     uint64
	sum      uint64
	err      error // why the page does not check out, nil if it does
}

// decodeMeta decodes the meta page held in b (at least boltPageHeader+boltMetaSize bytes).
func decodeMeta(page int, b []byte) boltMeta {
	m := b[boltPageHeader:]
	bm := boltMeta{page: page,
		magic: ne.Uint32(m[0:]), version: ne.Uint32(m[4:]), pageSize: ne.Uint32(m[8:]),
		root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]), hwm: ne.Uint64(m[40:]),
		txid: ne.Uint64(m[48:]), sum: ne.Uint64(m[56:]),
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	switch {
	case bm.magic != boltMagic:
		bm.err = errors.New("not a bbolt meta page (bad magic)")
	case bm.version != boltVersion:
		bm.err = fmt.Errorf("bbolt format version %d, want %d", bm.version, boltVersion)
	case h.Sum64() != bm.sum:
		bm.err = errors.New("meta page fails its checksum")
	case bm.pageSize < boltMinPageSize || bm.pageSize > boltMaxPageSize || bm.pageSize&(bm.pageSize-1) != 0:
		bm.err = fmt.Errorf("page size %d", bm.pageSize)
	}
	return bm
}

// boltCheck is what checkBoltFile found: the meta pages, the one bbolt will use, and the
// damage, if any.
type boltCheck struct {
	path     string
	size     int64
	pageSize int
	metas    [2]boltMeta
	use      *boltMeta // the meta page bbolt opens (the valid one with the higher txid)
	damage   []Damage
	reached  []uint64 // pages reached from the used meta page (first page of each), in walk order
}

// fallback reports that bbolt will open the previous transaction because the newer meta page
// is damaged: the file then lacks that transaction's changes (the journal still has them).
func (c *boltCheck) fallback() bool {
	return c.use != nil && c.metas[1-c.use.page].err != nil
}

func (c *boltCheck) add(off, n int64, format string, args ...any) {
	c.damage = append(c.damage, Damage{File: c.path, Offset: off, Len: n, What: "spool file: " + fmt.Sprintf(format, args...)})
}

// cut records that the file ends at size, before what it needs.
func (c *boltCheck) cut(format string, args ...any) {
	c.damage = append(c.damage, Damage{File: c.path, Offset: c.size, ToEnd: true, What: "spool file: " + fmt.Sprintf(format, args...)})
}

// boltReader reads the pages of a bbolt file with pread.
type boltReader struct {
	f        io.ReaderAt
	size     int64
	pageSize int
	hwm      uint64
	seen     []uint64 // a bit per page below hwm: reached by the walk (readPage)
	reached  []uint64
	// tolerant: a page that does not check out is recorded in bad (with the bucket it
	// belonged to) and skipped, and the walk goes on (Recover's salvage).
	tolerant bool
	bad      []badPage
}

// badPage is a page the tolerant walk skipped: its subtree is lost to the walk.
type badPage struct {
	path [][]byte // the bucket it belonged to
	err  *errBoltPage
}

// skip records a bad page of the bucket at path when the walk is tolerant, and returns nil
// then; else it returns err.
func (r *boltReader) skip(path [][]byte, err error) error {
	var pe *errBoltPage
	if !r.tolerant || !errors.As(err, &pe) {
		return err
	}
	r.bad = append(r.bad, badPage{path: path, err: pe})
	return nil
}

// errBoltPage is a page that does not check out; off and n locate it in the file.
type errBoltPage struct {
	off, n int64
	msg    string
}

func (e *errBoltPage) Error() string { return e.msg }

func (r *boltReader) pageErr(id uint64, n int64, format string, args ...any) error {
	return &errBoltPage{off: int64(id) * int64(r.pageSize), n: n, msg: fmt.Sprintf("page %d: ", id) + fmt.Sprintf(format, args...)}
}

// reachedPage reports whether readPage has read page id (below hwm), as a page or an overflow.
func (r *boltReader) reachedPage(id uint64) bool {
	return id/64 < uint64(len(r.seen)) && r.seen[id/64]&(1<<(id%64)) != 0
}

// readPage reads page id with its overflow pages and checks its header: its id, that it is a
// page of one of the types in flags, and that it lies below the high water mark and within
// the file.
func (r *boltReader) readPage(id uint64, flags uint16) ([]byte, error) {
	ps := int64(r.pageSize)
	if id < 2 || id >= r.hwm {
		return nil, r.pageErr(id, ps, "page id out of range [2, %d)", r.hwm)
	}
	// Page counts, not byte offsets, are compared: a damaged id times the page size can wrap.
	inFile := uint64(r.size) / uint64(ps) // pages wholly inside the file
	if id >= inFile {
		return nil, r.pageErr(id, ps, "beyond the end of the file (%d bytes)", r.size)
	}
	var hdr [boltPageHeader]byte
	if _, err := r.f.ReadAt(hdr[:], int64(id)*ps); err != nil {
		return nil, r.pageErr(id, ps, "read: %v", err)
	}
	if got := ne.Uint64(hdr[0:]); got != id {
		return nil, r.pageErr(id, ps, "the page says it is page %d", got)
	}
	if f := ne.Uint16(hdr[8:]); f&flags == 0 || f&(f-1) != 0 {
		return nil, r.pageErr(id, ps, "unexpected page type %#x", f)
	}
	over := uint64(ne.Uint32(hdr[12:]))
	if over >= r.hwm-id || over >= inFile-id {
		return nil, r.pageErr(id, ps, "%d overflow pages run past the end of the file", over)
	}
	for i := uint64(0); i <= over; i++ {
		if r.reachedPage(id + i) {
			return nil, r.pageErr(id, ps, "page %d is reached twice", id+i)
		}
		r.seen[(id+i)/64] |= 1 << ((id + i) % 64)
	}
	r.reached = append(r.reached, id)
	buf := make([]byte, int64(over+1)*ps)
	if _, err := r.f.ReadAt(buf, int64(id)*ps); err != nil {
		return nil, r.pageErr(id, ps, "read: %v", err)
	}
	return buf, nil
}

// boltVisitor receives the leaf elements of a bucket in key order: path is the bucket's
// names from the top, and bucket reports an element that is a nested bucket (after which
// its own elements follow). Returning an error stops the walk.
type boltVisitor func(path [][]byte, key, value []byte, bucket bool) error

// boltElems checks the elements of the page in b (a leaf or branch page's bytes, possibly an
// inline bucket's) and returns their keys and, for leaves, values and flags; for branches,
// the child page ids.
type boltElem struct {
	key, value []byte
	flags      uint32
	child      uint64
}

func boltElems(b []byte) ([]boltElem, bool, error) { return parseElems(b, false) }

// parseElems is boltElems; lenient (Recover's scan of every page) skips the elements that lie
// outside the page or out of order instead of failing the page.
func parseElems(b []byte, lenient bool) ([]boltElem, bool, error) {
	if len(b) < boltPageHeader {
		return nil, false, errors.New("page shorter than its header")
	}
	flags := ne.Uint16(b[8:])
	count := int(ne.Uint16(b[10:]))
	leaf := flags == boltLeafFlag
	if !leaf && flags != boltBranchFlag {
		return nil, false, fmt.Errorf("unexpected page type %#x", flags)
	}
	if !leaf && count == 0 {
		return nil, false, errors.New("branch page without elements")
	}
	if boltPageHeader+count*boltElemSize > len(b) {
		return nil, false, fmt.Errorf("%d elements do not fit the page", count)
	}
	out := make([]boltElem, count)
	for i := range count {
		eo := boltPageHeader + i*boltElemSize
		e := b[eo : eo+boltElemSize]
		var pos, ksize, vsize uint64
		if leaf {
			out[i].flags = ne.Uint32(e[0:])
			pos, ksize, vsize = uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		} else {
			pos, ksize = uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:]))
			out[i].child = ne.Uint64(e[8:])
		}
		start := uint64(eo) + pos
		if pos < uint64(boltElemSize*(count-i)) || start+ksize+vsize > uint64(len(b)) {
			if lenient {
				continue
			}
			return nil, false, fmt.Errorf("element %d lies outside the page", i)
		}
		out[i].key = b[start : start+ksize]
		if leaf {
			out[i].value = b[start+ksize : start+ksize+vsize]
		}
		if lenient {
			continue
		}
		if leaf && out[i].flags&^boltBucketFlag != 0 {
			return nil, false, fmt.Errorf("element %d: unexpected flags %#x", i, out[i].flags)
		}
		if i > 0 && bytes.Compare(out[i-1].key, out[i].key) >= 0 {
			return nil, false, fmt.Errorf("element %d: keys out of order", i)
		}
	}
	if lenient {
		return slices.DeleteFunc(out, func(e boltElem) bool { return e.key == nil }), leaf, nil
	}
	return out, leaf, nil
}

// walkTree visits the bucket whose root page is id: elements in key order, keys within
// [lo, hi) (nil: unbounded).
func (r *boltReader) walkTree(path [][]byte, id uint64, lo, hi []byte, visit boltVisitor) error {
	b, err := r.readPage(id, boltBranchFlag|boltLeafFlag)
	if err != nil {
		return r.skip(path, err)
	}
	elems, leaf, err := boltElems(b)
	if err != nil {
		return r.skip(path, r.pageErr(id, int64(len(b)), "%v", err))
	}
	if len(elems) > 0 {
		if lo != nil && bytes.Compare(elems[0].key, lo) < 0 || hi != nil && bytes.Compare(elems[len(elems)-1].key, hi) >= 0 {
			return r.skip(path, r.pageErr(id, int64(len(b)), "keys outside the range of its parent"))
		}
	}
	if !leaf {
		for i, e := range elems {
			next := hi
			if i+1 < len(elems) {
				next = elems[i+1].key
			}
			if err := r.walkTree(path, e.child, e.key, next, visit); err != nil {
				return err
			}
		}
		return nil
	}
	return r.visitLeaf(path, elems, visit, func(format string, args ...any) error {
		return r.skip(path, r.pageErr(id, int64(len(b)), format, args...))
	})
}

// visitLeaf visits a leaf page's elements, descending into nested buckets.
func (r *boltReader) visitLeaf(path [][]byte, elems []boltElem, visit boltVisitor, fail func(string, ...any) error) error {
	for i, e := range elems {
		bucket := e.flags&boltBucketFlag != 0
		if err := visit(path, e.key, e.value, bucket); err != nil {
			return err
		}
		if !bucket {
			continue
		}
		if len(e.value) < 16 {
			if err := fail("element %d: bucket header of %d bytes", i, len(e.value)); err != nil {
				return err
			}
			continue
		}
		sub := append(path[:len(path):len(path)], e.key)
		if root := ne.Uint64(e.value); root != 0 {
			if err := r.walkTree(sub, root, nil, nil, visit); err != nil {
				return err
			}
			continue
		}
		inner, leaf, err := boltElems(e.value[16:])
		if err != nil || !leaf {
			if err := fail("element %d: inline bucket: %v", i, errors.Join(err, errIf(!leaf && err == nil, "not a leaf"))); err != nil {
				return err
			}
			continue
		}
		if err := r.visitLeaf(sub, inner, visit, fail); err != nil {
			return err
		}
	}
	return nil
}

// errIf returns an error with msg when cond holds, else nil.
func errIf(cond bool, msg string) error {
	if cond {
		return errors.New(msg)
	}
	return nil
}

// checkBoltFile checks the bbolt file at path as described at the top of this file, and, when
// visit is not nil, gives it every element of the tree bbolt will open. It returns an error
// only when the file cannot be read at all; damage is in the result.
func checkBoltFile(path string, visit boltVisitor) (*boltCheck, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	c, _ := checkBolt(path, f, st.Size(), visit, false)
	return c, nil
}

// checkBolt is checkBoltFile on an open file of the given size. With tolerant, it walks on
// past what does not check out (a truncated file, a damaged page), recording the damage and
// returning the pages it skipped, for Recover's salvage.
func checkBolt(path string, f io.ReaderAt, size int64, visit boltVisitor, tolerant bool) (*boltCheck, []badPage) {
	c := &boltCheck{path: path, size: size}
	head := make([]byte, boltPageHeader+boltMetaSize)
	readMeta := func(page int, off int64) (boltMeta, bool) {
		if off+int64(len(head)) > size {
			return boltMeta{page: page, err: errors.New("beyond the end of the file")}, false
		}
		if _, err := f.ReadAt(head, off); err != nil {
			return boltMeta{page: page, err: err}, false
		}
		return decodeMeta(page, head), true
	}
	// The page size is in the meta pages; like bbolt, find the second one by trying every
	// page size when the first does not check out.
	m0, _ := readMeta(0, 0)
	if m0.err == nil {
		c.pageSize = int(m0.pageSize)
	} else {
		for ps := int64(boltMinPageSize); ps <= boltMaxPageSize; ps *= 2 {
			if m1, _ := readMeta(1, ps); m1.err == nil && int64(m1.pageSize) == ps {
				c.pageSize = int(ps)
				break
			}
		}
	}
	if c.pageSize == 0 {
		c.metas[0] = m0
		c.metas[1] = boltMeta{page: 1, err: errors.New("no meta page checks out at any page size")}
		if size < 2*boltMinPageSize {
			c.cut("the file is %d bytes, too short for its meta pages: it was truncated", size)
		} else {
			c.add(0, min(size, 2*4096), "both meta pages are damaged (%v)", m0.err)
		}
		return c, nil
	}
	c.metas[0] = m0
	c.metas[1], _ = readMeta(1, int64(c.pageSize))
	for i := range c.metas {
		if m := &c.metas[i]; m.err == nil && int(m.pageSize) != c.pageSize {
			m.err = fmt.Errorf("page size %d, the other meta page says %d", m.pageSize, c.pageSize)
		}
	}
	for i := range c.metas {
		if m := &c.metas[i]; m.err == nil && (c.use == nil || m.txid > c.use.txid) {
			c.use = m
		}
	}
	if c.use == nil {
		if size < int64(2*c.pageSize) {
			c.cut("the file is %d bytes, too short for its meta pages: it was truncated", size)
		} else {
			c.add(0, int64(2*c.pageSize), "both meta pages are damaged (%v; %v)", c.metas[0].err, c.metas[1].err)
		}
		return c, nil
	}
	m := c.use
	ps := int64(c.pageSize)
	switch {
	case m.hwm < 3 || m.root < 2 || m.root >= m.hwm:
		c.add(int64(m.page)*ps, ps, "meta page %d: root page %d, high water mark %d", m.page, m.root, m.hwm)
		return c, nil
	case m.hwm > uint64(size)/uint64(ps): // the file's pages, not its bytes: hwm*ps can wrap
		c.cut("the file is %d bytes but its meta page (transaction %d) uses %d pages of %d bytes: it was truncated",
			size, m.txid, m.hwm, ps)
		if !tolerant {
			return c, nil
		}
	}
	// readPage reads no page past the file's end, whatever the high water mark says.
	pages := min(m.hwm, uint64(size/ps)+1)
	r := &boltReader{f: f, size: size, pageSize: c.pageSize, hwm: m.hwm, seen: make([]uint64, (pages+63)/64), tolerant: tolerant}
	var free []uint64
	if m.freelist != boltNoFreelist {
		var err error
		if free, err = r.checkFreelist(m.freelist); err != nil {
			c.addPageErr(err)
			if !tolerant {
				return c, nil
			}
		}
	}
	if visit == nil {
		visit = func([][]byte, []byte, []byte, bool) error { return nil }
	}
	if err := r.walkTree(nil, m.root, nil, nil, visit); err != nil {
		if !c.addPageErr(err) {
			c.add(0, 0, "%v", err)
		}
		return c, r.bad
	}
	for _, b := range r.bad {
		c.add(b.err.off, b.err.n, "%s (bucket %s): skipped", b.err.msg, bucketPath(b.path))
	}
	// bbolt hands out the pages of a persisted freelist for new writes: one the tree uses
	// would be written over.
	for _, id := range free {
		if r.reachedPage(id) {
			c.add(int64(m.freelist)*ps, ps, "page %d: the freelist (page %d) lists it, but the tree uses it", id, m.freelist)
			break
		}
	}
	c.reached = r.reached
	return c, r.bad
}

// scanLeaves reads every page of the file that is a leaf page by its header (whether the
// tree reaches it or not) and gives fn each of its elements that is not a bucket: Recover's
// last resort when the tree's upper pages are damaged.
func scanLeaves(f io.ReaderAt, size int64, pageSize int, fn func(key, value []byte)) {
	ps := int64(pageSize)
	var hdr [boltPageHeader]byte
	for id := int64(2); id*ps+boltPageHeader <= size; id++ {
		if _, err := f.ReadAt(hdr[:], id*ps); err != nil {
			return
		}
		if ne.Uint64(hdr[0:]) != uint64(id) || ne.Uint16(hdr[8:]) != boltLeafFlag {
			continue
		}
		n := (int64(ne.Uint32(hdr[12:])) + 1) * ps
		if id*ps+n > size+ps {
			continue
		}
		// A page the file ends inside is read as far as it goes; the values past its end
		// are zeros, which do not check out.
		b := make([]byte, n)
		if _, err := f.ReadAt(b, id*ps); err != nil && !errors.Is(err, io.EOF) {
			continue
		}
		elems, _, err := parseElems(b, true)
		if err != nil {
			continue
		}
		for _, e := range elems {
			if e.flags&boltBucketFlag == 0 {
				fn(e.key, e.value)
			}
		}
	}
}

// addPageErr records a page error as damage and reports whether err was one.
func (c *boltCheck) addPageErr(err error) bool {
	var pe *errBoltPage
	if !errors.As(err, &pe) {
		return false
	}
	c.add(pe.off, pe.n, "%s", pe.msg)
	return true
}

// checkFreelist checks a persisted freelist page and returns the ids it lists: each below the
// high water mark, none of the meta pages, none twice; the caller checks that the tree uses
// none of them. (The spool persists its freelist only in the last commit of a clean Close, so
// that the next Open need not rebuild it by reading every page of the file through bbolt's
// map; files written by bbolt without NoFreelistSync, and new files, have one too.)
func (r *boltReader) checkFreelist(id uint64) ([]uint64, error) {
	b, err := r.readPage(id, boltFreelistFlag)
	if err != nil {
		return nil, err
	}
	n, start := uint64(ne.Uint16(b[10:])), boltPageHeader
	if n == 0xFFFF {
		if len(b) < boltPageHeader+8 {
			return nil, r.pageErr(id, int64(len(b)), "freelist count missing")
		}
		n, start = ne.Uint64(b[boltPageHeader:]), boltPageHeader+8
	}
	if n > uint64(len(b)-start)/8 {
		return nil, r.pageErr(id, int64(len(b)), "freelist of %d ids does not fit its pages", n)
	}
	ids := make([]uint64, n)
	for i := range n {
		if ids[i] = ne.Uint64(b[start+int(i)*8:]); ids[i] < 2 || ids[i] >= r.hwm {
			return nil, r.pageErr(id, int64(len(b)), "free page id %d out of range", ids[i])
		}
	}
	slices.Sort(ids)
	for i := 1; i < len(ids); i++ {
		if ids[i] == ids[i-1] {
			return nil, r.pageErr(id, int64(len(b)), "free page id %d listed twice", ids[i])
		}
	}
	return ids, nil
}

// bucketPath joins a bucket path for messages.
func bucketPath(path [][]byte) string {
	s := make([]string, len(path))
	for i, p := range path {
		s[i] = fmt.Sprintf("%q", p)
	}
	return strings.Join(s, "/")
}
