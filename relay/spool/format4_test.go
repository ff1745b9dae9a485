package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// downgradeToFormat3 rewrites a closed format-4 spool file as format 3 stored it: items as
// their bare data, the applied journal frame without its checksum. With from > 0 it leaves
// it as a migration to format 4 cut short leaves it instead: items before from already
// rewritten, metaMigrate4 = from.
func downgradeToFormat3(t *testing.T, path string, from uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := openBuckets(tx)
		type kv struct {
			k, v []byte
		}
		var all []kv
		if err := b.items.ForEach(func(k, v []byte) error {
			_, data, err := decItem(decUint(k), v)
			all = append(all, kv{slices.Clone(k), slices.Clone(data)})
			return err
		}); err != nil {
			return err
		}
		for _, e := range all {
			if from > 0 && decUint(e.k) < from {
				continue
			}
			if err := b.items.Put(e.k, e.v); err != nil {
				return err
			}
		}
		if from > 0 {
			return b.meta.Put(metaMigrate4, encUint(from))
		}
		if err := b.meta.Put(metaJournalLSN, encUint(decUint(b.meta.Get(metaJournalLSN)))); err != nil {
			return err
		}
		return b.meta.Put(metaVersion, encUint(3))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpen_MigratesFormat3 takes a format-3 file (bare item data) to format 4 in several
// transactions, and resumes a migration cut short: every pending delivery keeps its data,
// every item gets its checksum and the sinks still waiting for it, and the file checks out.
func TestOpen_MigratesFormat3(t *testing.T) {
	for _, from := range []uint64{0, 3000} {
		t.Run(fmt.Sprint("resume_from=", from), func(t *testing.T) {
			s, path := openTest(t, Options{ApplyDelay: time.Nanosecond})
			n := migrateBatch + 500 // more than one migration transaction
			want := map[string]map[uint64]string{"a": {}, "b": {}}
			for i := 0; i < n; i += 500 {
				var items []Item
				for j := i; j < min(n, i+500); j++ {
					items = append(items, Item{Key: fmt.Sprint("k", j), Data: []byte(fmt.Sprint("data ", j)), Sinks: []string{"a", "b"}})
				}
				mustAccept(t, s, t0, items...)
			}
			for _, d := range mustReady(t, s, "a", 0, n) {
				want["a"][d.Seq] = string(d.Data)
				want["b"][d.Seq] = string(d.Data)
			}
			var done []uint64
			for seq := range want["a"] {
				if seq%2 == 0 {
					done = append(done, seq)
					delete(want["a"], seq)
				}
			}
			if err := s.Done("a", done...); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			downgradeToFormat3(t, path, from)

			s2, err := Open(path, Options{})
			if err != nil {
				t.Fatalf("open the format-3 file: %v", err)
			}
			defer s2.Close()
			for sink, w := range want {
				got := map[uint64]string{}
				for _, d := range mustReady(t, s2, sink, 0, 2*n) {
					got[d.Seq] = string(d.Data)
				}
				if len(got) != len(w) {
					t.Fatalf("sink %s: %d deliveries after the migration, want %d", sink, len(got), len(w))
				}
				for seq, d := range w {
					if got[seq] != d {
						t.Fatalf("sink %s: delivery %d is %q after the migration, want %q", sink, seq, got[seq], d)
					}
				}
			}
			err = s2.db.View(func(tx *bolt.Tx) error {
				b := openBuckets(tx)
				if v := decUint(b.meta.Get(metaVersion)); v != formatVersion {
					return fmt.Errorf("format %d after the migration", v)
				}
				if b.meta.Get(metaMigrate4) != nil {
					return errors.New("the migration's progress key is left behind")
				}
				if _, ok := decLSN(b.meta.Get(metaJournalLSN)); !ok || len(b.meta.Get(metaJournalLSN)) != 12 {
					return errors.New("the applied journal frame has no checksum")
				}
				return b.items.ForEach(func(k, v []byte) error {
					sinks, _, err := decItem(decUint(k), v)
					if err != nil {
						return fmt.Errorf("item %d: %w", decUint(k), err)
					}
					if wantSinks := []string{"b"}; decUint(k)%2 != 0 {
						wantSinks = []string{"a", "b"}
						if !slices.Equal(sinks, wantSinks) {
							return fmt.Errorf("item %d: sinks %q, want %q", decUint(k), sinks, wantSinks)
						}
					} else if !slices.Equal(sinks, wantSinks) && !slices.Equal(sinks, []string{"a", "b"}) {
						return fmt.Errorf("item %d: sinks %q", decUint(k), sinks)
					}
					return nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if d := verifyContentOf(t, s2); len(d) > 0 {
				t.Fatalf("the migrated file does not check out: %v", d)
			}
		})
	}
}

// verifyContentOf runs verifyContent on an open spool's file.
func verifyContentOf(t *testing.T, s *Spool) []Damage {
	t.Helper()
	var d []Damage
	if err := s.db.View(func(tx *bolt.Tx) error {
		d = verifyContent(tx, s.path)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSpool_DamagedItemNotDelivered: an item whose stored data no longer checks out (damaged
// while the relay runs) is never delivered as if genuine: Ready holds it back and counts it,
// the next Open refuses the file naming it, and Recover sets the file aside, lists the
// delivery as lost and keeps every other.
func TestSpool_DamagedItemNotDelivered(t *testing.T) {
	s, path := openTest(t, Options{ApplyDelay: time.Nanosecond})
	for i := range 3 {
		mustAccept(t, s, t0, item(fmt.Sprint("k", i), fmt.Sprint("order ", i)))
	}
	s.apply.waitApplied()
	ds := mustReady(t, s, "a", 0, 10)
	if len(ds) != 3 {
		t.Fatalf("%d deliveries, want 3", len(ds))
	}
	bad := ds[1].Seq
	if err := s.db.Update(func(tx *bolt.Tx) error {
		items := tx.Bucket(bucketItems)
		v := slices.Clone(items.Get(encUint(bad)))
		v[len(v)-1] ^= 0x5a // a flipped byte of the data
		return items.Put(encUint(bad), v)
	}); err != nil {
		t.Fatal(err)
	}
	got := datasOf(mustReady(t, s, "a", 0, 10))
	if want := []string{"order 0", "order 2"}; !slices.Equal(got, want) {
		t.Fatalf("Ready returned %q with item %d damaged, want %q", got, bad, want)
	}
	mustReady(t, s, "a", 0, 10)
	if n := s.DamagedItems(); n != 1 {
		t.Fatalf("DamagedItems = %d, want 1", n)
	}
	if st, err := s.Stats(); err != nil || st["a"].Damaged != 1 {
		t.Fatalf("Stats: %+v, %v; want 1 damaged delivery of sink a", st, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	_, err := Open(path, Options{})
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "fails its checksum") {
		t.Fatalf("Open of the damaged file: %v, want ErrDamaged naming %s and the checksum", err, path)
	}
	r, err := Recover(path, Options{})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if want := []string{fmt.Sprintf("a/%d", bad)}; !slices.Equal(r.Lost, want) {
		t.Fatalf("Recover lost %q, want %q", r.Lost, want)
	}
	if _, err := os.Stat(filepath.Join(r.SetAside, "spool.db")); err != nil {
		t.Fatalf("the damaged file is not kept: %v", err)
	}
	note, err := os.ReadFile(filepath.Join(r.SetAside, "NOTE.txt"))
	if err != nil || !strings.Contains(string(note), fmt.Sprintf("a/%d", bad)) {
		t.Fatalf("NOTE.txt does not list the lost delivery (%v): %s", err, note)
	}
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open after Recover: %v", err)
	}
	defer s2.Close()
	if got := datasOf(mustReady(t, s2, "a", 0, 10)); !slices.Equal(got, []string{"order 0", "order 2"}) {
		t.Fatalf("after Recover Ready returned %q", got)
	}
}

// TestOpen_JournalBehindFile: a journal that begins after the frame the file has applied
// means the file lost frames that were applied (and whose segments were deleted): Open
// refuses instead of starting without them.
func TestOpen_JournalBehindFile(t *testing.T) {
	s, path := openTest(t, Options{ApplyDelay: time.Nanosecond, test: testHooks{segmentSize: 200}})
	release := holdCommits(t, s)
	for i := range 6 {
		mustAccept(t, s, t0, item(fmt.Sprint("k", i), strings.Repeat("d", 150)))
	}
	cp := copySpool(t, path)
	release()
	segs, err := listSegments(journalDir(cp))
	if err != nil || len(segs) < 3 {
		t.Fatalf("%d segments (%v), want 3 or more", len(segs), err)
	}
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	_, err = Open(cp, Options{})
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "lost changes it had applied") {
		t.Fatalf("Open with the oldest segment gone: %v, want ErrDamaged", err)
	}
}
