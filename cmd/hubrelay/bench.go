package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/hubrelay/hubrelay/bench"
)

// cpuProfileEnv names the file `hubrelay serve` writes a CPU profile to, when set; the bench's
// -cpuprofile sets it for its hubrelay children.
const cpuProfileEnv = "HUBRELAY_CPUPROFILE"

// allocsProfileEnv names the file `hubrelay serve` writes its allocation profile to as it
// exits, when set; the bench's -cpuprofile sets it too.
const allocsProfileEnv = "HUBRELAY_ALLOCSPROFILE"

// runBench measures hubrelay against a bare net/http reference on loopback; see package bench.
func runBench(ctx context.Context, args []string, e env) error {
	fs := newFlags("bench", e)
	var o bench.Options
	fs.StringVar(&o.Scenario, "scenario", bench.ScenarioThroughput, "throughput: every target by concurrency; outage: a backlog with the sinks down, then its drain")
	targets := fs.String("targets", "reference,reference-fsync,hubrelay", "comma-separated targets of the throughput scenario: "+strings.Join(bench.Targets, ", "))
	conc := fs.String("concurrency", "1,8,32", "comma-separated connections of each phase; the outage and the many-changes phase use the largest")
	fs.DurationVar(&o.Duration, "duration", 0, "load time of each throughput phase (default 5s)")
	fs.IntVar(&o.ChangesPerPost, "changes-per-post", 1, "changes in each notification")
	fs.IntVar(&o.BatchChanges, "batch-changes", 50, "changes per notification of the extra phase at the largest concurrency (-1: skip it)")
	fs.IntVar(&o.BodyBytes, "body-bytes", 0, "pad each notification to at least this many bytes")
	fs.IntVar(&o.Rate, "rate", 0, "requests per second, at most the concurrency in flight (0: each connection back to back)")
	fs.Float64Var(&o.BadSig, "bad-sig", 0, "fraction of requests with a wrong signature (they must get 401)")
	fs.BoolVar(&o.SinkBatch, "sink-batch", false, "turn on the relay's sink batching (max_changes 100, max_wait 5ms)")
	fs.IntVar(&o.SinkConcurrency, "sink-concurrency", 8, "concurrency of each of the relay's sinks")
	fs.IntVar(&o.Changes, "changes", 200_000, "outage: changes to post while the sinks are down")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 0, "how long to wait for deliveries after a load (default 30s; outage 10m)")
	fs.StringVar(&o.RelayLogLevel, "relay-log-level", "warn", "log.level of the relay under test (info logs every request and change)")
	asJSON := fs.Bool("json", false, "print the whole report as JSON instead of tables")
	svg := fs.String("svg", "", "also write a chart to this SVG `file`")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of each hubrelay child to `prefix`.<phase>.pprof and its allocations to prefix.<phase>.allocs.pprof (needs "+cpuProfileEnv+" support in serve)")
	fs.StringVar(&o.Dir, "dir", "", "keep the targets' data and logs in this directory (default: a temporary one, removed)")
	fs.StringVar(&o.SpoolSeed, "spool-seed", "", "copy the spool in this `directory` into every embedded hubrelay target's data directory before it starts (e.g. a pre-filled dedup index: HUBRELAY_DEDUP_KEEP of relay/spool's BenchmarkDedupScale)")
	fs.StringVar(&o.PostgresURL, "postgres", "", "database `URL` of the hubrelay-postgres target (a schema per phase, dropped after it)")
	dedupChart := fs.String("dedup-chart", "", "instead of a run, draw the dedup growth chart (-svg) from `name=file,...`: outputs of relay/spool's BenchmarkDedupScale")
	fs.StringVar(&o.CompareExe, "compare", "", "also run every hubrelay target from this `binary` (e.g. the build before a change), next to this build's in every round; its checks are listed as [compare]")
	fs.IntVar(&o.Rounds, "rounds", 1, "repeat the throughput phases this many times; each check is the median of its rounds")
	exeFlag := fs.String("exe", "", "run the targets from this hubrelay `binary` (default: this one), e.g. another build, for same-load before/after pairs")
	quiet := fs.Bool("q", false, "no progress lines on standard error")
	if _, err := parseArgs(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "hubrelay bench: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if *dedupChart != "" {
		return drawDedupChart(*dedupChart, *svg, e)
	}
	o.Targets = splitList(*targets)
	for _, s := range splitList(*conc) {
		n, err := strconv.Atoi(s)
		if err != nil {
			fmt.Fprintf(e.stderr, "hubrelay bench: -concurrency: %q is not a number\n", s)
			return errUsage
		}
		o.Concurrency = append(o.Concurrency, n)
	}
	if o.BatchChanges == 0 {
		o.BatchChanges = -1
	}
	exe := *exeFlag
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
	}
	o.Exe = exe
	if !*quiet {
		o.Progress = e.stderr
	}
	rep, err := bench.Run(ctx, o)
	if rep == nil {
		return err
	}
	if *svg != "" {
		if werr := writeSVG(rep, *svg); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	if *asJSON {
		err = errors.Join(err, rep.WriteJSON(e.stdout))
	} else {
		err = errors.Join(err, rep.WriteTable(e.stdout))
	}
	return err
}

