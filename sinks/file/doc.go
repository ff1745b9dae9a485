// Package file appends changes to a local JSON Lines file, one envelope
// (relay.AppendEnvelope) per line.
//
// Deliver returns only after its line is on disk (fsync); DeliverBatch appends the lines of
// several changes, in order, and returns once all of them are. Concurrent calls share one
// write and one fsync (group commit): the first caller to find the file idle becomes the
// leader, writes every line queued so far (single lines and whole batches alike) in one
// write, fsyncs once and wakes the others; callers that queued meanwhile are then led by the
// first of them. So durability costs one fsync per group, not per change, and a batch of any
// size costs one write and one fsync of its own at most.
//
// A change's value keeps its bytes, except that raw line breaks, which valid JSON holds only
// as insignificant whitespace, become spaces so that every change stays on one line. A batch
// is the same lines Deliver would write, one after the other; the file never holds a batch
// marker.
//
// With Options.MaxBytes the file is rotated before a write would make it larger: it is
// closed, path.N-1 … path.1 are renamed to path.N … path.2, path becomes path.1 (the oldest,
// path.MaxFiles, is replaced) and a new path is opened; the directory is fsynced. Rotation
// never splits a batch across files, unless the batch alone is larger than MaxBytes: its
// lines then fill the files one by one, as single changes would. A single line longer than
// MaxBytes is written alone in its file.
//
// A failed write is cut off again (truncate) so that the file stays line-aligned, and is
// reported as a non-permanent error: a full disk may clear. Delivery is at least once: a line
// whose caller saw an error or gave up may still have been written (for a batch split over
// several files, the files before the failure keep their lines), and is written again on
// retry. Readers should drop repeats by the envelope's id.
package file
