package spool

import (
	"fmt"
	"os"
	"syscall"
)

// ReleaseMemory drops the spool file's pages from the process's resident memory. bbolt maps
// the whole file and reads through the map, so every page a transaction touches (dedup
// lookups, a backlog being drained) stays resident and counts in RSS; a large backlog would
// look like a memory leak to a container limit. The pages stay in the kernel's page cache and
// are faulted back in on the next read.
//
// A read transaction is held meanwhile: bbolt cannot remap the file while one is open, so the
// range advised is exactly the current map.
func (s *Spool) ReleaseMemory() error {
	tx, err := s.db.Begin(false)
	if err != nil {
		return fmt.Errorf("release spool memory: %w", err)
	}
	defer tx.Rollback()
	page := int64(os.Getpagesize())
	size := tx.Size() &^ (page - 1)
	if size <= 0 {
		return nil
	}
	info := s.db.Info()
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, info.Data, uintptr(size), syscall.MADV_DONTNEED); errno != 0 {
		return fmt.Errorf("release spool memory: madvise: %w", errno)
	}
	return nil
}
