package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
)

// salvage is what Recover could read out of a damaged spool file: every item that checks
// out, the delivery records, dedup records and other buckets on the pages that check out.
type salvage struct {
	chk      *boltCheck
	items    map[uint64]salvItem
	damaged  map[uint64]bool // item values that fail their checksum
	refs     map[uint64]uint64
	ready    map[string]map[uint64][]byte // sink -> seq -> delivery meta
	sched    map[string]map[uint64]schedRec
	dedup    map[[16]byte]uint64
	other    []otherRec // buckets the salvage does not interpret, copied as they are
	seq      uint64     // the items bucket's sequence
	jlsn     uint64
	jlsnOK   bool
	lostTree bool // the top of the tree is unreadable: items come from a scan of every page
	scanned  int  // items found only by that scan
}

type salvItem struct {
	sinks []string
	data  []byte
}

type schedRec struct {
	due  []byte
	meta []byte // nil when only the index entry survived
}

type otherRec struct {
	path       [][]byte
	key, value []byte
}

// salvageFile reads what checks out of the spool file at path (see salvage).
func salvageFile(path string) (*salvage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sv := &salvage{items: map[uint64]salvItem{}, damaged: map[uint64]bool{}, refs: map[uint64]uint64{},
		ready: map[string]map[uint64][]byte{}, sched: map[string]map[uint64]schedRec{}, dedup: map[[16]byte]uint64{}}
	chk, bad := checkBolt(path, f, st.Size(), sv.visit, true)
	sv.chk = chk
	sv.lostTree = chk.use == nil
	// Records of pending deliveries may be lost when a page of their buckets (or above
	// them) is, or the file is cut short.
	recordsLost := sv.lostTree || chk.use != nil && int64(chk.use.hwm)*int64(chk.pageSize) > st.Size()
	for _, b := range bad {
		if len(b.path) == 0 {
			sv.lostTree, recordsLost = true, true
		} else if top := string(b.path[0]); top != string(bucketItems) && top != string(dedupindex.L0Bucket) &&
			top != string(dedupindex.RunsBucket) && top != string(dedupindex.PartsBucket) && top != string(bucketStats) {
			recordsLost = true
		}
	}
	if chk.pageSize > 0 && (recordsLost || len(bad) > 0) {
		// Items in subtrees the walk could not reach: every item checks itself. Only those a
		// surviving record refers to are taken, unless records may be lost too (then a copy
		// of an item already delivered, on a page no longer in use, is delivered again).
		scanLeaves(f, st.Size(), chk.pageSize, func(k, v []byte) {
			if len(k) != 8 {
				return
			}
			seq := binary.BigEndian.Uint64(k)
			if _, ok := sv.items[seq]; ok || !checkItem(seq, v) {
				return
			}
			if !recordsLost && !sv.referenced(seq) {
				return
			}
			sinks, data, _ := decItem(seq, v)
			sv.items[seq] = salvItem{sinks: sinks, data: slices.Clone(data)}
			delete(sv.damaged, seq)
			sv.scanned++
		})
	}
	return sv, nil
}

// referenced reports whether a surviving record refers to item seq.
func (sv *salvage) referenced(seq uint64) bool {
	if _, ok := sv.refs[seq]; ok {
		return true
	}
	for _, m := range sv.ready {
		if _, ok := m[seq]; ok {
			return true
		}
	}
	for _, m := range sv.sched {
		if _, ok := m[seq]; ok {
			return true
		}
	}
	return false
}

