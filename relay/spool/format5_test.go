package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hubrelay/hubrelay/relay/spool/internal/dedupindex"
)

// downgradeToFormat4 rewrites a closed spool file's dedup keys as format 4 could hold them:
// every key of L0 and of the partitions moves into final runs of one chunk of 2048 records
// each (crossing partition bounds, as format 4 wrote them), stored without their filters, and
// the file says format 4.
func downgradeToFormat4(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		var recs [][]byte
		l0 := tx.Bucket(dedupindex.L0Bucket)
		if err := l0.ForEach(func(k, v []byte) error {
			recs = append(recs, append(slices.Clone(k), v...))
			return nil
		}); err != nil {
			return err
		}
		parts := tx.Bucket(dedupindex.PartsBucket)
		if err := parts.ForEachBucket(func(name []byte) error {
			return parts.Bucket(name).ForEach(func(k, v []byte) error {
				for i := 0; k[0] == 'c' && i < len(v); i += 24 {
					recs = append(recs, slices.Clone(v[i:i+24]))
				}
				return nil
			})
		}); err != nil {
			return err
		}
		slices.SortFunc(recs, func(a, b []byte) int { return bytes.Compare(a[:16], b[:16]) })
		for _, name := range [][]byte{dedupindex.L0Bucket, dedupindex.PartsBucket} {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		id := decUint(meta.Get([]byte("deduprunid")))
		for len(recs) > 0 {
			n := min(len(recs), 2048)
			id++
			run, err := tx.Bucket(dedupindex.RunsBucket).CreateBucket(encUint(id))
			if err != nil {
				return err
			}
			var chunk []byte
			minT, maxT := ^uint64(0), uint64(0)
			for _, r := range recs[:n] {
				chunk = append(chunk, r...)
				at := binary.BigEndian.Uint64(r[16:])
				minT, maxT = min(minT, at), max(maxT, at)
			}
			m := append([]byte{dedupindex.FinalLevel}, encUint(uint64(n))...)
			m = append(append(m, encUint(minT)...), encUint(maxT)...)
			if err := run.Put([]byte("m"), m); err != nil {
				return err
			}
			if err := run.Put(append([]byte{'c'}, chunk[:16]...), chunk); err != nil {
				return err
			}
			recs = recs[n:]
		}
		if err := meta.Put([]byte("deduprunid"), encUint(id)); err != nil {
			return err
		}
		if err := meta.Put([]byte("dedupl0n"), encUint(0)); err != nil {
			return err
		}
		return meta.Put(metaVersion, encUint(4))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpen_MigratesFormat4 takes a format-4 file, whose final runs' chunks cross partition
// bounds, to format 5: every key is still seen, every run is written again with its chunks
// split at the bounds (and its filter), the index checks out, and the keys that come in next
// sweep the old runs into the partitions.
func TestOpen_MigratesFormat4(t *testing.T) {
	s, path := openTest(t, Options{ApplyDelay: time.Nanosecond})
	const n = 5000
	var items []Item
	for i := range n {
		items = append(items, Item{Key: fmt.Sprint("k", i)})
	}
	mustAccept(t, s, t0, items...)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	downgradeToFormat4(t, path)

	s2, err := Open(path, Options{ApplyDelay: time.Nanosecond, dedup: dedupindex.Config{L0Max: 256}})
	if err != nil {
		t.Fatalf("open the format-4 file: %v", err)
	}
	defer s2.Close()
	err = s2.db.View(func(tx *bolt.Tx) error {
		if v := decUint(tx.Bucket(bucketMeta).Get(metaVersion)); v != formatVersion {
			return fmt.Errorf("format %d after the migration", v)
		}
		rs, err := s2.dedup.Runs(tx)
		if err != nil {
			return err
		}
		if len(rs) != 3 {
			return fmt.Errorf("%d runs after the migration, want 3", len(rs))
		}
		for _, r := range rs {
			err := tx.Bucket(dedupindex.RunsBucket).Bucket(encUint(r.ID)).ForEach(func(k, v []byte) error {
				if k[0] == 'c' && binary.BigEndian.Uint16(v)>>6 != binary.BigEndian.Uint16(v[len(v)-24:])>>6 {
					return fmt.Errorf("run %d: a chunk crosses a partition bound", r.ID)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkDedupCounts(t, s2)
	for i, dup := range mustAccept(t, s2, t0.Add(time.Minute), items...) {
		if !dup {
			t.Fatalf("key k%d lost in the migration", i)
		}
	}
	// New keys flush L0 and sweep the migrated runs into the partitions.
	var fresh []Item
	for i := range 4096 {
		fresh = append(fresh, Item{Key: fmt.Sprint("new", i)})
	}
	mustAccept(t, s2, t0.Add(time.Minute), fresh...)
	checkDedupCounts(t, s2)
	err = s2.db.View(func(tx *bolt.Tx) error {
		parts, err := s2.dedup.PartsLen(tx)
		if err == nil && parts == 0 {
			err = fmt.Errorf("no key swept into the partitions")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, dup := range mustAccept(t, s2, t0.Add(2*time.Minute), append(items, fresh...)...) {
		if !dup {
			t.Fatalf("key %d not seen after the sweep", i)
		}
	}
	if got, _ := s2.DedupLen(); got != n+len(fresh) {
		t.Fatalf("DedupLen = %d, want %d", got, n+len(fresh))
	}
}

// TestOpen_RefusesNewerFormat: a file of a later format (a newer hubrelay's: a format-4
// binary meets format 5 so) is refused, not read with the wrong layout.
func TestOpen_RefusesNewerFormat(t *testing.T) {
	s, path := openTest(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(metaVersion, encUint(formatVersion+1))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if s2, err := Open(path, Options{}); err == nil {
		_ = s2.Close()
		t.Fatal("Open took a file of a newer format")
	} else if !strings.Contains(err.Error(), "newer hubrelay") {
		t.Fatalf("Open = %v, want a newer format refused", err)
	}
}
