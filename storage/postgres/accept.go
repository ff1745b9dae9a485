package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hubrelay/hubrelay/relay"
)

// Accepts are group-committed: the Accept calls that arrive while acceptSlots transactions are
// in flight wait, and the next free slot commits all of them in one call of accept_batch (one
// round trip, one transaction, one commit), each caller getting its own flags. The dedup of
// one batch is exact as one call's is: the same key offered by two callers of a batch is new
// for the first only (in queue order). A batch that fails fails every caller in it, and
// nothing of it is written (one transaction); one the server refused for its content (a data
// exception, not a lost connection) is retried caller by caller, so that one bad request
// cannot fail the others again and again.

// acceptSlots is how many batches one replica commits at once: while one waits for its WAL
// flush, others run their statements (on the server's other cores, too). Measured at 32
// connections (BENCHMARKS.md): 4 slots of up to 256 changes beat 1 or 2 slots and batches of
// up to 4096, which serialize large requests on one server backend.
const acceptSlots = 4

// acceptSlotsFor is how many batches a main pool of conns connections commits at once: at
// most acceptSlots, and one connection fewer than the pool, so that heartbeats, dead letters
// and the other synchronous statements always find a connection while the accepts run.
func acceptSlotsFor(conns int) int { return max(1, min(acceptSlots, conns-1)) }

// maxBatchItems bounds the changes of one batch (a single larger request still goes alone).
const maxBatchItems = 256

// acceptCall is one Accept waiting for its batch: its arrays, ready to concatenate, and its
// result.
type acceptCall struct {
	ctx   context.Context
	now   time.Time
	keys  [][]byte
	datas [][]byte
	// sinkCount[i] is how many sinks item i has; their names and ordering keys follow one
	// another in sinkNames and sinkKeys (nil when no pair of the call has a key).
	sinkCount []int32
	sinkNames []string
	sinkKeys  []string
	locks     []int64

	dup  []bool
	err  error
	done chan struct{}
}

// committer queues Accept calls and runs up to slots batches of them at a time.
type committer struct {
	s       *Store
	slots   int // acceptSlots, or fewer when the main pool is small (acceptSlotsFor)
	mu      sync.Mutex
	queue   []*acceptCall
	running int
}

// Accept implements relay.Spooler: the request's keys, changes and deliveries commit in one
// transaction, which it may share with concurrent calls (see committer).
func (s *Store) Accept(ctx context.Context, items []relay.Item, now time.Time) ([]bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	if len(items) == 0 {
		return []bool{}, nil
	}
	if !s.isUp.Load() {
		return nil, fmt.Errorf("accept: %w", ErrNotUp)
	}
	c := newAcceptCall(ctx, items, now)
	s.commits.enqueue(c)
	// The batch reads the caller's items until it is done, so the caller waits for it even
	// when its context ends meanwhile (a batch is bounded by AcceptTimeout).
	<-c.done
	if c.err != nil {
		return nil, fmt.Errorf("accept: %w", c.err)
	}
	return c.dup, nil
}

// newAcceptCall prepares the arrays of one call (in the caller's goroutine, so batching costs
// the committer only their concatenation).
func newAcceptCall(ctx context.Context, items []relay.Item, now time.Time) *acceptCall {
	c := &acceptCall{ctx: ctx, now: now.Truncate(time.Microsecond), done: make(chan struct{}),
		keys: make([][]byte, len(items)), datas: make([][]byte, len(items)), sinkCount: make([]int32, len(items))}
	for i, it := range items {
		if it.Key != "" {
			c.keys[i] = keyHash(it.Key)
			c.locks = append(c.locks, int64(binary.BigEndian.Uint64(c.keys[i])))
		}
		c.datas[i] = it.Data
		c.sinkCount[i] = int32(len(it.Sinks))
		c.sinkNames = append(c.sinkNames, it.Sinks...)
	}
	c.sinkKeys = orderKeys(items, len(c.sinkNames))
	return c
}

// enqueue adds c to the queue and starts a batch when a slot is free.
func (cm *committer) enqueue(c *acceptCall) {
	cm.mu.Lock()
	cm.queue = append(cm.queue, c)
	start := cm.running < cm.slots
	if start {
		cm.running++
	}
	cm.mu.Unlock()
	if start {
		go cm.run()
	}
}

