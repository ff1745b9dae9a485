package spool

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
	bolt "go.etcd.io/bbolt"
)

// Older formats' buckets, which Open migrates (see formatVersion).
var (
	// bucketDedupT is format 2's time index of the dedup keys: (accepted at, key hash) -> nil.
	// Format 2 kept every key in dedupkeys, the bucket that is now the index's mutable level.
	bucketDedupT = []byte("dedupkeyt")

	// Format 1's dedup buckets, keyed by the whole key.
	bucketDedupV1  = []byte("dedup")
	bucketDedupTV1 = []byte("dedupt")
)

// migrateDedupV2 turns format 2's dedup index into format 3's. Each transaction takes the
// maxRun oldest entries of the time index (deletes there are sequential) and writes their keys
// as a final run, so that each run covers a stretch of time and expires as a whole; dedupkeys
// is only read meanwhile. A crash in between resumes where it stopped, and a format-2 binary
// still finds every key. The last transaction empties dedupkeys (now L0), drops the time
// index and records format 3 (migrateItemsV3 then takes it to format 4).
func migrateDedupV2(db *bolt.DB, dedup *dedupindex.Index, log *slog.Logger) error {
	moved := 0
	var err error
	for done := false; err == nil && !done; {
		err = db.Update(func(tx *bolt.Tx) error {
			n, more, err := migrateRun(tx, dedup)
			moved += n
			done = !more
			return err
		})
		if err == nil && !done {
			log.Info("migrating the dedup index", "format", formatDedupRuns, "keys_so_far", moved)
		}
	}
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			if tx.Bucket(bucketDedupT) != nil {
				if err := tx.DeleteBucket(bucketDedupT); err != nil {
					return err
				}
			}
			if err := dedup.ResetL0(tx); err != nil {
				return err
			}
			return tx.Bucket(bucketMeta).Put(metaVersion, encUint(formatDedupRuns))
		})
	}
	if err != nil {
		return fmt.Errorf("migrate dedup keys to format %d: %w", formatDedupRuns, err)
	}
	log.Info("dedup index migrated", "format", formatDedupRuns, "keys", moved)
	return nil
}

// migrateRun writes the keys of the maxRun oldest entries of format 2's time index as a final
// run and deletes those entries. It returns how many keys it wrote, and whether entries are
// left.
func migrateRun(tx *bolt.Tx, dedup *dedupindex.Index) (int, bool, error) {
	idx := tx.Bucket(bucketDedupT)
	if idx == nil {
		return 0, false, nil
	}
	l0 := tx.Bucket(dedupindex.L0Bucket) // format 2's one B+tree of every key
	var entries, recs [][]byte
	c := idx.Cursor()
	for k, _ := c.First(); k != nil && len(entries) < dedup.MaxRun(); k, _ = c.Next() {
		entries = append(entries, slices.Clone(k))
		if len(k) != 24 {
			continue
		}
		// An entry whose key carries another time is stale (the key was accepted again).
		if v := l0.Get(k[8:]); v != nil && string(v) == string(k[:8]) {
			recs = append(recs, append(slices.Clone(k[8:]), k[:8]...))
		}
	}
	if len(entries) == 0 {
		return 0, false, nil
	}
	slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:16], b[:16]) })
	var run []byte
	for _, r := range recs {
		run = append(run, r...)
	}
	for _, k := range entries {
		if err := idx.Delete(k); err != nil {
			return 0, false, err
		}
	}
	if err := dedup.WriteFinalRun(tx, run); err != nil {
		return 0, false, err
	}
	return len(recs), true, nil
}