// drawDedupChart writes the dedup growth chart of the named benchmark outputs to svgPath.
func drawDedupChart(spec, svgPath string, e env) error {
	if svgPath == "" {
		fmt.Fprintln(e.stderr, "hubrelay bench: -dedup-chart needs -svg FILE")
		return errUsage
	}
	var names []string
	var sets [][]bench.DedupPoint
	for _, part := range splitList(spec) {
		name, path, ok := strings.Cut(part, "=")
		if !ok {
			name, path = part, part
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("dedup chart: %w", err)
		}
		pts, err := bench.ReadDedupPoints(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("dedup chart %s: %w", path, err)
		}
		names, sets = append(names, name), append(sets, pts)
	}
	f, err := os.Create(svgPath)
	if err != nil {
		return fmt.Errorf("create chart: %w", err)
	}
	if err := bench.WriteDedupChart(f, names, sets); err != nil {
		f.Close()
		return fmt.Errorf("write chart %s: %w", svgPath, err)
	}
	return f.Close()
}

func writeSVG(rep *bench.Report, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create chart: %w", err)
	}
	if err := rep.WriteSVG(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// runBenchReference runs the bench's reference server (hidden: the bench starts it as a child).
func runBenchReference(ctx context.Context, args []string, e env) error {
	cfg, err := bench.ParseReferenceArgs(args, e.getenv, e.stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(e.stderr, "hubrelay bench-reference: %v\n", err)
		}
		return errUsage
	}
	return bench.ServeReference(ctx, cfg)
}

// startCPUProfile starts a CPU profile into the file named by HUBRELAY_CPUPROFILE, when set,
// and returns the function that stops it and closes the file; with HUBRELAY_ALLOCSPROFILE set
// that function also writes the allocation profile (every allocation since the start) there.
// serve calls it so that the bench can profile the relay under load.
func startCPUProfile(e env) (stop func()) {
	stopAllocs := func() {}
	if path := e.getenv(allocsProfileEnv); path != "" {
		stopAllocs = func() {
			f, err := os.Create(path)
			if err != nil {
				fmt.Fprintf(e.stderr, "hubrelay: allocs profile: %v\n", err)
				return
			}
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				fmt.Fprintf(e.stderr, "hubrelay: allocs profile: %v\n", err)
			}
			f.Close()
		}
	}
	path := e.getenv(cpuProfileEnv)
	if path == "" {
		return stopAllocs
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(e.stderr, "hubrelay: cpu profile: %v\n", err)
		return stopAllocs
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintf(e.stderr, "hubrelay: cpu profile: %v\n", err)
		f.Close()
		return stopAllocs
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		stopAllocs()
	}
}
