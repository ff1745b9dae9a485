//go:build unix

package spool

import (
	"errors"
	"os"
	"syscall"
)

// tryLock takes a non-blocking flock on f; false when another open file holds a conflicting
// one. (bbolt locks the same way, so the two exclude each other.)
func tryLock(f *os.File, exclusive bool) (bool, error) {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}
