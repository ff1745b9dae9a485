package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// verifyContent checks what the spool file holds against itself, once checkBoltFile found
// its pages sound: every item's checksum (format 4), that every pending delivery has its
// item and is one of the deliveries the item's reference count counts (and the other way
// round: none missing), that the scheduled index and the scheduled deliveries agree, that the
// counts in stats match, that the sequence counter is not behind any item, and that the last
// applied journal frame checks out. A damaged page that bbolt reads without complaint (a
// changed key, value or length inside a page) shows up as one of these. It reads every
// pending delivery once, in sequence order, with one cursor per sink. It returns what does
// not check out, at most maxDamage entries.
func verifyContent(tx *bolt.Tx, path string) []Damage {
	v := &contentCheck{path: path}
	b := openBuckets(tx)
	if lsn, ok := decLSN(b.meta.Get(metaJournalLSN)); !ok {
		v.add("the last applied journal frame (meta %q) fails its checksum", metaJournalLSN)
	} else {
		v.jlsn = lsn
	}
	var curs []*sinkCursor
	per := map[string]*counts{}
	for _, top := range []*bolt.Bucket{b.ready, b.schedIdx} {
		_ = top.ForEachBucket(func(name []byte) error {
			c := top.Bucket(name).Cursor()
			k, val := c.First()
			curs = append(curs, &sinkCursor{sink: string(name), sched: top == b.schedIdx, c: c, k: k, v: val})
			if per[string(name)] == nil {
				per[string(name)] = &counts{}
			}
			return nil
		})
	}
	seqMax := b.items.Sequence()
	rc := b.refs.Cursor()
	rk, rv := rc.First()
	ic := b.items.Cursor()
	ik, iv := ic.First()
	for (ik != nil || rk != nil) && len(v.damage) < maxDamage {
		// The next sequence number that items or refs hold; deliveries below it are orphans.
		var seq uint64
		switch {
		case ik == nil:
			seq = decUint(rk)
		case rk == nil:
			seq = decUint(ik)
		default:
			seq = min(decUint(ik), decUint(rk))
		}
		var sinks []string
		switch {
		case ik == nil || decUint(ik) != seq || len(ik) != 8:
			v.add("item %d: reference count without the item", seq)
		default:
			var err error
			if sinks, _, err = decItem(seq, iv); err != nil {
				v.add("item %d: %v", seq, err)
			}
			if seq > seqMax {
				v.add("item %d is beyond the sequence counter (%d)", seq, seqMax)
			}
		}
		var refs uint64
		if rk == nil || decUint(rk) != seq {
			v.add("item %d: no reference count", seq)
		} else if n, w := binary.Uvarint(rv); w <= 0 || w != len(rv) || n == 0 {
			v.add("item %d: malformed reference count", seq)
		} else {
			refs = n
		}
		found := v.deliveries(b, curs, per, seq, sinks)
		if refs != 0 && found != refs {
			v.add("item %d: %d pending deliveries, its reference count says %d", seq, found, refs)
		}
		if ik != nil && decUint(ik) == seq {
			ik, iv = ic.Next()
		}
		if rk != nil && decUint(rk) == seq {
			rk, rv = rc.Next()
		}
	}
	for _, c := range curs {
		if c.k != nil && len(v.damage) < maxDamage {
			v.add("delivery %d of sink %q without its item", decUint(c.k), c.sink)
		}
	}
	v.checkSched(b)
	_ = b.stats.ForEach(func(k, val []byte) error {
		if _, ok := per[string(k)]; !ok {
			per[string(k)] = &counts{}
		}
		return nil
	})
	for sink, n := range per {
		if got := decCounts(b.stats.Get([]byte(sink))); got != *n {
			v.add("sink %q: stats say %d ready and %d scheduled, the file holds %d and %d", sink, got.ready, got.sched, n.ready, n.sched)
		}
	}
	return v.damage
}

// inspectFile reports the damage of the spool file at path, read-only: what checkSpoolFile
// finds, else a damaged format version or what verifyContent finds. ErrLocked while a relay
// holds it.
func inspectFile(path string, opt Options) ([]Damage, error) {
	_, err := checkSpoolFile(path)
	var de *DamageError
	if errors.As(err, &de) {
		return de.Damage, nil
	}
	if err != nil {
		return nil, err
	}
	db, _, err := openChecked(path, &bolt.Options{ReadOnly: true, Timeout: opt.OpenTimeout}, opt.logger())
	if errors.As(err, &de) {
		return de.Damage, nil
	}
	if err != nil {
		return nil, err
	}
	defer db.Close()
	var out []Damage
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return nil // a file Open has not prepared yet
		}
		if v := meta.Get(metaVersion); v != nil && (len(v) != 8 || decUint(v) == 0 || decUint(v) > maxFormatVersion) {
			out = append(out, Damage{File: path, What: fmt.Sprintf("spool file: the format version (%x) is damaged", v)})
			return nil
		}
		if decUint(meta.Get(metaVersion)) != formatVersion || meta.Get(metaMigrate4) != nil {
			return nil // Open migrates it first
		}
		out = verifyContent(tx, path)
		return nil
	})
	return out, err
}

