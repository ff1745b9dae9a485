package spool

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

// memBound is the spool's bound on the file's pages resident in the process (BoundMemory).
type memBound struct {
	above atomic.Int64 // release once file-backed resident memory exceeds base by this; 0: off
	base  atomic.Int64 // the process's file-backed resident bytes when the bound was set

	mu    sync.Mutex // one check or release at a time; guards statm
	statm *os.File   // /proc/self/statm, kept open
}

// close closes what the bound keeps open.
func (m *memBound) close() {
	m.above.Store(0)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.statm != nil {
		m.statm.Close()
		m.statm = nil
	}
}

// statmShared parses the third field of /proc/<pid>/statm: resident shared pages, which are
// the file-backed ones (RssFile + RssShmem).
func statmShared(b []byte) (int64, error) {
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return 0, fmt.Errorf("statm: %d fields", len(f))
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("statm: %w", err)
	}
	return n, nil
}

// faultAround is the span a read fault on a file mapping makes resident: the kernel's
// default fault_around_bytes, aligned to itself.
const faultAround = 64 << 10

// mappedBlocks collects the fault-around blocks of the file's map that values read in a
// transaction lie in. A nil *mappedBlocks collects nothing.
type mappedBlocks []uintptr

// add records the blocks v lies in; v must point into the map (a read transaction's value).
func (m *mappedBlocks) add(v []byte) {
	if m == nil || len(v) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(v)))
	for a := p &^ (faultAround - 1); a < p+uintptr(len(v)); a += faultAround {
		if n := len(*m); n == 0 || (*m)[n-1] != a {
			*m = append(*m, a)
		}
	}
}

// boundEvery is how many deliveries a write transaction moves or deletes between checks of
// the bound on the file's resident pages (boundIn). A backlog's deliveries that are retried,
// promoted or done lie all over the ready queue, each in its own leaf page, and a page fault
// maps the 64 KiB around it: a Promote of 1000 made ~15 MiB resident before it committed.
// 64 deliveries are at most 4 MiB.
const boundEvery = 64

// boundIn checks the bound inside write transaction tx before the i-th delivery it handles,
// every boundEvery (checkMemoryIn).
func (s *Spool) boundIn(tx *bolt.Tx, i int) {
	if i > 0 && i%boundEvery == 0 {
		s.checkMemoryIn(tx)
	}
}
