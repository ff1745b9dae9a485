// Package file appends changes to a local JSON Lines file, one envelope
// (relay.AppendEnvelope) per line.
//
// Deliver returns only after its line is on disk (fsync). Concurrent Deliver calls share one
// write and one fsync (group commit): the first caller to find the file idle becomes the
// leader, writes every line queued so far in one write, fsyncs once and wakes the others;
// callers that queued meanwhile are then led by the first of them. So durability costs one
// fsync per batch, not per change.
//
// A change's value keeps its bytes, except that raw line breaks, which valid JSON holds only
// as insignificant whitespace, become spaces so that every change stays on one line.
//
// With Options.MaxBytes the file is rotated before a write would make it larger: it is
// closed, path.N-1 … path.1 are renamed to path.N … path.2, path becomes path.1 (the oldest,
// path.MaxFiles, is replaced) and a new path is opened; the directory is fsynced. A failed
// write is cut off again (truncate) so that the file stays line-aligned, and is reported as a
// non-permanent error: a full disk may clear. Delivery is at least once: a line whose caller
// saw an error or gave up may still have been written, and is written again on retry.
package file