// run commits batches from the queue until it is empty, then frees its slot.
func (cm *committer) run() {
	for {
		cm.mu.Lock()
		if len(cm.queue) == 0 {
			cm.running--
			cm.mu.Unlock()
			return
		}
		n, items := 0, 0
		for n < len(cm.queue) && (n == 0 || items+len(cm.queue[n].keys) <= maxBatchItems) {
			items += len(cm.queue[n].keys)
			n++
		}
		batch := slices.Clone(cm.queue[:n])
		cm.queue = slices.Delete(cm.queue, 0, n)
		cm.mu.Unlock()
		cm.s.commitBatch(batch)
	}
}

// commitBatch commits the calls of batch whose context has not ended in one transaction and
// closes every call's done.
func (s *Store) commitBatch(batch []*acceptCall) {
	live := batch[:0:0]
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			close(c.done)
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	err := s.acceptBatchSafe(live)
	var pe *pgconn.PgError
	if err != nil && len(live) > 1 && errors.As(err, &pe) && refusedContent(pe.Code) {
		// The server refused the statement for what it holds: find the caller it was.
		for _, c := range live {
			s.commitBatch([]*acceptCall{c})
		}
		return
	}
	for _, c := range live {
		c.err = err
		close(c.done)
	}
}

// refusedContent reports whether SQLSTATE code refuses what a statement held (a data
// exception, such as text the database cannot store, or a program limit) rather than the
// transaction (a lost connection, a shutdown, a conflict).
func refusedContent(code string) bool {
	return strings.HasPrefix(code, "22") || strings.HasPrefix(code, "54")
}

// acceptBatchSafe is acceptBatch, with a panic turned into the batch's error: every caller
// of the batch gets its answer (a 503), none waits forever, and the committer's slot is freed.
func (s *Store) acceptBatchSafe(calls []*acceptCall) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("accept batch panicked", "panic", fmt.Sprint(r), "calls", len(calls))
			err = fmt.Errorf("accept batch panicked: %v", r)
		}
	}()
	return s.acceptBatch(calls)
}

// acceptBatch runs accept_batch over the calls' items, in order, and hands each call its flags.
func (s *Store) acceptBatch(calls []*acceptCall) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.AcceptTimeout)
	defer cancel()
	n, pairs, keyed := 0, 0, false
	for _, c := range calls {
		n += len(c.keys)
		pairs += len(c.sinkNames)
		keyed = keyed || c.sinkKeys != nil
	}
	keys, datas, nows := make([][]byte, 0, n), make([][]byte, 0, n), make([]time.Time, 0, n)
	sinkFirst, sinkNames := make([]int32, 0, n+1), make([]string, 0, pairs)
	var sinkKeys []string
	if keyed {
		sinkKeys = make([]string, 0, pairs)
	}
	var locks []int64
	for _, c := range calls {
		if err := s.ensurePartition(ctx, c.now); err != nil {
			return err
		}
		keys, datas = append(keys, c.keys...), append(datas, c.datas...)
		next := int32(len(sinkNames) + 1)
		for _, k := range c.sinkCount {
			nows = append(nows, c.now)
			sinkFirst = append(sinkFirst, next)
			next += k
		}
		sinkNames = append(sinkNames, c.sinkNames...)
		if keyed {
			if c.sinkKeys != nil {
				sinkKeys = append(sinkKeys, c.sinkKeys...)
			} else {
				sinkKeys = append(sinkKeys, make([]string, len(c.sinkNames))...)
			}
		}
		locks = append(locks, c.locks...)
	}
	sinkFirst = append(sinkFirst, int32(len(sinkNames)+1))
	slices.Sort(locks)
	locks = slices.Compact(locks)
	start := time.Now()
	var dup []bool
	err := s.pool.QueryRow(ctx, "SELECT accept_batch($1, $2, $3, $4, $5, $6, $7, $8)",
		keys, datas, nows, sinkFirst, sinkNames, sinkKeys, locks, s.opt.DedupWindow).Scan(&dup)
	if o := s.obs.Load(); o != nil && o.Commit != nil {
		o.Commit(time.Since(start), err)
	}
	if err != nil {
		return err
	}
	if len(dup) != n {
		return fmt.Errorf("%d flags for %d items", len(dup), n)
	}
	for _, c := range calls {
		c.dup, dup = dup[:len(c.keys):len(c.keys)], dup[len(c.keys):]
	}
	return nil
}
