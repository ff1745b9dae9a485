package relay

import (
	"context"
	"errors"
)

// Sink is a destination of deliveries. The delivery engine calls Deliver once per attempt of
// one (change, sink) pair; several goroutines may call it at once when the sink's concurrency
// is above one.
//
// Deliver returns nil when the destination has taken the change. Delivery is at least once: the
// same Event (same ID) may be delivered again after a crash or a lost answer, so destinations
// should use Event.ID to drop repeats. An error wrapping ErrPermanent means retrying cannot
// help (the destination rejected the change); the delivery is dead-lettered at once. Any other
// error is retried later with backoff until the sink's retry budget is spent. Deliver must
// honour ctx: when it is cancelled the attempt is abandoned and retried after restart.
//
// A sink that holds resources (open files, background flushers) also implements SinkCloser.
// When a configuration reload replaces or removes a sink, and at shutdown, the command calls
// Close once the engine no longer delivers to it; Deliver is not called after Close.
type Sink interface {
	Name() string
	Deliver(ctx context.Context, ev *Event) error
}

// ErrPermanent marks a delivery error that retrying cannot fix. Wrap it:
// fmt.Errorf("orders: status 400: %w", relay.ErrPermanent).
var ErrPermanent = errors.New("permanent failure")

// StatusError is returned by sinks that speak HTTP, so the engine and dead letters can record
// the status of an attempt.
type StatusError struct {
	Status int    // HTTP status code of the last response, 0 when none arrived
	Msg    string // short, secret-free description
	Perm   bool   // true when retrying cannot help
}

func (e *StatusError) Error() string { return e.Msg }

// Is reports whether target is ErrPermanent and the error is permanent.
func (e *StatusError) Is(target error) bool { return target == ErrPermanent && e.Perm }

// BatchSink is a Sink that can take several changes in one call. DeliverBatch delivers evs in
// order as one unit: nil means every change was taken; an error means none may be assumed
// taken (the engine retries the batch, and on a permanent error retries each change alone so
// one bad change never dead-letters its neighbours). len(evs) >= 1.
type BatchSink interface {
	Sink
	DeliverBatch(ctx context.Context, evs []*Event) error
}

// SinkCloser is the part of the Sink contract for sinks that hold resources. Close releases
// them (for a file sink: commit what is queued, fsync and close the file) and is called exactly
// once, after the last Deliver or DeliverBatch call has returned: by the command when a reload
// replaces or removes the sink, and at shutdown. Close honours ctx like Deliver: when ctx ends
// first it returns an error wrapping ctx's, and lets go of the resources as soon as it can
// (the process may be exiting). Sinks without resources do not implement it (the HTTP sinks
// do: Close closes their idle keep-alive connections); callers check for it with a type
// switch on this interface, never on io.Closer.
type SinkCloser interface {
	Sink
	Close(ctx context.Context) error
}
