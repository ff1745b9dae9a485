package embedded_test

import (
	"path/filepath"
	"testing"

	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/relay/storetest"
	"github.com/hubrelay/hubrelay/storage/embedded"
)

// TestStore runs the storage conformance suite against the embedded spool.
func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opt storetest.Options) func() storetest.Engine {
		path := filepath.Join(t.TempDir(), "spool.db")
		return func() storetest.Engine {
			s, err := embedded.Open(path, spool.Options{DedupWindow: opt.DedupWindow})
			if err != nil {
				t.Fatalf("open spool: %v", err)
			}
			return s
		}
	})
}