// visit takes one element of the tree's walk.
func (sv *salvage) visit(path [][]byte, k, v []byte, bucket bool) error {
	if len(path) == 0 {
		if bucket && bytes.Equal(k, bucketItems) && len(v) >= 16 {
			sv.seq = ne.Uint64(v[8:])
		}
		return nil
	}
	if bucket {
		return nil
	}
	top := string(path[0])
	switch {
	case top == string(bucketItems) && len(path) == 1 && len(k) == 8:
		seq := binary.BigEndian.Uint64(k)
		if sinks, data, err := decItem(seq, v); err == nil {
			sv.items[seq] = salvItem{sinks: sinks, data: slices.Clone(data)}
		} else {
			sv.damaged[seq] = true
		}
	case top == string(bucketRefs) && len(path) == 1 && len(k) == 8:
		if n, w := binary.Uvarint(v); w > 0 {
			sv.refs[binary.BigEndian.Uint64(k)] = n
		}
	case top == string(bucketReady) && len(path) == 2 && len(k) == 8:
		if _, _, _, err := decMeta(v); err == nil {
			sink := string(path[1])
			if sv.ready[sink] == nil {
				sv.ready[sink] = map[uint64][]byte{}
			}
			sv.ready[sink][binary.BigEndian.Uint64(k)] = slices.Clone(v)
		}
	case top == string(bucketSched) && len(path) == 2 && len(k) == 16:
		if _, _, _, err := decMeta(v); err == nil {
			sv.schedRec(string(path[1]), binary.BigEndian.Uint64(k[8:]), k[:8], v)
		}
	case top == string(bucketSchedIdx) && len(path) == 2 && len(k) == 8 && len(v) == 8:
		sv.schedRec(string(path[1]), binary.BigEndian.Uint64(k), v, nil)
	case top == string(dedupindex.L0Bucket) && len(path) == 1 && len(k) == 16 && len(v) == 8:
		sv.addDedup(k, v)
	case (top == string(dedupindex.RunsBucket) || top == string(dedupindex.PartsBucket)) && len(path) == 2 &&
		len(k) > 0 && k[0] == runChunkPrefix && len(v)%runRecord == 0:
		for i := 0; i < len(v); i += runRecord {
			sv.addDedup(v[i:i+16], v[i+16:i+runRecord])
		}
	case top == string(bucketMeta) && len(path) == 1 && bytes.Equal(k, metaJournalLSN):
		sv.jlsn, sv.jlsnOK = decLSN(v)
	case top == string(bucketMeta), top == string(bucketStats), top == string(dedupindex.RunsBucket),
		top == string(dedupindex.PartsBucket):
		// Rebuilt from what is salvaged.
	case top != string(bucketItems) && top != string(bucketRefs) && top != string(bucketReady) &&
		top != string(bucketSched) && top != string(bucketSchedIdx) && top != string(dedupindex.L0Bucket):
		sv.other = append(sv.other, otherRec{path: slices.Clone(path), key: slices.Clone(k), value: slices.Clone(v)})
	}
	return nil
}

func (sv *salvage) schedRec(sink string, seq uint64, due, meta []byte) {
	if sv.sched[sink] == nil {
		sv.sched[sink] = map[uint64]schedRec{}
	}
	r := sv.sched[sink][seq]
	r.due = slices.Clone(due)
	if meta != nil {
		r.meta = slices.Clone(meta)
	}
	sv.sched[sink][seq] = r
}

func (sv *salvage) addDedup(h, at []byte) {
	var k [16]byte
	copy(k[:], h)
	sv.dedup[k] = max(sv.dedup[k], binary.BigEndian.Uint64(at))
}

// salvDelivery is one delivery of the rebuilt file.
type salvDelivery struct {
	sink string
	due  []byte // nil: ready
	meta []byte
}

// deliveries rebuilds the pending deliveries of item seq: those whose record survived, and,
// when fewer survived than the item's reference count says (or it is lost), one ready
// delivery for each sink the item was accepted for that has none (which may repeat a
// delivery that was done: at least once).
func (sv *salvage) deliveries(seq uint64, it salvItem) []salvDelivery {
	var out []salvDelivery
	has := map[string]bool{}
	firstAt := time.Now()
	for sink, m := range sv.ready {
		if meta, ok := m[seq]; ok && slices.Contains(it.sinks, sink) {
			out = append(out, salvDelivery{sink: sink, meta: meta})
			has[sink] = true
			_, firstAt, _, _ = decMeta(meta)
		}
	}
	for sink, m := range sv.sched {
		if r, ok := m[seq]; ok && !has[sink] && slices.Contains(it.sinks, sink) {
			meta := r.meta
			if meta == nil {
				meta = encMeta(nil, 0, firstAt, nil)
			}
			out = append(out, salvDelivery{sink: sink, due: r.due, meta: meta})
			has[sink] = true
		}
	}
	if n, ok := sv.refs[seq]; !ok || uint64(len(out)) < n {
		for _, sink := range it.sinks {
			if !has[sink] {
				out = append(out, salvDelivery{sink: sink, meta: encMeta(nil, 0, firstAt, nil)})
				has[sink] = true
			}
		}
	}
	slices.SortFunc(out, func(a, b salvDelivery) int { return strings.Compare(a.sink, b.sink) })
	return out
}

