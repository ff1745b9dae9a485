package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The bounds of one run that are not options.
const (
	readyLimit      = 30 * time.Second // a target must answer /healthz within this
	stopGrace       = 20 * time.Second // a target must exit within this of SIGTERM
	requestTimeout  = 30 * time.Second // one POST of the load generator
	maxOutageIngest = 30 * time.Minute // the outage scenario's backlog must be posted within this
	rssEvery        = 500 * time.Millisecond
)

// phaseSpec is one load shape.
type phaseSpec struct {
	label       string
	concurrency int
	k           int    // changes per POST
	build       string // "" or BuildCompare: which binary runs a hubrelay target
}

// runner is the state of one Run.
type runner struct {
	opt    Options
	dir    string
	secret string
	nonce  string
	seq    int // phases started, for unique tags and directories
}

// Run runs the benchmark opt describes and returns its report. Every target is started as a
// child process of opt.Exe and stopped before Run returns; cancelling ctx ends the run early
// with ctx's error and whatever was measured so far.
func Run(ctx context.Context, opt Options) (*Report, error) {
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &runner{opt: opt, dir: opt.Dir, secret: randomHex(16), nonce: randomHex(3)}
	if r.dir == "" {
		if r.dir, err = os.MkdirTemp("", "hubrelay-bench-"); err != nil {
			return nil, fmt.Errorf("make work dir: %w", err)
		}
		defer os.RemoveAll(r.dir)
	} else if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, fmt.Errorf("make work dir: %w", err)
	}
	rep := &Report{Scenario: opt.Scenario, Machine: thisMachine(), Started: time.Now(), Options: summarizeOptions(opt), LoadBefore: loadAvg()}
	switch opt.Scenario {
	case ScenarioThroughput:
		err = r.throughput(ctx, rep)
		rep.Checks = roundChecks(rep)
	case ScenarioOutage:
		err = r.outage(ctx, rep)
		rep.Checks = outageChecks(rep)
	}
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.LoadAfter = loadAvg()
	return rep, err
}

// throughput measures every target at every concurrency, then with BatchChanges per POST.
func (r *runner) throughput(ctx context.Context, rep *Report) error {
	var specs []phaseSpec
	for _, c := range r.opt.Concurrency {
		specs = append(specs, phaseSpec{label: phaseLabel(c, r.opt.ChangesPerPost), concurrency: c, k: r.opt.ChangesPerPost})
	}
	if r.opt.BatchChanges > 0 && r.opt.BatchChanges != r.opt.ChangesPerPost {
		c := r.opt.maxConcurrency()
		specs = append(specs, phaseSpec{label: phaseLabel(c, r.opt.BatchChanges), concurrency: c, k: r.opt.BatchChanges})
	}
	for round := 1; round <= r.opt.Rounds; round++ {
		for _, spec := range specs {
			for _, target := range r.opt.Targets {
				builds := []string{""}
				if r.opt.CompareExe != "" && target != TargetReference && target != TargetReferenceFsync {
					// Alternate which build goes first, so that neither always follows the
					// reference.
					builds = []string{BuildCompare, ""}
					if round%2 == 0 {
						builds = []string{"", BuildCompare}
					}
				}
				for _, build := range builds {
					spec.build = build
					p, err := r.phase(ctx, target, spec)
					if err != nil {
						return fmt.Errorf("%s, %s: %w", spec.label, target, err)
					}
					if r.opt.Rounds > 1 {
						p.Round = round
					}
					rep.Phases = append(rep.Phases, p)
					fmt.Fprintln(r.opt.Progress, p.progressLine())
				}
			}
		}
	}
	return nil
}

func phaseLabel(c, k int) string {
	if k == 1 {
		return fmt.Sprintf("c=%d, 1 change/POST", c)
	}
	return fmt.Sprintf("c=%d, %d changes/POST", c, k)
}

