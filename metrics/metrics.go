package metrics

import (
	"errors"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hubrelay/hubrelay/relay"
)

const namespace = "hubrelay"

// Histogram buckets, in seconds unless named otherwise.
var (
	// ackBuckets span 1 ms to 5 s, with bounds at 250 ms and 1 s: Meta wants the median
	// acknowledgement under 250 ms and fewer than 1% over 1 s.
	ackBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	// attemptBuckets span one sink call, 5 ms to a minute.
	attemptBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	// latencyBuckets span acceptance to delivery: 10 ms to 7 days (the longest dedup window;
	// a retry budget is rarely longer).
	latencyBuckets = []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800}
	// attemptCountBuckets count attempts, not seconds.
	attemptCountBuckets = []float64{1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50}
)

// knownOutcomes are the request outcomes the relay defines; an unknown one past the
// cardinality cap is counted as "other".
var knownOutcomes = map[relay.Outcome]bool{
	relay.OutcomeAccepted: true, relay.OutcomeDuplicate: true, relay.OutcomeEmpty: true,
	relay.OutcomeVerified: true, relay.OutcomeBadToken: true, relay.OutcomeBadSignature: true,
	relay.OutcomeMalformed: true, relay.OutcomeTooLarge: true, relay.OutcomeTooMany: true,
	relay.OutcomeSpoolError: true, relay.OutcomeBadMethod: true, relay.OutcomeNotFound: true,
	relay.OutcomeReadError: true, relay.OutcomeOverloaded: true, relay.OutcomeRateLimited: true,
	relay.OutcomeForbidden: true, relay.OutcomeStale: true, relay.OutcomeTooSlow: true,
	relay.OutcomeBodyBudget: true,
}

// Metrics turns what the relay does into Prometheus metrics. It implements relay.Observer and
// relay.DeliveryObserver; every method is safe for concurrent use, and the per-request and
// per-change ones neither lock nor allocate once a label combination has been seen.
type Metrics struct {
	reg prometheus.Registerer
	now func() time.Time
	// order reports the delivery engine's per-key ordering (WatchOrder, order.go).
	order orderWatch

	requests            *prometheus.CounterVec
	ackDuration         *prometheus.HistogramVec
	changes             *prometheus.CounterVec
	ruleMatches         *prometheus.CounterVec
	unmatched           *prometheus.CounterVec
	ruleErrors          *prometheus.CounterVec
	unrecognised        *prometheus.CounterVec
	attempts            *prometheus.CounterVec
	deliveries          *prometheus.CounterVec
	attemptDuration     *prometheus.HistogramVec
	latency             *prometheus.HistogramVec
	attemptsPerDelivery *prometheus.HistogramVec
	rateWait            *prometheus.CounterVec
	reloads             *prometheus.CounterVec
	reloadSuccessful    prometheus.Gauge
	reloadTime          prometheus.Gauge
	buildInfo           *prometheus.GaugeVec

	requestC *children[requestKey, requestChildren]
	changeC  *children[changeKey, *changeChildren]
	ruleC    *children[string, prometheus.Counter]
	ruleErrC *children[string, prometheus.Counter]
	unrecC   *children[string, prometheus.Counter]
	sinkC    *children[string, *sinkChildren]

	state *stateCollector
}

var (
	_ relay.Observer          = (*Metrics)(nil)
	_ relay.DeliveryObserver  = (*Metrics)(nil)
	_ relay.RateLimitObserver = (*Metrics)(nil)
)

type requestKey struct {
	app     string
	outcome relay.Outcome
}

type requestChildren struct {
	count prometheus.Counter
	ack   prometheus.Observer
}

type changeKey struct{ object, field string }

type changeChildren struct {
	accepted, duplicate, unmatched prometheus.Counter
}

type sinkChildren struct {
	label                                string
	attemptOK, attemptRetry, attemptPerm prometheus.Counter
	attemptDuration                      prometheus.Observer
	delivered, deadLettered              prometheus.Counter
	latency, attempts                    prometheus.Observer
	rateWait                             prometheus.Counter
}

