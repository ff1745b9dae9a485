package spool

import (
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// committer is the spool's group commit. One goroutine runs write transactions one after the
// other; each takes every call queued when it starts (up to maxSize). A lone call commits at
// once — no timer to wait for, unlike bbolt's DB.Batch — and calls that arrive while a commit
// and its fsync run share the next one, so commits grow with the load by themselves.
// delay, when set, makes each commit wait that long for company first (storage.max_batch_delay).
//
// A call's function may run more than once: when one function of a shared transaction fails,
// the transaction is rolled back, that function runs alone, and the others run again without
// it. Functions must reset what they report at their start.
type committer struct {
	db      *bolt.DB
	maxSize int
	delay   time.Duration

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []*call
	closed bool
	done   chan struct{}
}

type call struct {
	fn  func(*bolt.Tx) error
	err chan error
}

// errCallFailed carries the call whose function failed out of a shared transaction.
type errCallFailed struct {
	c   *call
	err error
}

func (e *errCallFailed) Error() string { return e.err.Error() }

func newCommitter(db *bolt.DB, maxSize int, delay time.Duration) *committer {
	c := &committer{db: db, maxSize: maxSize, delay: delay, done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.loop()
	return c
}

// do runs fn in a shared write transaction and returns once that transaction is committed
// (fsync'd) or has failed.
func (c *committer) do(fn func(*bolt.Tx) error) error {
	cl := &call{fn: fn, err: make(chan error, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, cl)
	c.cond.Signal()
	c.mu.Unlock()
	return <-cl.err
}

// close commits what is queued, then stops the loop. Calls after close get ErrClosed.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && !c.closed {
			c.cond.Wait()
		}
		if len(c.queue) == 0 {
			c.mu.Unlock()
			return
		}
		if c.delay > 0 && len(c.queue) < c.maxSize && !c.closed {
			c.mu.Unlock()
			time.Sleep(c.delay)
			c.mu.Lock()
		}
		n := min(len(c.queue), c.maxSize)
		batch := make([]*call, n)
		copy(batch, c.queue)
		c.queue = append(c.queue[:0], c.queue[n:]...)
		c.mu.Unlock()
		c.run(batch)
	}
}

// run commits batch in one transaction, setting aside any call whose function fails.
func (c *committer) run(batch []*call) {
	for len(batch) > 0 {
		err := c.db.Update(func(tx *bolt.Tx) error {
			for _, cl := range batch {
				if err := cl.fn(tx); err != nil {
					return &errCallFailed{c: cl, err: err}
				}
			}
			return nil
		})
		var failed *errCallFailed
		if !errors.As(err, &failed) {
			for _, cl := range batch {
				cl.err <- err // nil, or a commit error every call shares
			}
			return
		}
		// One function failed: it runs alone, the rest again without it.
		failed.c.err <- c.db.Update(failed.c.fn)
		rest := batch[:0:0]
		for _, cl := range batch {
			if cl != failed.c {
				rest = append(rest, cl)
			}
		}
		batch = rest
	}
}