// lost lists, as "sink/seq", the deliveries whose record survived but whose item did not,
// and as "item/seq" damaged items no surviving record names.
func (sv *salvage) lost() []string {
	seen := map[uint64]bool{}
	var out []string
	add := func(sink string, seq uint64) {
		if _, ok := sv.items[seq]; !ok {
			out = append(out, fmt.Sprintf("%s/%d", sink, seq))
			seen[seq] = true
		}
	}
	for sink, m := range sv.ready {
		for seq := range m {
			add(sink, seq)
		}
	}
	for sink, m := range sv.sched {
		for seq := range m {
			if _, ok := sv.ready[sink][seq]; !ok {
				add(sink, seq)
			}
		}
	}
	for seq := range sv.damaged {
		if _, ok := sv.items[seq]; !ok && !seen[seq] {
			out = append(out, fmt.Sprintf("item/%d", seq))
		}
	}
	sort.Strings(out)
	return out
}

// write stores the salvage as a new spool file at path, in transactions of a bounded size.
func (sv *salvage) write(path string, dedupCfg dedupindex.Config) (int, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType, NoFreelistSync: true})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	seqs := make([]uint64, 0, len(sv.items))
	maxSeq := sv.seq
	for seq := range sv.items {
		seqs = append(seqs, seq)
		maxSeq = max(maxSeq, seq)
	}
	slices.Sort(seqs)
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range topBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(metaVersion, encUint(formatVersion)); err != nil {
			return err
		}
		if sv.jlsnOK {
			if err := meta.Put(metaJournalLSN, encLSN(sv.jlsn)); err != nil {
				return err
			}
		}
		for _, o := range sv.other {
			b, err := tx.CreateBucketIfNotExists(o.path[0])
			for _, p := range o.path[1:] {
				if err == nil {
					b, err = b.CreateBucketIfNotExists(p)
				}
			}
			if err == nil {
				err = b.Put(o.key, o.value)
			}
			if err != nil {
				return fmt.Errorf("copy bucket %s: %w", bucketPath(o.path), err)
			}
		}
		return tx.Bucket(bucketItems).SetSequence(maxSeq)
	})
	if err != nil {
		return 0, err
	}
	pending := 0
	for len(seqs) > 0 {
		chunk := seqs[:min(len(seqs), 4096)]
		seqs = seqs[len(chunk):]
		err := db.Update(func(tx *bolt.Tx) error {
			b := openBuckets(tx)
			for _, seq := range chunk {
				it := sv.items[seq]
				ds := sv.deliveries(seq, it)
				if len(ds) == 0 {
					continue
				}
				k := encUint(seq)
				if err := b.items.Put(k, encItem(seq, it.sinks, it.data)); err != nil {
					return err
				}
				if err := b.refs.Put(k, binary.AppendUvarint(nil, uint64(len(ds)))); err != nil {
					return err
				}
				for _, d := range ds {
					if err := putDelivery(b, d, k); err != nil {
						return err
					}
				}
				pending += len(ds)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return pending, sv.writeDedup(db, dedupCfg)
}

// putDelivery stores one rebuilt delivery of item k and counts it in stats.
func putDelivery(b buckets, d salvDelivery, k []byte) error {
	name := []byte(d.sink)
	if d.due == nil {
		rb, err := b.ready.CreateBucketIfNotExists(name)
		if err == nil {
			err = rb.Put(k, d.meta)
		}
		if err != nil {
			return err
		}
		return addCounts(b.stats, d.sink, 1, 0)
	}
	sb, err := b.sched.CreateBucketIfNotExists(name)
	if err != nil {
		return err
	}
	ib, err := b.schedIdx.CreateBucketIfNotExists(name)
	if err != nil {
		return err
	}
	if err := sb.Put(schedKey(d.due, k), d.meta); err != nil {
		return err
	}
	if err := ib.Put(k, d.due); err != nil {
		return err
	}
	return addCounts(b.stats, d.sink, 0, 1)
}

// writeDedup stores the salvaged dedup records as final runs of at most MaxRun records.
func (sv *salvage) writeDedup(db *bolt.DB, cfg dedupindex.Config) error {
	keys := make([][16]byte, 0, len(sv.dedup))
	for k := range sv.dedup {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [16]byte) int { return bytes.Compare(a[:], b[:]) })
	dedup := dedupindex.New(cfg, bucketMeta)
	for len(keys) > 0 {
		run := keys[:min(len(keys), dedup.MaxRun())]
		keys = keys[len(run):]
		recs := make([]byte, 0, len(run)*runRecord)
		for _, k := range run {
			recs = binary.BigEndian.AppendUint64(append(recs, k[:]...), sv.dedup[k])
		}
		if err := db.Update(func(tx *bolt.Tx) error { return dedup.WriteFinalRun(tx, recs) }); err != nil {
			return fmt.Errorf("write dedup records: %w", err)
		}
	}
	return db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(dedupindex.MetaCountKey, encUint(uint64(len(sv.dedup))))
	})
}

