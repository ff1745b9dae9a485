package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// letterLog records the dead letters written, by sink and change.
type letterLog struct {
	mu      sync.Mutex
	letters []*deadletter.Letter
}

func (l *letterLog) Write(dl *deadletter.Letter) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.letters = append(l.letters, dl)
	return nil
}

// TestEngine_ReloadAddingAndRemovingASink: a sink is added and removed by reloads in quick
// succession while changes for it keep arriving and being notified (requests routed with the
// rules of before a reload): one runner at a time serves its queue, so no change its sink
// received is also dead-lettered as "not configured", and every change is either received or
// dead-lettered.
func TestEngine_ReloadAddingAndRemovingASink(t *testing.T) {
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.db"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	dl := &letterLog{}
	e := relay.NewEngine(embedded.New(sp), dl, nil, discard())
	e.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Close(ctx)
	}()
	x := newOutageSink("x")
	slow := &slowSink{outageSink: x, delay: 3 * time.Millisecond}
	cfg := func(with bool) []relay.SinkConfig {
		if !with {
			return nil
		}
		return []relay.SinkConfig{{Sink: slow, Concurrency: 4, Retry: relay.RetryPolicy{MaxAttempts: 100, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}}}
	}
	if err := e.SetSinks(cfg(true)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	reloads := make(chan int)
	go func() {
		n := 0
		defer func() { reloads <- n }()
		for with := false; ; with = !with {
			select {
			case <-stop:
				if err := e.SetSinks(cfg(true)); err != nil {
					t.Error(err)
				}
				return
			case <-time.After(time.Duration(5+n%20) * time.Millisecond):
			}
			if err := e.SetSinks(cfg(with)); err != nil {
				t.Error(err)
			}
			n++
		}
	}()
	var ids []string
	for i := 0; i < 1500; i += 10 {
		var items []spool.Item
		for j := i; j < i+10; j++ {
			ev := relay.Event{ID: fmt.Sprintf("x%d", j), App: "a", Object: "page", Field: "feed", Source: relay.SourceChanges, Value: json.RawMessage(`{}`), ReceivedAt: time.Now()}
			ids = append(ids, ev.ID)
			items = append(items, spool.Item{Key: ev.ID, Data: relay.AppendBinary(nil, &ev), Sinks: []string{"x"}})
		}
		if _, err := sp.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatal(err)
		}
		e.Notify([]string{"x"})
		time.Sleep(time.Millisecond)
	}
	close(stop)
	n := <-reloads
	eventually(t, "every change received or dead-lettered", func() bool {
		dl.mu.Lock()
		defer dl.mu.Unlock()
		return len(x.missing(ids)) <= len(dl.letters)
	})
	eventually(t, "the spool drained", func() bool { return pending(t, sp) == 0 })
	x.mu.Lock()
	defer x.mu.Unlock()
	dl.mu.Lock()
	defer dl.mu.Unlock()
	twice, notConfigured := 0, 0
	lettered := map[string]bool{}
	for _, l := range dl.letters {
		if strings.Contains(l.Reason, "is not configured") {
			notConfigured++
		}
		lettered[l.ChangeID] = true
		if _, ok := x.got[l.ChangeID]; ok {
			twice++
			if twice <= 3 {
				t.Errorf("change %s was received by its sink and dead-lettered (%s)", l.ChangeID, l.Reason)
			}
		}
	}
	for _, id := range ids {
		if _, ok := x.got[id]; !ok && !lettered[id] {
			t.Errorf("change %s neither received nor dead-lettered", id)
		}
	}
	t.Logf("%d reloads, %d changes: %d received, %d dead-lettered as not configured, %d both", n, len(ids), len(x.got), notConfigured, twice)
	if twice > 0 {
		t.Errorf("%d changes received and dead-lettered", twice)
	}
}

// slowSink delays each attempt, so that a reload finds attempts in flight.
type slowSink struct {
	*outageSink
	delay time.Duration
}

func (s *slowSink) Deliver(ctx context.Context, ev *relay.Event) error {
	time.Sleep(s.delay)
	return s.outageSink.Deliver(ctx, ev)
}
