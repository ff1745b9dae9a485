package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// openChecked opens the bbolt file at path for the spool (read-only with bopt.ReadOnly), so that no
// damaged or truncated file can crash the process: it takes the file's lock itself, checks
// the file with checkBoltFile while it holds it (returning a *DamageError for any damage),
// and only then lets bbolt map it, in a goroutine that turns a memory fault into a panic
// (debug.SetPanicOnFault) and recovers from any panic, as a last line of defence. A missing
// file is created; an empty one is refused if the spool existed before (its journal
// directory does), as it means the file was truncated. ErrLocked when another process holds
// the file for bopt.Timeout. The check is returned too (nil for a new file). Errors other than
// a *DamageError do not name the file: the caller does.
func openChecked(path string, bopt *bolt.Options, log *slog.Logger) (*bolt.DB, *boltCheck, error) {
	var chk *boltCheck
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, nil, withoutPath(err, path)
	case !st.Mode().IsRegular():
		return nil, nil, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	default:
		unlock, err := lockFile(path, !bopt.ReadOnly, bopt.Timeout)
		if err != nil {
			return nil, nil, err
		}
		chk, err = checkSpoolFile(path)
		unlock()
		if err != nil {
			return nil, nil, err
		}
		if chk != nil && chk.fallback() {
			bad := chk.metas[1-chk.use.page]
			log.Warn("a meta page of the spool file is damaged; the file opens at its previous transaction and the journal re-applies what that lacks",
				"path", path, "meta_page", bad.page, "err", bad.err, "txid", chk.use.txid)
		}
	}
	db, err := safeBoltOpen(path, bopt)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, nil, ErrLocked
		}
		return nil, nil, err
	}
	return db, chk, nil
}

// checkSpoolFile checks the existing spool file at path: a *DamageError if it is damaged; an
// empty file is damaged when the spool's journal directory exists (a spool that was opened
// once has one), else it is a file whose creation a crash cut short, which bbolt initialises.
func checkSpoolFile(path string) (*boltCheck, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, withoutPath(err, path)
	}
	if st.Size() == 0 {
		if _, err := os.Stat(journalDir(path)); err != nil {
			return nil, nil
		}
		return nil, &DamageError{Path: path, Damage: []Damage{{File: path, ToEnd: true,
			What: "spool file: the file is empty (truncated): the spool existed before (its journal directory does)"}}}
	}
	chk, err := checkBoltFile(path, nil)
	if err != nil {
		return nil, fmt.Errorf("check the file: %w", withoutPath(err, path))
	}
	if len(chk.damage) > 0 {
		return chk, &DamageError{Path: path, Damage: chk.damage}
	}
	return chk, nil
}

// safeBoltOpen runs bolt.Open and a first read transaction in a goroutine in which a memory
// fault (SIGBUS on a file shorter than its mapping) is a panic, and a panic an error that
// names the file and the recovery.
func safeBoltOpen(path string, bopt *bolt.Options) (*bolt.DB, error) {
	type result struct {
		db  *bolt.DB
		err error
	}
	ch := make(chan result, 1)
	var file *os.File
	opt := *bopt
	opt.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	go func() {
		var db *bolt.DB
		defer func() {
			if p := recover(); p != nil {
				if db != nil {
					_ = db.Close()
				} else if file != nil {
					_ = file.Close() // releases the lock; the mapping, if any, stays
				}
				ch <- result{err: &DamageError{Path: path, Damage: []Damage{{File: path,
					What: fmt.Sprintf("spool file: bbolt failed reading it: %v", p)}}}}
			}
		}()
		debug.SetPanicOnFault(true)
		var err error
		db, err = bolt.Open(path, 0o600, &opt)
		if err == nil {
			err = db.View(func(tx *bolt.Tx) error {
				_ = tx.Bucket(bucketMeta)
				return nil
			})
			if err != nil {
				_ = db.Close()
				db = nil
			}
		}
		if err != nil {
			err = wrapBoltErr(path, err)
		}
		ch <- result{db, err}
	}()
	r := <-ch
	return r.db, r.err
}

// wrapBoltErr turns bbolt's errors about a file it cannot read into a *DamageError; others
// are returned as they are, for the caller to name the file.
func wrapBoltErr(path string, err error) error {
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return err
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
		return &DamageError{Path: path, Damage: []Damage{{File: path, What: "spool file: " + err.Error()}}}
	}
	return withoutPath(err, path)
}

// lockFile takes an flock on path (exclusive, or shared), waiting up to timeout; ErrLocked
// after that. The returned function releases it.
func lockFile(path string, exclusive bool, timeout time.Duration) (func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, withoutPath(err, path)
	}
	deadline := time.Now().Add(timeout)
	for {
		ok, err := tryLock(f, exclusive)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("lock: %w", err)
		}
		if ok {
			return func() { _ = f.Close() }, nil
		}
		if time.Now().After(deadline) {
			_ = f.Close()
			return nil, ErrLocked
		}
		time.Sleep(50 * time.Millisecond)
	}
}
