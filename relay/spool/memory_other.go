//go:build !linux

package spool

// ReleaseMemory is a no-op outside Linux.
func (s *Spool) ReleaseMemory() error { return nil }
