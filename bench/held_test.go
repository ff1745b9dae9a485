package bench

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
)

// TestHeldChanges reads what a stopped relay still holds: ready and scheduled deliveries in
// its spool, and dead letters.
func TestHeldChanges(t *testing.T) {
	data := t.TempDir()
	sp, err := spool.Open(filepath.Join(data, "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var items []spool.Item
	for _, id := range []string{"ready", "later"} {
		ev := relay.Event{ID: id, App: "a", Object: "page", Field: "feed", Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
		items = append(items, spool.Item{Key: id, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"sink-a"}})
	}
	if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
		t.Fatal(err)
	}
	ds, _ := sp.Ready("sink-a", 0, 10)
	if err := sp.Reschedule("sink-a", ds[1].Seq, time.Now().Add(time.Hour), 1, nil); err != nil {
		t.Fatal(err)
	}
	sp.Close()
	dl, _ := deadletter.Open(filepath.Join(data, "dead-letter"))
	if err := dl.Write(&deadletter.Letter{Sink: "sink-b", Seq: 9, ChangeID: "dead", Change: json.RawMessage(`{"id":"dead"}`)}); err != nil {
		t.Fatal(err)
	}
	held, err := heldChanges(data)
	if err != nil {
		t.Fatal(err)
	}
	if !held["sink-a"]["ready"] || !held["sink-a"]["later"] || !held["sink-b"]["dead"] || len(held["sink-a"]) != 2 {
		t.Errorf("held %v", held)
	}
}
