package deadletter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// QueueReplay hands the letters named ids to the running relay: each <ID>.json is checked to
// be a readable letter, then renamed into the replay folder (a move within one filesystem, so a
// letter is always in exactly one of the two places), and both directories are fsynced.
//
// A letter already waiting in the replay folder under the same ID is replaced. Every id is
// tried; the error joins one error per id that could not be queued (wrapping fs.ErrNotExist,
// ErrInvalidID or ErrCorrupt), and the corrupt or missing ones stay where they were.
func (d *Dir) QueueReplay(ids ...string) error {
	var (
		errs  []error
		moved bool
	)
	for _, id := range ids {
		if err := d.queue(id); err != nil {
			errs = append(errs, fmt.Errorf("queue replay: %w", err))
			continue
		}
		moved = true
	}
	if moved {
		// The new name first, then the removal of the old one: after a crash the letter is
		// at least in replay/, never in neither place.
		if err := syncDir(d.replay); err != nil {
			errs = append(errs, fmt.Errorf("queue replay: %w", err))
		}
		if err := syncDir(d.path); err != nil {
			errs = append(errs, fmt.Errorf("queue replay: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (d *Dir) queue(id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := readLetter(d.path, id+".json", id); err != nil {
		return err
	}
	return os.Rename(filepath.Join(d.path, id+".json"), filepath.Join(d.replay, id+".json"))
}

// Pending returns the letters waiting in the replay folder, sorted by DeadAt, then ID. The
// running relay calls it when it polls the folder, commits a new delivery for each letter to
// its spool, and then calls Ack.
//
// As with List, files that cannot be read are reported in the returned error (joined, one per
// file) next to the letters that could; such a file stays in the folder, and is reported again,
// until someone fixes or removes it.
func (d *Dir) Pending() ([]*Letter, error) {
	entries, err := os.ReadDir(d.replay)
	if err != nil {
		return nil, fmt.Errorf("list pending replays: %w", err)
	}
	return readLetters(d.replay, entries, nil)
}

// Ack removes replay/<ID>.json once the relay has committed the replayed delivery to its
// spool, and fsyncs the replay folder. Acknowledging a letter that is already gone is not an
// error. A relay that crashes between its commit and Ack finds the letter pending again after
// restart and replays it once more: replay is at least once, like every delivery.
func (d *Dir) Ack(id string) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("ack replay: %w", err)
	}
	err := os.Remove(filepath.Join(d.replay, id+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ack replay: %w", err)
	}
	if err := syncDir(d.replay); err != nil {
		return fmt.Errorf("ack replay %s: %w", id, err)
	}
	return nil
}