// New creates the relay's metrics and registers them on reg, together with the Go runtime and
// process collectors unless reg already has them. Registering a second Metrics on the same
// registry panics, as a duplicate registration is a programming error. A nil reg means a
// private registry that nothing scrapes.
//
// New is over 100 lines on purpose: it is the one list of every metric's name, help and
// labels, read top to bottom; split up, that list would be scattered.
func New(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{reg: reg, now: time.Now}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total",
		Help: "Webhook requests answered, by app and outcome.",
	}, []string{"app", "outcome"})
	m.ackDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "ack_duration_seconds",
		Help:    "Time from the start of a webhook request to its response, by outcome.",
		Buckets: ackBuckets,
	}, []string{"outcome"})
	m.changes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "changes_total",
		Help: "Changes decoded from signed notifications, by object, field and result (accepted or duplicate).",
	}, []string{"object", "field", "result"})
	m.ruleMatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "rule_matches_total",
		Help: "Accepted changes each rule matched.",
	}, []string{"rule"})
	m.unmatched = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "unmatched_changes_total",
		Help: "Accepted changes that matched no rule, by object and field.",
	}, []string{"object", "field"})
	m.ruleErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "rule_errors_total",
		Help: "Rule expressions that failed to evaluate (the rule did not match).",
	}, []string{"rule"})
	m.unrecognised = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "unrecognised_entries_total",
		Help: "Accepted entries whose content the decoder did not recognise, kept whole as changes of source unknown, by object.",
	}, []string{"object"})
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "delivery_attempts_total",
		Help: "Delivery attempts, by sink and outcome (ok, retry or permanent).",
	}, []string{"sink", "outcome"})
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "deliveries_total",
		Help: "Finished deliveries, by sink and result (delivered or dead_lettered).",
	}, []string{"sink", "result"})
	m.attemptDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "delivery_attempt_duration_seconds",
		Help:    "Duration of one delivery attempt, by sink.",
		Buckets: attemptBuckets,
	}, []string{"sink"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "delivery_latency_seconds",
		Help:    "Time from a change's acceptance to its delivery, by sink.",
		Buckets: latencyBuckets,
	}, []string{"sink"})
	m.attemptsPerDelivery = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "attempts_per_delivery",
		Help:    "Attempts a delivered change took, by sink.",
		Buckets: attemptCountBuckets,
	}, []string{"sink"})
	m.rateWait = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "rate_limit_wait_seconds_total",
		Help: "Time the sink's workers spent waiting for its rate limiter (rate: in the config) before attempts, by sink. Not an attempt, and not counted against max_attempts.",
	}, []string{"sink"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "config_reloads_total",
		Help: "Configuration reloads, by result (ok or error).",
	}, []string{"result"})
	m.reloadSuccessful = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "config_last_reload_successful",
		Help: "Whether the last configuration reload succeeded (1) or not (0).",
	})
	m.reloadTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last successful configuration load (start-up or reload).",
	})
	m.buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help: "Always 1; the labels carry the relay's version and the Go version that built it.",
	}, []string{"version", "goversion"})
	m.state = newStateCollector(m)

	m.requestC = newChildren(maxRequestKeys, m.newRequest, overflowRequest, fitRequest)
	m.changeC = newChildren(maxChangePairs, m.newChange, overflowChange, fitChange)
	m.ruleC = newChildren(maxRules, func(r string) prometheus.Counter { return m.ruleMatches.WithLabelValues(r) }, overflowString, fitString)
	m.ruleErrC = newChildren(maxRules, func(r string) prometheus.Counter { return m.ruleErrors.WithLabelValues(r) }, overflowString, fitString)
	m.unrecC = newChildren(maxChangePairs, func(o string) prometheus.Counter { return m.unrecognised.WithLabelValues(o) }, overflowString, fitString)
	m.sinkC = newChildren(maxSinks, m.newSink, overflowString, fitString)

	reg.MustRegister(m.requests, m.ackDuration, m.changes, m.ruleMatches, m.unmatched, m.ruleErrors, m.unrecognised,
		m.attempts, m.deliveries, m.attemptDuration, m.latency, m.attemptsPerDelivery, m.rateWait,
		m.reloads, m.reloadSuccessful, m.reloadTime, m.buildInfo, m.state)
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			panic(err)
		}
	}

	// Series that alerts and rate() need to exist before their first event.
	m.reloads.WithLabelValues("ok")
	m.reloads.WithLabelValues("error")
	m.reloadSuccessful.Set(1)
	m.reloadTime.Set(float64(m.now().UnixNano()) / 1e9)
	m.SetBuildInfo(mainVersion())
	return m
}

// mainVersion is the module version the binary was built from, "(devel)" for a local build.
func mainVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return ""
}

// Handler returns the HTTP handler that serves the metrics of g in the Prometheus text
// exposition format (g is usually the registry given to New; nil means that registry, if it
// is a Gatherer). Scrapes of the handler itself are counted in
// promhttp_metric_handler_requests_total.
func (m *Metrics) Handler(g prometheus.Gatherer) http.Handler {
	if g == nil {
		if rg, ok := m.reg.(prometheus.Gatherer); ok {
			g = rg
		} else {
			g = prometheus.Gatherers{}
		}
	}
	return promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}))
}

// SetBuildInfo sets hubrelay_build_info to carry version (empty means "unknown") and the Go
// version the binary was built with.
func (m *Metrics) SetBuildInfo(version string) {
	if version == "" {
		version = "unknown"
	}
	m.buildInfo.Reset()
	m.buildInfo.WithLabelValues(version, runtime.Version()).Set(1)
}

// Reload records the result of a configuration reload. New counts the configuration loaded at
// start-up as a success at the time New is called.
func (m *Metrics) Reload(ok bool) {
	if !ok {
		m.reloads.WithLabelValues("error").Inc()
		m.reloadSuccessful.Set(0)
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
	m.reloadSuccessful.Set(1)
	m.reloadTime.Set(float64(m.now().UnixNano()) / 1e9)
}
