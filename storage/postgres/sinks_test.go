package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// A replica that lacks a sink claims none of its deliveries while another replica runs it, nor
// for the grace after the last one stopped; then it claims them (to dead-letter them). When a
// replica that runs the sink comes back, the one lacking it gives the sink's queue up.
func TestSinks_UnconfiguredSinkWaitsForGrace(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	const grace = 3 * time.Second
	opt := postgres.Options{SinkGrace: grace, Lease: 3 * time.Second}
	runsX := open(t, url, schema, opt)
	defer runsX.Close()
	lacksX := open(t, url, schema, opt)
	defer lacksX.Close()
	for s, sinks := range map[*postgres.Store][]string{runsX: {"x", "y"}, lacksX: {"y"}} {
		if err := s.SetSinks(sinks); err != nil {
			t.Fatalf("SetSinks: %v", err)
		}
	}
	accept := func(s *postgres.Store, from, n int) {
		t.Helper()
		items := make([]relay.Item, n)
		for i := range items {
			items[i] = relay.Item{Key: fmt.Sprint("k", from+i), Data: []byte("d"), Sinks: []string{"x"}}
		}
		if _, err := s.Accept(context.Background(), items, time.Now()); err != nil {
			t.Fatalf("Accept: %v", err)
		}
	}
	ready := func(s *postgres.Store) int {
		t.Helper()
		ds, err := s.Ready("x", 0, 100)
		if err != nil {
			t.Fatalf("Ready: %v", err)
		}
		return len(ds)
	}
	accept(runsX, 0, 5)
	if n := ready(lacksX); n != 0 {
		t.Fatalf("the replica lacking x claimed %d of its deliveries while another runs it", n)
	}
	runsX.Close()
	stopped := time.Now()
	if n := ready(lacksX); n != 0 {
		t.Fatalf("the replica lacking x claimed %d deliveries right after the one running it stopped", n)
	}
	deadline := time.Now().Add(time.Minute)
	for ready(lacksX) != 5 {
		if time.Now().After(deadline) {
			t.Fatal("the replica lacking x never claimed its deliveries after the grace")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if since := time.Since(stopped); since < grace-time.Second {
		t.Fatalf("claimed %s after the last replica running x stopped, before the grace of %s", since, grace)
	}
	back := open(t, url, schema, opt)
	defer back.Close()
	if err := back.SetSinks([]string{"x"}); err != nil {
		t.Fatal(err)
	}
	accept(back, 5, 3)
	if n := ready(lacksX); n != 0 {
		t.Fatalf("the replica lacking x claimed %d deliveries with a replica running x back", n)
	}
	if n := ready(back); n != 3 {
		t.Fatalf("the replica running x again claimed %d deliveries, want the 3 new ones", n)
	}
}
