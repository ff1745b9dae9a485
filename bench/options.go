package bench

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The scenarios Run knows.
const (
	// ScenarioThroughput measures every target at each concurrency, then with many changes
	// per POST, and compares hubrelay with the references.
	ScenarioThroughput = "throughput"
	// ScenarioOutage posts a backlog to hubrelay while its sinks are down, then measures the
	// drain once they are back.
	ScenarioOutage = "outage"
)

// The targets Run knows.
const (
	TargetReference      = "reference"       // bare net/http: read, verify, parse, 200
	TargetReferenceFsync = "reference-fsync" // the same plus a group-committed fsync'd append
	TargetHubrelay       = "hubrelay"        // hubrelay serve: spool, rule, two HTTP sinks
	TargetHubrelayBatch  = "hubrelay-batch"  // the same with sink batching on
	// TargetHubrelaySinksDown is hubrelay with both sinks answering 503 through the load:
	// ingest alone, with nothing delivered. The bench does not wait for a drain: after the
	// load it stops the relay and counts what its spool holds as pending, so 0 lost still
	// means every acknowledged change is either delivered or held.
	TargetHubrelaySinksDown = "hubrelay-sinks-down"
	// TargetHubrelayPostgres is hubrelay serve with storage.postgres (Options.PostgresURL), a
	// fresh schema per phase.
	TargetHubrelayPostgres = "hubrelay-postgres"
)

// Targets lists every target name in report order.
var Targets = []string{TargetReference, TargetReferenceFsync, TargetHubrelay, TargetHubrelaySinksDown, TargetHubrelayBatch, TargetHubrelayPostgres}

// Options configures a run. The zero value of a field means its default.
type Options struct {
	// Exe is the hubrelay binary the targets run as (`Exe serve`, `Exe bench-reference`).
	// Another build's binary measures that build with this bench's load and accounting: runs
	// alternating between two binaries give same-load before/after pairs.
	Exe string
	// CompareExe, when set, is a second build (typically the "before" of a change): the
	// throughput scenario runs every hubrelay target from it too, right next to the same
	// target from Exe in every round, and reports its checks separately (Phase.Build
	// "compare"), so that before and after share the load of the same minute.
	CompareExe string
	// Rounds repeats the throughput scenario's phases this many times, default 1; each check
	// is then the median of its per-round values (a ratio is always taken within one round).
	Rounds int
	// Scenario is ScenarioThroughput (default) or ScenarioOutage.
	Scenario string
	// Targets are the targets measured by the throughput scenario, default reference,
	// reference-fsync and hubrelay.
	Targets []string
	// Concurrency lists the connections of each throughput phase, default 1, 8, 32; the
	// outage scenario and the many-changes phase use the largest.
	Concurrency []int
	// Duration is the load time of each throughput phase, default 5s.
	Duration time.Duration
	// ChangesPerPost is the changes in each notification, default 1.
	ChangesPerPost int
	// BatchChanges is the changes per notification of the extra throughput phase run at the
	// largest concurrency, default 50; negative skips that phase.
	BatchChanges int
	// BodyBytes pads every notification to at least this many bytes.
	BodyBytes int
	// Rate, when positive, sends this many requests per second instead of back to back, with
	// at most the phase's concurrency in flight.
	Rate int
	// BadSig is the fraction of requests sent with a wrong signature (they must get 401).
	BadSig float64
	// SinkBatch turns on sink batching (max_changes 100, max_wait 5ms): the hubrelay target
	// becomes hubrelay-batch. To measure both in one run, list both targets instead.
	SinkBatch bool
	// SinkConcurrency is each sink's concurrency in the relay's config, default 8.
	SinkConcurrency int
	// Changes is the backlog the outage scenario posts, default 200000.
	Changes int
	// DrainTimeout bounds the wait for deliveries after a load, default 30s (throughput) or
	// 10m (outage).
	DrainTimeout time.Duration
	// RelayLogLevel is the relay's log.level, default warn (info writes a line per request and
	// per change).
	RelayLogLevel string
	// CPUProfile, when set, asks every hubrelay child to write a CPU profile to
	// CPUProfile.<target>.<phase>.pprof through the HUBRELAY_CPUPROFILE environment variable.
	CPUProfile string
	// Dir holds the targets' data and logs; default a temporary directory removed at the end.
	Dir string
	// PostgresURL is the database of the hubrelay-postgres target (each phase gets its own
	// schema, dropped after it).
	PostgresURL string
	// SpoolSeed, when set, is a spool directory (spool.db and its journal) copied into each
	// embedded hubrelay target's data directory before the target starts: a pre-filled dedup
	// index, say (relay/spool's BenchmarkDedupScale keeps one with HUBRELAY_DEDUP_KEEP), to
	// measure ingest against an index of that size. It should hold no items: they would be
	// delivered too and count in the accounting. Each phase's copy stays in the run's
	// directory until the run ends (2.7 GB a phase for a 100M-key index: mind the disk).
	SpoolSeed string
	// Progress receives one line per phase as the run goes; nil discards them.
	Progress io.Writer
}

