package spool

import (
	"fmt"
	"os"
	"slices"
	"syscall"

	bolt "go.etcd.io/bbolt"
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
	if errno := madvise(info.Data, uintptr(size)); errno != 0 {
		return fmt.Errorf("release spool memory: madvise: %w", errno)
	}
	return nil
}

// BoundMemory keeps the spool file's pages from piling up in the process's resident memory:
// it releases them now (ReleaseMemory), takes the process's file-backed resident memory as
// the base, and from then on releases them again whenever that grows past the base by more
// than above, checked after every commit of the file and every Ready that read the file, and
// on CheckMemory. Ready also drops, as it ends, the pages around the items it copied out.
//
// A page fault on a file mapping maps not one page but the 64 KiB around it (the kernel's
// fault-around, which MADV_RANDOM does not turn off), and a backlog's items lie scattered over
// the file: a Ready of 256 items made ~20 MiB resident, a commit up to ~30 MiB, so a bound
// checked only every 100 ms was overshot by more than itself. above <= 0 turns the bound off.
func (s *Spool) BoundMemory(above int64) error {
	if above <= 0 {
		s.mem.above.Store(0)
		return nil
	}
	s.mem.mu.Lock()
	defer s.mem.mu.Unlock()
	if s.mem.statm == nil {
		f, err := os.Open("/proc/self/statm")
		if err != nil {
			return fmt.Errorf("bound spool memory: %w", err)
		}
		s.mem.statm = f
	}
	if err := s.ReleaseMemory(); err != nil {
		return err
	}
	base, err := s.mem.fileResident()
	if err != nil {
		return fmt.Errorf("bound spool memory: %w", err)
	}
	s.mem.base.Store(base)
	s.mem.above.Store(above)
	return nil
}

// CheckMemory releases the spool file's pages if the process's file-backed resident memory
// has grown past BoundMemory's bound; it does nothing without one, or while another check
// runs.
func (s *Spool) CheckMemory() error { return s.overBound(s.ReleaseMemory) }

// overBound calls release if the process's file-backed resident memory has grown past
// BoundMemory's bound, with the check's lock held; it does nothing without a bound, or while
// another check runs.
func (s *Spool) overBound(release func() error) error {
	above := s.mem.above.Load()
	if above <= 0 || !s.mem.mu.TryLock() {
		return nil
	}
	defer s.mem.mu.Unlock()
	rss, err := s.mem.fileResident()
	if err != nil {
		return fmt.Errorf("check spool memory: %w", err)
	}
	if rss <= s.mem.base.Load()+above {
		return nil
	}
	return release()
}

// checkMemory is CheckMemory for the spool's own callers, which have no one to report to: a
// failure is logged at debug level (the periodic CheckMemory reports it).
func (s *Spool) checkMemory() {
	if err := s.CheckMemory(); err != nil {
		s.log.Debug("bound spool memory", "err", err)
	}
}

// checkMemoryIn is checkMemory for a write transaction in progress, whose pages would
// otherwise stay resident until it ends: Promote, RescheduleBatch and Done call it as they
// move deliveries (boundIn; in a 1M backlog a Promote or a rescheduler's commit made 11–15 MiB
// resident), the dedup index as its sweep or Expire reads partitions (SetRelease). The map
// cannot move while tx, the one write transaction, is open (bbolt remaps only in a write
// transaction's commit), so it releases the range tx sees without a transaction of its own,
// which, taken inside a read transaction, could wait forever on a writer waiting to remap.
// tx is only read. A failure is left to the next check after the commit.
func (s *Spool) checkMemoryIn(tx *bolt.Tx) {
	_ = s.overBound(func() error {
		page := int64(os.Getpagesize())
		if size := tx.Size() &^ (page - 1); size > 0 {
			_ = madvise(s.db.Info().Data, uintptr(size)) // only memory: the pages stay in the page cache
		}
		return nil
	})
}

// fileResident returns the process's file-backed (and shared) resident memory in bytes: the
// third field of /proc/self/statm, in pages. Called with mu held.
func (m *memBound) fileResident() (int64, error) {
	var buf [128]byte
	n, err := m.statm.ReadAt(buf[:], 0)
	if n == 0 && err != nil {
		return 0, fmt.Errorf("read /proc/self/statm: %w", err)
	}
	pages, err := statmShared(buf[:n])
	if err != nil {
		return 0, err
	}
	return pages * int64(os.Getpagesize()), nil
}

// trackReads returns where a read transaction of Ready records the blocks of the items it
// copies out: nil unless the memory is bounded.
func (s *Spool) trackReads() *mappedBlocks {
	if s.mem.above.Load() <= 0 {
		return nil
	}
	return &mappedBlocks{}
}

// dropBlocks releases the blocks of m that lie in tx's part of the map, merged into ranges, as
// ReleaseMemory does the whole map. It runs inside tx, so the map cannot move meanwhile.
func (s *Spool) dropBlocks(tx *bolt.Tx, m *mappedBlocks) {
	if m == nil || len(*m) == 0 {
		return
	}
	start := s.db.Info().Data
	end := start + uintptr(tx.Size())
	bl := *m
	slices.Sort(bl)
	for i := 0; i < len(bl); {
		j := i + 1
		for j < len(bl) && bl[j] <= bl[j-1]+faultAround {
			j++
		}
		from, to := max(bl[i], start), min(bl[j-1]+faultAround, end)
		if from < to {
			_ = madvise(from, to-from) // only memory: the pages stay in the page cache
		}
		i = j
	}
}

func madvise(addr, n uintptr) syscall.Errno {
	_, _, errno := syscall.Syscall(syscall.SYS_MADVISE, addr, n, syscall.MADV_DONTNEED)
	return errno
}
