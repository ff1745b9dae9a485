//go:build !unix

package spool

import "os"

// tryLock does not lock outside Unix: bbolt's own lock, taken right after the file check,
// keeps a second process out.
func tryLock(*os.File, bool) (bool, error) { return true, nil }