// phase starts target, loads it for the phase's duration, waits for its deliveries, and
// stops it.
func (r *runner) phase(ctx context.Context, target string, spec phaseSpec) (Phase, error) {
	gen, dir, err := r.nextPhase(target, spec)
	if err != nil {
		return Phase{}, err
	}
	sinksDown := target == TargetHubrelaySinksDown
	exe := r.opt.Exe
	if spec.build == BuildCompare {
		exe = r.opt.CompareExe
	}
	t, err := r.start(ctx, exe, target, dir, sinksDown)
	if err != nil {
		return Phase{}, err
	}
	p := Phase{Label: spec.label, Target: target, Build: spec.build, Concurrency: spec.concurrency, ChangesPerPost: spec.k, Rate: r.opt.Rate}
	before, usageErr := t.child.usage()
	selfBefore, selfErr := readProc(os.Getpid())
	res := runLoad(ctx, r.loadSpec(t, gen, spec, r.opt.Duration, 0))
	p.fromLoad(res)
	var ids []string
	var after, selfAfter procUsage
	var selfErr2 error
	if sinksDown {
		// Ingest alone: the usage ends with the load, and nothing is delivered to wait for.
		after, err = t.child.usage()
		selfAfter, selfErr2 = readProc(os.Getpid())
		ids = r.settle(ctx, t, gen, res, res.start, &p, false)
	} else {
		if t.relay() {
			ids = r.settle(ctx, t, gen, res, res.start, &p, true)
		}
		after, err = t.child.usage()
		selfAfter, selfErr2 = readProc(os.Getpid())
	}
	p.setUsage(before, after, selfBefore, selfAfter, errors.Join(usageErr, err, selfErr, selfErr2))
	if err := t.stop(); err != nil {
		p.Problems = append(p.Problems, err.Error())
	}
	if t.relay() {
		reconcile(t, dir, ids, &p)
	}
	return p, ctx.Err()
}

// nextPhase returns the generator and directory of a new phase.
func (r *runner) nextPhase(target string, spec phaseSpec) (*generator, string, error) {
	r.seq++
	name := target
	if spec.build != "" {
		name += "-" + spec.build
	}
	dir := filepath.Join(r.dir, fmt.Sprintf("%02d-%s-c%d-k%d", r.seq, name, spec.concurrency, spec.k))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("make phase dir: %w", err)
	}
	return &generator{tag: fmt.Sprintf("%s%02d", r.nonce, r.seq), k: spec.k, pad: r.opt.BodyBytes}, dir, nil
}

func (r *runner) loadSpec(t *running, gen *generator, spec phaseSpec, d time.Duration, maxRequests int64) *loadSpec {
	return &loadSpec{
		url: t.url, secret: r.secret, gen: gen,
		concurrency: spec.concurrency, rate: r.opt.Rate,
		duration: d, maxRequests: maxRequests,
		badSig: r.opt.BadSig, timeout: requestTimeout,
	}
}

