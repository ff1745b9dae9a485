package spool

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// committer is the spool file's group commit. One goroutine runs write transactions one after
// the other; each takes every call queued when it starts (up to maxSize). Calls that arrive
// while a commit and its fsync run share the next one, so commits grow with the load by
// themselves. No request waits for it (Accept waits for the journal only), so a commit starts
// no sooner than interval after the previous one began: fewer, larger commits cost less CPU
// and fewer fsyncs per change. (How long journal frames wait for their apply is ApplyDelay's
// business: the applier's, in apply.go.)
//
// A call's function may run more than once: when one function of a shared transaction fails,
// the transaction is rolled back, that function runs alone, and the others run again without
// it. Functions must reset what they report at their start.
type committer struct {
	db       *bolt.DB
	maxSize  int
	interval time.Duration
	commits  *atomic.Uint64 // counts the transactions committed
	// fault, when set by tests, can turn a commit that succeeded into a reported failure, as
	// when bbolt's last fdatasync fails after the new meta page was written.
	fault func() error
	// after, when set, runs after every commit, with no transaction open (the spool's
	// memory check: a commit reads the pages it changes through the map).
	after func()

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []*call
	closed bool
	done   chan struct{}
}

type call struct {
	fn     func(*bolt.Tx) error
	done   func(error) // receives the call's result, on the committer's goroutine
	weight int         // the items it writes, roughly; 1 for small calls
}

// maxCommitWeight bounds the items one commit writes, and so the memory its dirty pages take
// (bbolt keeps every page a transaction changes in memory until the commit).
const maxCommitWeight = 4096

// errCallFailed carries the call whose function failed out of a shared transaction.
type errCallFailed struct {
	c   *call
	err error
}

func (e *errCallFailed) Error() string { return e.err.Error() }

func newCommitter(db *bolt.DB, maxSize int, interval time.Duration, commits *atomic.Uint64, fault func() error, after func()) *committer {
	c := &committer{db: db, maxSize: maxSize, interval: interval, commits: commits, fault: fault, after: after, done: make(chan struct{})}
	c.cond = sync.NewCond(&c.mu)
	go c.loop()
	return c
}

// do runs fn in a shared write transaction and returns once that transaction is committed
// (fsync'd) or has failed. weight is as for submit.
func (c *committer) do(fn func(*bolt.Tx) error, weight int) error {
	ch := make(chan error, 1)
	if err := c.submit(fn, func(err error) { ch <- err }, weight); err != nil {
		return err
	}
	return <-ch
}

// submit queues fn for a shared write transaction without waiting: done receives the result
// on the committer's goroutine once the transaction is committed or has failed, and must not
// block. Calls are run in the order they were submitted. weight is roughly the number of items
// fn writes; a commit takes calls up to maxCommitWeight. submit returns ErrClosed (and never
// calls done) after close.
func (c *committer) submit(fn func(*bolt.Tx) error, done func(error), weight int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	c.queue = append(c.queue, &call{fn: fn, done: done, weight: max(weight, 1)})
	c.cond.Signal()
	return nil
}

// close commits what is queued, then stops the loop. Calls after close get ErrClosed.
func (c *committer) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	<-c.done
}

// heavy reports whether the queue already holds a full commit's weight. Called with mu held.
func (c *committer) heavy() bool {
	w := 0
	for _, cl := range c.queue {
		if w += cl.weight; w >= maxCommitWeight {
			return true
		}
	}
	return false
}

func (c *committer) loop() {
	defer close(c.done)
	var last time.Time
	for {
		c.mu.Lock()
		for len(c.queue) == 0 && !c.closed {
			c.cond.Wait()
		}
		if len(c.queue) == 0 {
			c.mu.Unlock()
			return
		}
		if wait := c.interval - time.Since(last); wait > 0 && len(c.queue) < c.maxSize && !c.closed && !c.heavy() {
			c.mu.Unlock()
			time.Sleep(wait)
			c.mu.Lock()
		}
		last = time.Now()
		n, weight := 0, 0
		for n < len(c.queue) && n < c.maxSize && (n == 0 || weight+c.queue[n].weight <= maxCommitWeight) {
			weight += c.queue[n].weight
			n++
		}
		batch := make([]*call, n)
		copy(batch, c.queue)
		c.queue = append(c.queue[:0], c.queue[n:]...)
		c.mu.Unlock()
		c.run(batch)
		if c.after != nil {
			c.after()
		}
	}
}

// run commits batch in one transaction, setting aside any call whose function fails. The calls
// keep their order: when one fails, those before it commit again first, then it runs alone,
// then the rest.
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
		if err == nil {
			c.commits.Add(1)
		}
		if err == nil && c.fault != nil {
			err = c.fault()
		}
		var failed *errCallFailed
		if !errors.As(err, &failed) {
			for _, cl := range batch {
				cl.done(err) // nil, or a commit error every call shares
			}
			return
		}
		i := slices.Index(batch, failed.c)
		c.run(batch[:i])
		err = c.db.Update(failed.c.fn)
		if err == nil {
			c.commits.Add(1)
		}
		failed.c.done(err)
		batch = batch[i+1:]
	}
}