// The dedup index's run chunks, as salvage reads them from the pages (dedupindex's layout):
// a chunk's key is runChunkPrefix and the hash of its first record, its value records of
// runRecord bytes (16-byte key hash, 8-byte time).
const (
	runChunkPrefix = 'c'
	runRecord      = 24
)

// recoverFile replaces a damaged spool file at path by what salvageFile reads out of it: the
// new file is written next to it, the damaged one is moved into dir (a new
// <path>.damaged/<time>/ when dir is ""), with a NOTE.txt, and the new one takes its place.
// It returns the directory, and adds to r what was damaged and lost.
func recoverFile(path, dir string, opt Options, r *Report) (string, error) {
	sv, err := salvageFile(path)
	if err != nil {
		return "", fmt.Errorf("salvage: %w", err)
	}
	tmp := path + ".salvage"
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("salvage: %w", err)
	}
	pending, err := sv.write(tmp, opt.dedup)
	if err != nil {
		return "", fmt.Errorf("salvage: write %s: %w", tmp, err)
	}
	r.Damage = append(r.Damage, sv.chk.damage...)
	r.Lost = append(r.Lost, sv.lost()...)
	var note strings.Builder
	fmt.Fprintf(&note, "hubrelay spool recover, %s\n\nThe spool file %s was damaged:\n", time.Now().UTC().Format(time.RFC3339), path)
	for _, d := range sv.chk.damage {
		fmt.Fprintf(&note, "- %s\n", d)
	}
	fmt.Fprintf(&note, "\nIt is kept here as spool.db. A new spool file was written with what checked out: %d items (%d found by a scan of every page), "+
		"%d pending deliveries, %d dedup records", len(sv.items), sv.scanned, pending, len(sv.dedup))
	if !sv.jlsnOK {
		note.WriteString("; the last applied journal frame was unreadable, so every journal frame is applied again")
	}
	note.WriteString(".\nA delivery whose record was damaged is made again to every sink its item was accepted for (at least once).\n")
	if lost := sv.lost(); len(lost) > 0 {
		fmt.Fprintf(&note, "\nThese deliveries (sink/sequence number) could not be salvaged: their item's data was damaged:\n")
		for _, l := range lost {
			fmt.Fprintf(&note, "- %s\n", l)
		}
	}
	if dir, err = setAside(path, dir, []string{path}, note.String()); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("salvage: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("salvage: %w", err)
	}
	return dir, nil
}