// migrateDedupV1 moves format 1's dedup keys to the hashed buckets, in transactions of a
// bounded size (a crash in between resumes where it stopped), then records format 2.
func migrateDedupV1(db *bolt.DB, log *slog.Logger) error {
	moved := 0
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			old, oldT := tx.Bucket(bucketDedupV1), tx.Bucket(bucketDedupTV1)
			if old == nil {
				done = true
				return tx.Bucket(bucketMeta).Put(metaVersion, encUint(2))
			}
			keys2 := tx.Bucket(dedupindex.L0Bucket) // format 2's one B+tree of every key
			dedupT, err := tx.CreateBucketIfNotExists(bucketDedupT)
			if err != nil {
				return err
			}
			var keys, vals [][]byte
			c := old.Cursor()
			for k, v := c.First(); k != nil && len(keys) < 10000; k, v = c.Next() {
				keys, vals = append(keys, slices.Clone(k)), append(vals, slices.Clone(v))
			}
			for i, k := range keys {
				h := dedupindex.Hash(k)
				if err := keys2.Put(h, vals[i]); err != nil {
					return err
				}
				if err := dedupT.Put(dedupTKey(vals[i], h), nil); err != nil {
					return err
				}
				if err := old.Delete(k); err != nil {
					return err
				}
				if oldT != nil {
					if err := oldT.Delete(dedupTKey(vals[i], k)); err != nil {
						return err
					}
				}
			}
			moved += len(keys)
			if len(keys) == 0 {
				if err := tx.DeleteBucket(bucketDedupV1); err != nil {
					return err
				}
				if oldT != nil {
					return tx.DeleteBucket(bucketDedupTV1)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("migrate dedup keys to format %d: %w", formatVersion, err)
		}
	}
	log.Info("spool migrated to format 2 (hashed dedup keys)", "keys", moved)
	return nil
}

// dedupTKey is a key of format 2's dedupkeyt and format 1's dedupt: the 8-byte acceptance
// time followed by the (hashed) dedup key.
func dedupTKey(at, key []byte) []byte {
	k := make([]byte, 0, len(at)+len(key))
	return append(append(k, at...), key...)
}

// prepareFile creates the buckets a new file lacks, checks the format version of an existing
// one and migrates an older format. It returns the last journal LSN the file records.
func prepareFile(db *bolt.DB, dedup *dedupindex.Index, log *slog.Logger) (uint64, error) {
	var jlsn uint64
	var from uint64 // the format to migrate from, 0 for none
	err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range topBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaVersion); v == nil {
			if err := meta.Put(metaVersion, encUint(formatVersion)); err != nil {
				return err
			}
		} else if got := decUint(v); len(v) != 8 || got == 0 || got > maxFormatVersion {
			return fmt.Errorf("spool file: the format version (%x) is damaged: %w", v, ErrDamaged) // no hubrelay wrote it
		} else if got < formatVersion {
			from = got
		} else if got != formatVersion {
			return fmt.Errorf("unsupported format version %d (want %d): written by a newer hubrelay", got, formatVersion)
		} else if meta.Get(metaMigrate4) != nil {
			from = formatDedupRuns // the migration to format 4 was cut short: resume it
		}
		jlsn = decUint(meta.Get(metaJournalLSN))
		return nil
	})
	if err == nil && from == 1 {
		err = migrateDedupV1(db, log)
	}
	if err == nil && (from == 1 || from == 2) {
		err = migrateDedupV2(db, dedup, log)
	}
	if err == nil && from != 0 && from <= formatDedupRuns {
		err = migrateItemsV3(db, log)
	}
	if err == nil && from != 0 {
		err = migrateDedupV4(db, dedup, log)
	}
	return jlsn, err
}

// formatItemChecksums is the format that introduced item checksums, the last one before the
// partitioned final level of the dedup index.
const formatItemChecksums = 4

// migrateDedupV4 takes format 4 to format 5: it writes again, one per transaction, the dedup
// runs whose chunks cross a partition bound (dedupindex.AlignRun; a crash in between starts
// over and skips the runs done), then records format 5. Format 4's final runs stay as they
// are: the sweep merges them into the partitions as keys come in. A format-4 binary would not
// look in the partitions, so it refuses format 5.
func migrateDedupV4(db *bolt.DB, dedup *dedupindex.Index, log *slog.Logger) error {
	next, runs := uint64(0), 0
	for {
		err := db.Update(func(tx *bolt.Tx) error {
			var err error
			next, err = dedup.AlignRun(tx, next)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate the dedup index to format %d: %w", formatVersion, err)
		}
		if next == 0 {
			break
		}
		if runs++; runs%64 == 0 {
			log.Info("migrating the dedup index", "format", formatVersion, "runs_so_far", runs)
		}
	}
	err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaVersion, encUint(formatVersion))
	})
	if err != nil {
		return fmt.Errorf("migrate the dedup index to format %d: %w", formatVersion, err)
	}
	log.Info("dedup index migrated", "format", formatVersion, "runs", runs)
	return nil
}

