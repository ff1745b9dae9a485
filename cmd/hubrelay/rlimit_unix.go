//go:build unix

package main

import (
	"fmt"
	"syscall"
)

// raiseFileLimit raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit, and
// returns both, and whether it raised the soft one. (The Go runtime does so at start on some
// systems already; doing it here makes it explicit, and logged.)
func raiseFileLimit() (soft, hard uint64, raised bool, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, false, fmt.Errorf("get open file limit: %w", err)
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return uint64(lim.Cur), uint64(lim.Max), false, fmt.Errorf("set open file limit to %d: %w", lim.Max, err)
		}
		return uint64(want.Cur), uint64(lim.Max), true, nil
	}
	return uint64(lim.Cur), uint64(lim.Max), false, nil
}
