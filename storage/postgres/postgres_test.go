package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/storetest"
	"github.com/hubrelay/hubrelay/storage/postgres"
	"github.com/hubrelay/hubrelay/storage/postgres/pgtest"
)

// open opens a store on schema with a small pool (the server is shared by parallel tests).
func open(t *testing.T, url, schema string, opt postgres.Options) *postgres.Store {
	t.Helper()
	opt.URL, opt.Schema = url, schema
	if opt.MaxConns == 0 {
		opt.MaxConns = 4
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, opt)
	if err != nil {
		t.Fatalf("open postgres store: %v", err)
	}
	return s
}

// TestStore runs the storage conformance suite against Postgres.
func TestStore(t *testing.T) {
	url := pgtest.URL(t)
	storetest.Run(t, func(t *testing.T, opt storetest.Options) func() storetest.Engine {
		schema := pgtest.Schema(t, url)
		return func() storetest.Engine {
			return open(t, url, schema, postgres.Options{DedupWindow: opt.DedupWindow})
		}
	})
}