// withDefaults returns o with defaults filled in, or an error naming the first bad field.
func (o Options) withDefaults() (Options, error) {
	if o.Exe == "" {
		return o, fmt.Errorf("no hubrelay executable")
	}
	if o.Rounds == 0 {
		o.Rounds = 1
	}
	if o.Rounds < 1 || o.Rounds > 100 {
		return o, fmt.Errorf("rounds %d: use 1 to 100", o.Rounds)
	}
	if o.Scenario == "" {
		o.Scenario = ScenarioThroughput
	}
	if o.Scenario != ScenarioThroughput && o.Scenario != ScenarioOutage {
		return o, fmt.Errorf("scenario %q: use %s or %s", o.Scenario, ScenarioThroughput, ScenarioOutage)
	}
	if len(o.Targets) == 0 {
		o.Targets = []string{TargetReference, TargetReferenceFsync, TargetHubrelay}
	}
	var targets []string
	for _, t := range o.Targets {
		if o.SinkBatch && t == TargetHubrelay {
			t = TargetHubrelayBatch
		}
		if !slices.Contains(targets, t) {
			targets = append(targets, t)
		}
	}
	o.Targets = targets
	for _, t := range o.Targets {
		if !slices.Contains(Targets, t) {
			return o, fmt.Errorf("target %q: use %v", t, Targets)
		}
	}
	if slices.Contains(o.Targets, TargetHubrelayPostgres) && o.PostgresURL == "" {
		return o, fmt.Errorf("target %s needs a database: pass -postgres URL", TargetHubrelayPostgres)
	}
	if o.SpoolSeed != "" {
		if _, err := os.Stat(filepath.Join(o.SpoolSeed, "spool.db")); err != nil {
			return o, fmt.Errorf("spool seed: %w (give a directory holding spool.db)", err)
		}
	}
	if len(o.Concurrency) == 0 {
		o.Concurrency = []int{1, 8, 32}
	}
	for _, c := range o.Concurrency {
		if c < 1 || c > 1024 {
			return o, fmt.Errorf("concurrency %d: use 1 to 1024", c)
		}
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
	}
	if o.Duration < 100*time.Millisecond || o.Duration > time.Hour {
		return o, fmt.Errorf("duration %s: use 100ms to 1h", o.Duration)
	}
	if o.ChangesPerPost == 0 {
		o.ChangesPerPost = 1
	}
	if o.BatchChanges == 0 {
		o.BatchChanges = 50
	}
	if o.ChangesPerPost < 1 || o.ChangesPerPost > 1000 || o.BatchChanges > 1000 {
		return o, fmt.Errorf("changes per POST: use 1 to 1000 (Meta batches up to 1000)")
	}
	if o.BodyBytes < 0 || o.BodyBytes > 4<<20 {
		return o, fmt.Errorf("body bytes %d: use 0 to 4MiB", o.BodyBytes)
	}
	if o.Rate < 0 {
		return o, fmt.Errorf("rate %d: must not be negative", o.Rate)
	}
	if o.BadSig < 0 || o.BadSig >= 1 {
		return o, fmt.Errorf("bad-signature fraction %g: use 0 to below 1", o.BadSig)
	}
	if o.SinkConcurrency == 0 {
		o.SinkConcurrency = 8
	}
	if o.SinkConcurrency < 1 || o.SinkConcurrency > 256 {
		return o, fmt.Errorf("sink concurrency %d: use 1 to 256", o.SinkConcurrency)
	}
	if o.Changes == 0 {
		o.Changes = 200_000
	}
	if o.Changes < 1 || o.Changes > 10_000_000 {
		return o, fmt.Errorf("changes %d: use 1 to 10000000", o.Changes)
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 30 * time.Second
		if o.Scenario == ScenarioOutage {
			o.DrainTimeout = 10 * time.Minute
		}
	}
	if o.RelayLogLevel == "" {
		o.RelayLogLevel = "warn"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o, nil
}

// maxConcurrency is the largest concurrency of the run.
func (o *Options) maxConcurrency() int { return slices.Max(o.Concurrency) }
