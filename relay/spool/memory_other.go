//go:build !linux

package spool

import bolt "go.etcd.io/bbolt"

// ReleaseMemory is a no-op outside Linux.
func (s *Spool) ReleaseMemory() error { return nil }

// BoundMemory is a no-op outside Linux.
func (s *Spool) BoundMemory(above int64) error { return nil }

// CheckMemory is a no-op outside Linux.
func (s *Spool) CheckMemory() error { return nil }

func (s *Spool) checkMemory() {}

func (s *Spool) checkMemoryIn(*bolt.Tx) {}

func (s *Spool) trackReads() *mappedBlocks { return nil }

func (s *Spool) dropBlocks(*bolt.Tx, *mappedBlocks) {}