// sinkCursor walks one sink's ready bucket or scheduled index in sequence order.
type sinkCursor struct {
	sink  string
	sched bool
	c     *bolt.Cursor
	k, v  []byte
}

// deliveries moves every cursor past item seq, reporting the deliveries below it as orphans,
// checks and counts the deliveries of seq (in per), and returns how many there are. sinks are
// the sinks the item was accepted for (nil when it is damaged).
func (v *contentCheck) deliveries(b buckets, curs []*sinkCursor, per map[string]*counts, seq uint64, sinks []string) uint64 {
	var found uint64
	for _, c := range curs {
		for c.k != nil && decUint(c.k) < seq {
			v.add("delivery %d of sink %q without its item", decUint(c.k), c.sink)
			c.k, c.v = c.c.Next()
		}
		if c.k == nil || decUint(c.k) != seq {
			continue
		}
		found++
		if c.sched {
			per[c.sink].sched++
			meta := getBucket(b.sched.Bucket([]byte(c.sink)), schedKey(c.v, c.k))
			if _, _, _, err := decMeta(meta); err != nil || len(c.v) != 8 {
				v.add("scheduled delivery %d of sink %q: %v", seq, c.sink, errIfNil(err, "index entry without its delivery"))
			}
		} else {
			per[c.sink].ready++
			if _, _, _, err := decMeta(c.v); err != nil {
				v.add("delivery %d of sink %q: %v", seq, c.sink, err)
			}
		}
		if sinks != nil && !slices.Contains(sinks, c.sink) {
			v.add("delivery %d of sink %q: the item was not accepted for that sink", seq, c.sink)
		}
		c.k, c.v = c.c.Next()
	}
	return found
}

// checkSched checks that every scheduled delivery has its index entry (the other direction
// is verifyContent's).
func (v *contentCheck) checkSched(b buckets) {
	_ = b.sched.ForEachBucket(func(name []byte) error {
		ib := b.schedIdx.Bucket(name)
		c := b.sched.Bucket(name).Cursor()
		for k, _ := c.First(); k != nil && len(v.damage) < maxDamage; k, _ = c.Next() {
			if len(k) != 16 || !bytes.Equal(getBucket(ib, k[8:]), k[:8]) {
				v.add("scheduled delivery %x of sink %q without its index entry", k, name)
			}
		}
		return nil
	})
}

// maxDamage bounds the damage verifyContent lists: a file damaged that much is refused
// anyway.
const maxDamage = 20

type contentCheck struct {
	path   string
	jlsn   uint64
	damage []Damage
}

func (v *contentCheck) add(format string, args ...any) {
	v.damage = append(v.damage, Damage{File: v.path, What: "spool file: " + fmt.Sprintf(format, args...)})
}

// errIfNil returns err, or an error with msg when err is nil.
func errIfNil(err error, msg string) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("%s", msg)
}

// damagedItems counts the items Ready held back because they failed their checksum, and
// logs each once.
type damagedItems struct {
	n        atomic.Uint64
	mu       sync.Mutex
	seen     map[uint64]bool
	bySink   map[string]int // deliveries held back, by sink
	sinkSeen map[string]bool
}

// damagedBySink returns the deliveries Ready held back, by sink.
func (s *Spool) damagedBySink() map[string]int {
	s.damaged.mu.Lock()
	defer s.damaged.mu.Unlock()
	return maps.Clone(s.damaged.bySink)
}

// damagedItem records that item seq, pending for sink, fails its checksum: it is never
// delivered as if genuine.
func (s *Spool) damagedItem(sink string, seq uint64) {
	s.damaged.mu.Lock()
	defer s.damaged.mu.Unlock()
	key := fmt.Sprintf("%s/%d", sink, seq)
	if s.damaged.seen == nil {
		s.damaged.seen, s.damaged.bySink = map[uint64]bool{}, map[string]int{}
		s.damaged.sinkSeen = map[string]bool{}
	}
	if !s.damaged.sinkSeen[key] {
		s.damaged.sinkSeen[key] = true
		s.damaged.bySink[sink]++
	}
	if s.damaged.seen[seq] {
		return
	}
	s.damaged.seen[seq] = true
	s.damaged.n.Add(1)
	s.log.Error("spool item fails its checksum: not delivered; stop the relay and run hubrelay spool recover",
		"path", s.path, "seq", seq, "sink", sink)
}

// DamagedItems returns the number of items found failing their checksum since Open: they
// are not delivered, and the next Open refuses the file (see Recover).
func (s *Spool) DamagedItems() uint64 { return s.damaged.n.Load() }
