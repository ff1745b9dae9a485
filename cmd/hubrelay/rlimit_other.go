//go:build !unix

package main

// raiseFileLimit does nothing where there is no RLIMIT_NOFILE; soft is 0 (unknown).
func raiseFileLimit() (soft, hard uint64, raised bool, err error) { return 0, 0, false, nil }
