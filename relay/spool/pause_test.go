package spool

import (
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestSpool_SinkStateDamaged: an unreadable state record reads as paused with an error naming
// the sink (nothing is delivered against an operator's wish), and a pause or resume replaces
// it.
func TestSpool_SinkStateDamaged(t *testing.T) {
	s, _ := openTest(t, Options{})
	for _, v := range [][]byte{{}, {9, 0, 1, 2, 3, 4, 5, 6, 7, 8}, {sinkStateV1, 7, 1, 2, 3, 4, 5, 6, 7, 8}, {sinkStateV1}} {
		err := s.update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketSinkState)
			if err != nil {
				return err
			}
			return b.Put([]byte("orders"), v)
		})
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.SinkStates()
		if err == nil || !m["orders"].Paused {
			t.Fatalf("record %x: SinkStates = %v, %v; want orders paused and an error", v, m, err)
		}
		at := time.Unix(1700000000, 0)
		st, changed, err := s.SetPaused("orders", false, at, "fixer")
		if err != nil || !changed || st.Paused || !st.Since.Equal(at) {
			t.Fatalf("record %x: resume = %+v, %v, %v", v, st, changed, err)
		}
		if m, err := s.SinkStates(); err != nil || m["orders"].Paused || m["orders"].By != "fixer" {
			t.Fatalf("record %x: after resume SinkStates = %v, %v", v, m, err)
		}
	}
	if _, _, err := s.SetPaused("", true, time.Now(), ""); err == nil {
		t.Fatal("SetPaused of an empty sink name: no error")
	}
}