// formatDedupRuns is the format that introduced the log-structured dedup index, the last one
// before item checksums.
const formatDedupRuns = 3

// maxFormatVersion bounds the format versions taken for a newer hubrelay's rather than for
// a damaged value.
const maxFormatVersion = 1 << 16

// migrateItemsV3 takes format 3 to format 4: it rewrites every item with its checksum and the
// sinks of its pending deliveries (itemcodec.go), and the last applied journal frame with its
// own, in transactions of migrateBatch items. The first records format 4 and metaMigrate4,
// the first item not rewritten yet, so that a format-3 binary refuses the file from then on
// (it would deliver the checksums as data) and a crash in between resumes where it stopped;
// the last deletes metaMigrate4.
func migrateItemsV3(db *bolt.DB, log *slog.Logger) error {
	moved := 0
	for done := false; !done; {
		err := db.Update(func(tx *bolt.Tx) error {
			b := openBuckets(tx)
			next := uint64(0)
			if v := b.meta.Get(metaMigrate4); v != nil {
				next = decUint(v)
			} else if err := b.meta.Put(metaVersion, encUint(formatItemChecksums)); err != nil {
				return err
			}
			sinks := pendingSinkBuckets(b)
			type kv struct {
				seq uint64
				v   []byte
			}
			var batch []kv
			c := b.items.Cursor()
			for k, v := c.Seek(encUint(next)); k != nil && len(batch) < migrateBatch; k, v = c.Next() {
				batch = append(batch, kv{decUint(k), slices.Clone(v)})
			}
			for _, it := range batch {
				k := encUint(it.seq)
				var pending []string
				for _, s := range sinks {
					if s.ready != nil && s.ready.Get(k) != nil || s.sched != nil && s.sched.Get(k) != nil {
						pending = append(pending, s.name)
					}
				}
				if err := b.items.Put(k, encItem(it.seq, pending, it.v)); err != nil {
					return err
				}
			}
			moved += len(batch)
			if len(batch) == migrateBatch {
				return b.meta.Put(metaMigrate4, encUint(batch[len(batch)-1].seq+1))
			}
			done = true
			if err := b.meta.Put(metaJournalLSN, encLSN(decUint(b.meta.Get(metaJournalLSN)))); err != nil {
				return err
			}
			return b.meta.Delete(metaMigrate4)
		})
		if err != nil {
			return fmt.Errorf("migrate items to format %d: %w", formatItemChecksums, err)
		}
		if !done {
			log.Info("migrating the spool's items to checksummed records", "format", formatItemChecksums, "items_so_far", moved)
		}
	}
	log.Info("spool items migrated", "format", formatItemChecksums, "items", moved)
	return nil
}

// migrateBatch is the most items one transaction of migrateItemsV3 rewrites.
const migrateBatch = 4096

// sinkBuckets are one sink's ready bucket and scheduled index (nil when it has none).
type sinkBuckets struct {
	name         string
	ready, sched *bolt.Bucket
}

// pendingSinkBuckets lists the sinks that have a ready bucket or a scheduled index.
func pendingSinkBuckets(b buckets) []sinkBuckets {
	byName := map[string]*sinkBuckets{}
	var out []*sinkBuckets
	get := func(name []byte) *sinkBuckets {
		s := byName[string(name)]
		if s == nil {
			s = &sinkBuckets{name: string(name)}
			byName[s.name] = s
			out = append(out, s)
		}
		return s
	}
	_ = b.ready.ForEachBucket(func(name []byte) error {
		get(name).ready = b.ready.Bucket(name)
		return nil
	})
	_ = b.schedIdx.ForEachBucket(func(name []byte) error {
		get(name).sched = b.schedIdx.Bucket(name)
		return nil
	})
	res := make([]sinkBuckets, len(out))
	for i, s := range out {
		res[i] = *s
	}
	return res
}