// settle waits until both sinks have every acknowledged change (or the drain timeout passes),
// then accounts for every sink. from is when the deliveries measured began. Without wait it
// accounts for what the sinks have at once (what they lack is then looked up in the stopped
// relay's spool by reconcile).
func (r *runner) settle(ctx context.Context, t *running, gen *generator, res *loadResult, from time.Time, p *Phase, wait bool) (acked []string) {
	want := int(res.acked+res.badAccepted) * gen.k
	deadline := time.Now().Add(r.opt.DrainTimeout)
	if !wait {
		deadline = time.Now()
	}
	waiting := func() bool { return ctx.Err() == nil && !t.child.exited() && time.Now().Before(deadline) }
	// Counting distinct ids is cheap; computing the acknowledged ids is not, so it waits
	// until the counts say the deliveries are probably all in.
	for waiting() && !t.allHave(want) {
		time.Sleep(10 * time.Millisecond)
	}
	ids := make([]string, 0, want)
	var err error
	for _, seq := range res.ackedSeqs {
		if ids, err = gen.ids(ids, seq); err != nil {
			p.Problems = append(p.Problems, err.Error())
			break
		}
	}
	var tallies []Tally
	for {
		tallies = tallies[:0]
		lost := 0
		for _, rc := range t.recvs {
			tl := Account(ids, rc.snapshot(false).counts)
			tallies = append(tallies, tl)
			lost += tl.Lost
		}
		if lost == 0 || !waiting() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if wait {
		p.DrainSeconds = time.Since(res.end).Seconds()
	}
	if t.child.exited() {
		p.Problems = append(p.Problems, fmt.Sprintf("%s exited during the run: %v", t.target, t.child.exitErr()))
	}
	for i, rc := range t.recvs {
		st := rc.snapshot(true)
		sr := SinkResult{Name: rc.name, Tally: tallies[i], Requests: st.requests, Refused: st.refused}
		if span := st.last.Sub(from); sr.Delivered > 0 && span > 0 {
			sr.DeliveredPerSec = float64(sr.Delivered) / span.Seconds()
		}
		e2e := make([]time.Duration, 0, len(ids))
		for _, id := range ids {
			if a, ok := st.arrivals[id]; ok && a.accepted != 0 {
				e2e = append(e2e, time.Duration(max(a.at-a.accepted, 0)))
			}
		}
		sr.E2E = summarize(e2e)
		if st.nProblems > 0 {
			p.Problems = append(p.Problems, fmt.Sprintf("%s: %d bad deliveries, first: %v", rc.name, st.nProblems, st.problems))
		}
		p.Sinks = append(p.Sinks, sr)
	}
	return ids
}

// outage runs a short baseline with the sinks up, then posts the backlog with both sinks
// answering 503, lets them recover and measures the drain.
func (r *runner) outage(ctx context.Context, rep *Report) error {
	target := TargetHubrelay
	if r.opt.SinkBatch {
		target = TargetHubrelayBatch
	}
	c := r.opt.maxConcurrency()
	spec := phaseSpec{label: phaseLabel(c, r.opt.ChangesPerPost) + ", sinks up", concurrency: c, k: r.opt.ChangesPerPost}
	base, err := r.phase(ctx, target, spec)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	rep.Phases = append(rep.Phases, base)
	fmt.Fprintln(r.opt.Progress, base.progressLine())

	spec.label = phaseLabel(c, r.opt.ChangesPerPost) + ", sinks down"
	gen, dir, err := r.nextPhase(target, spec)
	if err != nil {
		return err
	}
	t, err := r.start(ctx, r.opt.Exe, target, dir, true)
	if err != nil {
		return err
	}
	defer t.stop()
	o := &Outage{Target: target, Changes: r.opt.Changes}
	rep.Outage = o
	began := time.Now()
	sampler := r.sampleRSS(t.child, began, o)
	defer sampler.stop()

	p := Phase{Label: spec.label, Target: target, Concurrency: c, ChangesPerPost: spec.k, Rate: r.opt.Rate}
	before, usageErr := t.child.usage()
	selfBefore, selfErr := readProc(os.Getpid())
	fmt.Fprintf(r.opt.Progress, "outage: posting %d changes with both sinks answering 503\n", r.opt.Changes)
	ingestCtx, cancel := context.WithTimeout(ctx, maxOutageIngest)
	res := runLoad(ingestCtx, r.loadSpec(t, gen, spec, 0, int64((r.opt.Changes+spec.k-1)/spec.k)))
	cancel()
	p.fromLoad(res)
	if u, err := t.child.usage(); err == nil {
		o.RSSAfterIngestMB = mb(u.rss)
	}
	if fi, err := os.Stat(filepath.Join(dir, "data", "spool.db")); err == nil {
		o.SpoolMB = mb(fi.Size())
	}
	fmt.Fprintf(r.opt.Progress, "outage: %d changes acknowledged at %.0f changes/s; sinks back, draining\n", p.Acked*int64(spec.k), p.ChangesPerSec)

	recovered := time.Now()
	o.RecoveredAtSeconds = recovered.Sub(began).Seconds()
	for _, rc := range t.recvs {
		rc.failing.Store(false)
	}
	acked := r.settle(ctx, t, gen, res, recovered, &p, true)
	o.DrainSeconds = time.Since(recovered).Seconds()
	after, err := t.child.usage()
	selfAfter, selfErr2 := readProc(os.Getpid())
	p.setUsage(before, after, selfBefore, selfAfter, errors.Join(usageErr, err, selfErr, selfErr2))
	sampler.stop()
	if err := t.stop(); err != nil {
		p.Problems = append(p.Problems, err.Error())
	}
	reconcile(t, dir, acked, &p)
	o.PeakRSSMB = p.PeakRSSMB
	for _, s := range o.RSS {
		o.PeakAnonMB = max(o.PeakAnonMB, s.AnonMB)
	}
	o.Phase = p
	fmt.Fprintln(r.opt.Progress, p.progressLine())
	return ctx.Err()
}

// rssSampler samples a child's resident set into an Outage until stopped.
type rssSampler struct {
	once sync.Once
	quit chan struct{}
	done chan struct{}
}

func (r *runner) sampleRSS(c *child, began time.Time, o *Outage) *rssSampler {
	s := &rssSampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(rssEvery)
		defer t.Stop()
		for {
			if u, err := c.usage(); err == nil {
				o.RSS = append(o.RSS, RSSSample{Seconds: time.Since(began).Seconds(), MB: mb(u.rss), AnonMB: mb(u.rssAnon)})
			}
			select {
			case <-s.quit:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends the sampling; once it returns the samples are no longer written.
func (s *rssSampler) stop() {
	s.once.Do(func() { close(s.quit) })
	<-s.done
}

// running is a started target.
type running struct {
	target string
	child  *child
	url    string      // the webhook URL to post to
	recvs  []*receiver // the relay's sinks; none for the references
	// dropSchema removes the Postgres target's schema after it stopped; nil for the others.
	dropSchema func()
}

func (t *running) relay() bool { return len(t.recvs) > 0 }

// allHave reports whether every sink has received at least n distinct changes.
func (t *running) allHave(n int) bool {
	for _, rc := range t.recvs {
		if rc.uniqueCount() < n {
			return false
		}
	}
	return true
}

// stop stops the child, then the sinks (the relay may deliver until it exits).
func (t *running) stop() error {
	err := t.child.stop(stopGrace)
	for _, rc := range t.recvs {
		rc.close()
	}
	if t.dropSchema != nil {
		t.dropSchema()
	}
	return err
}

// dropSchema drops a Postgres target's schema (best effort: a leftover is harmless).
func dropSchema(url, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
}

// start starts target with its data in dir and waits until it is ready. sinksDown makes the
// relay's sinks answer 503 from the start.
func (r *runner) start(ctx context.Context, exe, target, dir string, sinksDown bool) (*running, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	t := &running{target: target, url: "http://" + addr + "/webhooks"}
	env := []string{DefaultSecretEnv + "=" + r.secret}
	var args []string
	switch target {
	case TargetReference, TargetReferenceFsync:
		c := ReferenceConfig{Listen: addr}
		if target == TargetReferenceFsync {
			c.FsyncFile = filepath.Join(dir, "reference.log")
		}
		args = append([]string{"bench-reference"}, ReferenceArgs(c)...)
	default:
		for _, name := range []string{"sink-a", "sink-b"} {
			rc, err := startReceiver(ctx, name)
			if err != nil {
				t.closeReceivers()
				return nil, err
			}
			rc.failing.Store(sinksDown)
			t.recvs = append(t.recvs, rc)
		}
		var pgSchema string
		if target == TargetHubrelayPostgres {
			pgSchema = "bench_" + randomHex(6)
			t.dropSchema = func() { dropSchema(r.opt.PostgresURL, pgSchema) }
		}
		cfg, err := r.writeRelayConfig(dir, addr, target == TargetHubrelayBatch, t.recvs, pgSchema)
		if err != nil {
			t.closeReceivers()
			return nil, err
		}
		if r.opt.SpoolSeed != "" && pgSchema == "" {
			data := filepath.Join(dir, "data")
			err := os.CopyFS(data, os.DirFS(r.opt.SpoolSeed))
			if err == nil {
				err = os.Chmod(data, 0o700) // as the spool makes it
			}
			if err != nil {
				t.closeReceivers()
				return nil, fmt.Errorf("copy the spool seed: %w", err)
			}
		}
		args = []string{"serve", "-config", cfg}
		if r.opt.CPUProfile != "" {
			env = append(env, "HUBRELAY_CPUPROFILE="+r.opt.CPUProfile+"."+filepath.Base(dir)+".pprof",
				"HUBRELAY_ALLOCSPROFILE="+r.opt.CPUProfile+"."+filepath.Base(dir)+".allocs.pprof")
		}
	}
	t.child, err = startChild(target, exe, args, env, filepath.Join(dir, target+".log"))
	if err != nil {
		t.closeReceivers()
		return nil, err
	}
	if err := t.child.waitReady(ctx, "http://"+addr+"/healthz", readyLimit); err != nil {
		t.stop()
		return nil, err
	}
	return t, nil
}

func (t *running) closeReceivers() {
	for _, rc := range t.recvs {
		rc.close()
	}
}

// writeRelayConfig writes the relay's config into dir and returns its path: the bench app,
// the spool in dir/data, and a rule sending WhatsApp messages to both sinks.
func (r *runner) writeRelayConfig(dir, addr string, batch bool, recvs []*receiver, pgSchema string) (string, error) {
	data := filepath.Join(dir, "data")
	maxIP := max(64, 2*r.opt.maxConcurrency())
	cfg := fmt.Sprintf(`# Written by hubrelay bench.
server:
  listen: %s
  path: /webhooks
  max_concurrent: %d
  max_concurrent_per_ip: %d
  shutdown_timeout: 10s
apps:
  - name: %s
    verify_token: bench-verify-token
    app_secrets: ["${%s}"]
storage:
  dir: %s
log:
  level: %s
  format: json
sinks:
`, addr, max(256, maxIP), maxIP, benchApp, DefaultSecretEnv, data, r.opt.RelayLogLevel)
	if pgSchema != "" {
		cfg = strings.Replace(cfg, "storage:\n  dir: "+data+"\n", fmt.Sprintf("storage:\n  dir: %s\n  postgres:\n    url: %q\n    schema: %s\n    max_conns: %d\n",
			data, r.opt.PostgresURL, pgSchema, min(32, max(8, r.opt.maxConcurrency()))), 1)
	}
	for _, rc := range recvs {
		cfg += fmt.Sprintf(`  - name: %s
    type: http
    url: %s
    timeout: 10s
    concurrency: %d
    retry: {max_attempts: 1000000, min_backoff: 20ms, max_backoff: 500ms, max_age: 24h, in_process: 0}
`, rc.name, rc.url, r.opt.SinkConcurrency)
		if batch {
			cfg += "    batch: {max_changes: 100, max_wait: 5ms}\n"
		}
	}
	cfg += `rules:
  - name: whatsapp-inbound
    object: whatsapp_business_account
    field: messages
    when: 'value.messages != nil'
    sinks: [`
	for i, rc := range recvs {
		if i > 0 {
			cfg += ", "
		}
		cfg += rc.name
	}
	cfg += "]\n"
	path := filepath.Join(dir, "hubrelay.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return "", fmt.Errorf("write relay config: %w", err)
	}
	return path, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// thisMachine describes the machine the run is on.
func thisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPU = cpuModel(string(b))
	}
	return m
}
