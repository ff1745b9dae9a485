package relay_test

import (
	"log/slog"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// nopDL is a dead-letter directory for benchmarks, where nothing is expected to die.
type nopDL struct{}

func (nopDL) Write(*deadletter.Letter) error { return nil }
