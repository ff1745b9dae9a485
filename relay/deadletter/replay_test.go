package deadletter_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

func TestDir_QueueReplay(t *testing.T) {
	d := openDir(t)
	a, b, c := letter("orders", 1), letter("ops", 2), letter("orders", 3)
	write(t, d, a, b, c)

	if err := d.QueueReplay(c.ID, a.ID); err != nil {
		t.Fatal(err)
	}
	listed, err := d.List(deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if g := ids(listed); !slices.Equal(g, []string{b.ID}) {
		t.Errorf("List after QueueReplay = %q, want %q", g, b.ID)
	}
	if _, err := d.Get(a.ID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get of a queued letter: %v, want fs.ErrNotExist", err)
	}

	pending, err := d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pending, []*deadletter.Letter{a, c}) {
		t.Fatalf("Pending = %+v, want a and c in DeadAt order", pending)
	}

	if err := d.Ack(a.ID); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(a.ID); err != nil {
		t.Errorf("second Ack: %v, want nil", err)
	}
	pending, err = d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if g := ids(pending); !slices.Equal(g, []string{c.ID}) {
		t.Errorf("Pending after Ack = %q, want %q", g, c.ID)
	}
	if n, err := d.Count(""); err != nil || n != 1 {
		t.Errorf("Count = %d, %v; want 1 (queued letters are not dead letters)", n, err)
	}
}

func TestDir_QueueReplayPartial(t *testing.T) {
	d := openDir(t)
	good := letter("orders", 1)
	write(t, d, good)
	corrupt := filepath.Join(d.Path(), "broken.json")
	if err := os.WriteFile(corrupt, []byte(`{"version":1,`), 0o640); err != nil {
		t.Fatal(err)
	}

	err := d.QueueReplay("missing", "broken", good.ID)
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, deadletter.ErrCorrupt) {
		t.Fatalf("QueueReplay error %v, want fs.ErrNotExist and ErrCorrupt", err)
	}
	if _, statErr := os.Stat(corrupt); statErr != nil {
		t.Errorf("corrupt letter was moved: %v", statErr)
	}
	pending, perr := d.Pending()
	if perr != nil {
		t.Fatal(perr)
	}
	if g := ids(pending); !slices.Equal(g, []string{good.ID}) {
		t.Errorf("Pending = %q, want the good letter queued despite the others", g)
	}
}

func TestDir_QueueReplayReplacesWaiting(t *testing.T) {
	d := openDir(t)
	write(t, d, letter("orders", 1))
	if err := d.QueueReplay("orders-00000000000000000001"); err != nil {
		t.Fatal(err)
	}
	// The replayed delivery dies again before the relay acknowledged the first replay.
	again := letter("orders", 1)
	again.Reason = "permanent: status 400"
	write(t, d, again)
	if err := d.QueueReplay(again.ID); err != nil {
		t.Fatal(err)
	}
	pending, err := d.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 1 || pending[0].Reason != again.Reason {
		t.Errorf("Pending = %+v, want only the newer letter", pending)
	}
}

func TestDir_PendingCorrupt(t *testing.T) {
	d := openDir(t)
	write(t, d, letter("orders", 1))
	if err := d.QueueReplay("orders-00000000000000000001"); err != nil {
		t.Fatal(err)
	}
	replay := filepath.Join(d.Path(), "replay")
	// A file half-copied in by hand, and a temporary file, next to a good letter.
	if err := os.WriteFile(filepath.Join(replay, "manual.json"), []byte(`{"version":1,"si`), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(replay, ".tmp-x.json-1"), []byte(`{`), 0o640); err != nil {
		t.Fatal(err)
	}
	pending, err := d.Pending()
	if !errors.Is(err, deadletter.ErrCorrupt) {
		t.Errorf("Pending error %v, want ErrCorrupt", err)
	}
	if g := ids(pending); !slices.Equal(g, []string{"orders-00000000000000000001"}) {
		t.Errorf("Pending = %q", g)
	}
	if err := d.Ack("manual"); err != nil {
		t.Errorf("Ack of a corrupt file: %v", err)
	}
	if _, err := d.Pending(); err != nil {
		t.Errorf("Pending after removing the corrupt file: %v", err)
	}
}
