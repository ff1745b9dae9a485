package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

func keyed(id, sink, key string) relay.Item {
	ev := relay.Event{ID: id, Object: "page", Field: "feed", ReceivedAt: time.Now()}
	if key != "" {
		ev.Order = []relay.OrderKey{{Sink: sink, Key: key}}
	}
	return relay.Item{Key: id, Data: relay.AppendBinary(nil, &ev), Sinks: []string{sink, "plain"}}
}

func readySeqs(t *testing.T, s *postgres.Store, sink string) []uint64 {
	t.Helper()
	ds, err := s.Ready(sink, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

// A replica is never handed a delivery whose ordering key has an older pending one (ready,
// claimed, or waiting for a retry), even when it takes a sink over from another replica; the
// same change for a sink without the key is not held back.
func TestReplicas_OrderKeyClaims(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	a := open(t, url, schema, postgres.Options{})
	b := open(t, url, schema, postgres.Options{})
	defer b.Close()
	items := []relay.Item{keyed("k1", "bot", "K"), keyed("k2", "bot", "K"), keyed("l1", "bot", "L"), keyed("k3", "bot", "K"), keyed("u", "bot", "")}
	if _, err := a.Accept(context.Background(), items, time.Now()); err != nil {
		t.Fatal(err)
	}
	all := readySeqs(t, a, "plain")
	if len(all) != 5 {
		t.Fatalf("plain sink: %v ready, want all 5", all)
	}
	k1, k2, l1, k3, u := all[0], all[1], all[2], all[3], all[4]
	if got := fmt.Sprint(readySeqs(t, a, "bot")); got != fmt.Sprint([]uint64{k1, l1, u}) {
		t.Fatalf("bot: Ready = %s, want the first of each key and the unkeyed one %v", got, []uint64{k1, l1, u})
	}
	// k1 fails: waiting for its retry, it still holds back k2 and k3.
	if err := a.Reschedule("bot", k1, time.Now().Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Done("bot", l1, u); err != nil {
		t.Fatal(err)
	}
	if got := readySeqs(t, a, "bot"); len(got) != 0 {
		t.Fatalf("bot with k1 waiting for a retry: Ready = %v, want none", got)
	}
	// a hands the sink over; b knows nothing of k1's retry, and still gets nothing of K.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readySeqs(t, b, "bot"); len(got) != 0 {
		t.Fatalf("b, after taking over: Ready = %v, want none while k1 waits", got)
	}
	if _, err := b.Promote(time.Now().Add(2 * time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := readySeqs(t, b, "bot"); fmt.Sprint(got) != fmt.Sprint([]uint64{k1}) {
		t.Fatalf("after k1's retry is due: Ready = %v, want [%d]", got, k1)
	}
	if err := b.Done("bot", k1); err != nil {
		t.Fatal(err)
	}
	if got := readySeqs(t, b, "bot"); fmt.Sprint(got) != fmt.Sprint([]uint64{k2}) {
		t.Fatalf("after k1: Ready = %v, want [%d] (then %d)", got, k2, k3)
	}
}

// A replayed dead letter of an ordered sink keeps its ordering key in the database: it waits
// behind the pending changes of its key, and the later ones wait behind it.
func TestDeadLetters_ReplayKeepsOrderKey(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	s := open(t, url, schema, postgres.Options{})
	defer s.Close()
	if _, err := s.Accept(context.Background(), []relay.Item{keyed("k2", "bot", "K")}, time.Now()); err != nil {
		t.Fatal(err)
	}
	k2 := readySeqs(t, s, "bot")
	if len(k2) != 1 {
		t.Fatalf("bot: Ready = %v, want k2 alone", k2)
	}
	change := []byte(`{"id":"k1","object":"page","field":"feed","entry_id":"1","value":{}}`)
	l := &deadletter.Letter{ID: "replay-k1", ChangeID: "k1", Sink: "bot", OrderKey: "K", Change: change,
		Reason: "giving up after 3 attempt(s): status 503", FirstAt: time.Now()}
	dl := s.DeadLetters()
	if err := dl.Write(l); err != nil {
		t.Fatal(err)
	}
	if err := dl.Replay(context.Background(), l, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Done("bot", k2[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Accept(context.Background(), []relay.Item{keyed("k3", "bot", "K")}, time.Now()); err != nil {
		t.Fatal(err)
	}
	// The replayed k1 is the oldest pending change of K now: Ready hands it out alone, and
	// k3, accepted after it, waits.
	got := readySeqs(t, s, "bot")
	if len(got) != 1 || got[0] <= k2[0] {
		t.Fatalf("bot after replaying k1 and accepting k3: Ready = %v, want the replayed k1 alone", got)
	}
	ds, err := s.Ready("bot", 0, 10)
	if err != nil || len(ds) != 1 || relay.OrderKeyOf(ds[0].Data, "bot") != "K" {
		t.Fatalf("Ready = %+v, %v; want the replayed change with key K", ds, err)
	}
}
