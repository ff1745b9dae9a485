package metrics

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/hubrelay/hubrelay/relay"
)

// t0 is the fixed clock of the tests: 2024-05-01T12:00:00Z.
var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func newTest(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.now = func() time.Time { return t0 }
	return m, reg
}

// compare checks the named metric families of reg against the expected text exposition
// (HELP and TYPE lines are added from reg, so cases list only samples).
func compare(t *testing.T, reg *prometheus.Registry, want string, names ...string) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var hdr strings.Builder
	for _, name := range names {
		for _, mf := range mfs {
			if mf.GetName() == name {
				fmt.Fprintf(&hdr, "# HELP %s %s\n# TYPE %s %s\n", name, mf.GetHelp(), name, strings.ToLower(mf.GetType().String()))
			}
		}
	}
	// Compare what was gathered once: collectors that count their own scrapes must not see two.
	gathered := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, nil })
	if err := testutil.GatherAndCompare(gathered, strings.NewReader(hdr.String()+want), names...); err != nil {
		t.Fatal(err)
	}
}

// histogram returns the histogram of the named family whose labels include labels.
func histogram(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) *dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range mt.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			return mt.GetHistogram()
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return nil
}

// bucket returns the cumulative count of h at upper bound le.
func bucket(t *testing.T, h *dto.Histogram, le float64) uint64 {
	t.Helper()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == le {
			return b.GetCumulativeCount()
		}
	}
	t.Fatalf("no bucket le=%g in %v", le, h)
	return 0
}

func TestMetrics_Request(t *testing.T) {
	m, reg := newTest(t)
	calls := []struct {
		app string
		o   relay.Outcome
		d   time.Duration
	}{
		{"shop", relay.OutcomeAccepted, time.Millisecond},
		{"shop", relay.OutcomeAccepted, 300 * time.Millisecond},
		{"shop", relay.OutcomeDuplicate, 2 * time.Millisecond},
		{"shop", relay.OutcomeAccepted, 2 * time.Second},
		{"", relay.OutcomeBadSignature, 100 * time.Microsecond},
		{"", relay.OutcomeNotFound, 0},
		{"crm", relay.OutcomeVerified, time.Millisecond},
	}
	for _, c := range calls {
		m.Request(c.app, c.o, c.d)
	}
	compare(t, reg, `
hubrelay_requests_total{app="",outcome="bad_signature"} 1
hubrelay_requests_total{app="",outcome="not_found"} 1
hubrelay_requests_total{app="crm",outcome="verified"} 1
hubrelay_requests_total{app="shop",outcome="accepted"} 3
hubrelay_requests_total{app="shop",outcome="duplicate"} 1
`, "hubrelay_requests_total")

	h := histogram(t, reg, "hubrelay_ack_duration_seconds", map[string]string{"outcome": "accepted"})
	if h.GetSampleCount() != 3 {
		t.Errorf("accepted ack count = %d, want 3", h.GetSampleCount())
	}
	if got, want := h.GetSampleSum(), 2.301; math.Abs(got-want) > 1e-9 {
		t.Errorf("accepted ack sum = %g, want %g", got, want)
	}
	for _, c := range []struct {
		le   float64
		want uint64
	}{{.001, 1}, {.25, 1}, {1, 2}, {2.5, 3}, {5, 3}} {
		if got := bucket(t, h, c.le); got != c.want {
			t.Errorf("accepted ack bucket le=%g = %d, want %d", c.le, got, c.want)
		}
	}
	if n := histogram(t, reg, "hubrelay_ack_duration_seconds", map[string]string{"outcome": "not_found"}).GetSampleCount(); n != 1 {
		t.Errorf("not_found ack count = %d, want 1", n)
	}
}

func TestMetrics_Change(t *testing.T) {
	m, reg := newTest(t)
	page := &relay.Event{Object: "page", Field: "feed"}
	wa := &relay.Event{Object: "whatsapp_business_account", Field: "messages"}
	unknown := &relay.Event{Object: "page", Field: "message_reactions", Source: relay.SourceUnknown}
	calls := []struct {
		ev  *relay.Event
		rt  *relay.Route
		dup bool
	}{
		{page, &relay.Route{Rules: []string{"photos", "archive"}, Sinks: []string{"ops", "file"}}, false},
		{page, &relay.Route{Rules: []string{"archive"}, Sinks: []string{"file"}}, false},
		{page, &relay.Route{Rules: []string{"archive"}, Sinks: []string{"file"}}, true},
		{wa, &relay.Route{}, false},
		{wa, nil, false},
		{wa, &relay.Route{}, true},
		{wa, &relay.Route{Rules: []string{"inbound"}, Raw: []string{"orders"}}, false},
		{unknown, &relay.Route{}, false},
		{unknown, &relay.Route{}, true},
	}
	for _, c := range calls {
		m.Change(c.ev, c.rt, c.dup)
	}
	m.RuleError("photos")
	m.RuleError("photos")
	m.RuleError("inbound")
	compare(t, reg, `
hubrelay_changes_total{field="feed",object="page",result="accepted"} 2
hubrelay_changes_total{field="feed",object="page",result="duplicate"} 1
hubrelay_changes_total{field="message_reactions",object="page",result="accepted"} 1
hubrelay_changes_total{field="message_reactions",object="page",result="duplicate"} 1
hubrelay_changes_total{field="messages",object="whatsapp_business_account",result="accepted"} 3
hubrelay_changes_total{field="messages",object="whatsapp_business_account",result="duplicate"} 1
hubrelay_rule_matches_total{rule="archive"} 2
hubrelay_rule_matches_total{rule="inbound"} 1
hubrelay_rule_matches_total{rule="photos"} 1
hubrelay_unmatched_changes_total{field="feed",object="page"} 0
hubrelay_unmatched_changes_total{field="message_reactions",object="page"} 1
hubrelay_unmatched_changes_total{field="messages",object="whatsapp_business_account"} 2
hubrelay_rule_errors_total{rule="inbound"} 1
hubrelay_rule_errors_total{rule="photos"} 2
hubrelay_unrecognised_entries_total{object="page"} 1
`, "hubrelay_changes_total", "hubrelay_rule_matches_total", "hubrelay_unmatched_changes_total", "hubrelay_rule_errors_total", "hubrelay_unrecognised_entries_total")
}

func TestMetrics_ChangeLabelValues(t *testing.T) {
	tests := []struct {
		name          string
		object, field string
		wantObject    string
		wantField     string
	}{
		{"plain", "page", "feed", "page", "feed"},
		{"empty field", "permissions", "", "permissions", ""},
		{"invalid utf-8", "page", "fe\xffed", other, other},
		{"too long", strings.Repeat("o", maxLabelLen+1), "feed", other, other},
		{"longest kept", strings.Repeat("o", maxLabelLen), "feed", strings.Repeat("o", maxLabelLen), "feed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _ := newTest(t)
			m.Change(&relay.Event{Object: tt.object, Field: tt.field}, nil, false)
			if got := testutil.ToFloat64(m.changes.WithLabelValues(tt.wantObject, tt.wantField, "accepted")); got != 1 {
				t.Errorf("changes_total{object=%.10q,field=%.10q} = %g, want 1", tt.wantObject, tt.wantField, got)
			}
			if n := testutil.CollectAndCount(m.changes); n != 2 {
				t.Errorf("changes_total has %d series, want 2", n)
			}
		})
	}
}

func TestMetrics_CardinalityCap(t *testing.T) {
	m, _ := newTest(t)
	const extra = 50
	for round := range 2 {
		for i := range maxChangePairs + extra {
			m.Change(&relay.Event{Object: "page", Field: fmt.Sprintf("field%03d", i)}, nil, round == 1)
		}
	}
	if n := testutil.CollectAndCount(m.changes); n != 2*(maxChangePairs+1) {
		t.Errorf("changes_total has %d series, want %d", n, 2*(maxChangePairs+1))
	}
	if n := testutil.CollectAndCount(m.unmatched); n != maxChangePairs+1 {
		t.Errorf("unmatched_changes_total has %d series, want %d", n, maxChangePairs+1)
	}
	for _, c := range []struct {
		object, field, result string
		want                  float64
	}{
		{"page", "field000", "accepted", 1},
		{"page", fmt.Sprintf("field%03d", maxChangePairs-1), "duplicate", 1},
		{other, other, "accepted", extra},
		{other, other, "duplicate", extra},
	} {
		if got := testutil.ToFloat64(m.changes.WithLabelValues(c.object, c.field, c.result)); got != c.want {
			t.Errorf("changes_total{%s,%s,%s} = %g, want %g", c.object, c.field, c.result, got, c.want)
		}
	}
	// The overflowing keys are not remembered.
	if n := len(*m.changeC.cur.Load()); n != maxChangePairs+1 {
		t.Errorf("change cache holds %d keys, want %d", n, maxChangePairs+1)
	}

	// Apps past the cap keep their (known) outcome; unknown outcomes fold to other too.
	for i := range maxRequestKeys + extra {
		m.Request(fmt.Sprintf("app%04d", i), relay.OutcomeAccepted, time.Millisecond)
	}
	m.Request("late", relay.Outcome("made_up"), time.Millisecond)
	if got := testutil.ToFloat64(m.requests.WithLabelValues(other, string(relay.OutcomeAccepted))); got != extra {
		t.Errorf("requests_total{other,accepted} = %g, want %d", got, extra)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues(other, other)); got != 1 {
		t.Errorf("requests_total{other,other} = %g, want 1", got)
	}

	// Rules and sinks.
	for i := range maxRules + extra {
		m.Change(&relay.Event{Object: "page", Field: "feed"}, &relay.Route{Rules: []string{fmt.Sprint("rule", i)}}, false)
	}
	if got := testutil.ToFloat64(m.ruleMatches.WithLabelValues(other)); got != extra {
		t.Errorf("rule_matches_total{other} = %g, want %d", got, extra)
	}
	for i := range maxSinks + extra {
		m.DeadLettered(fmt.Sprint("sink", i))
	}
	if got := testutil.ToFloat64(m.deliveries.WithLabelValues(other, "dead_lettered")); got != extra {
		t.Errorf("deliveries_total{other,dead_lettered} = %g, want %d", got, extra)
	}
}

func TestMetrics_Delivery(t *testing.T) {
	m, reg := newTest(t)
	m.Attempt("orders", "retry", 2*time.Second)
	m.Attempt("orders", "retry", 3*time.Second)
	m.Attempt("orders", "ok", 20*time.Millisecond)
	m.Delivered("orders", 3, 90*time.Second)
	m.Attempt("orders", "ok", 10*time.Millisecond)
	m.Delivered("orders", 1, 50*time.Millisecond)
	m.Attempt("ops", "permanent", time.Millisecond)
	m.DeadLettered("ops")
	m.Attempt("ops", "bogus", time.Millisecond)
	compare(t, reg, `
hubrelay_delivery_attempts_total{outcome="ok",sink="ops"} 0
hubrelay_delivery_attempts_total{outcome="ok",sink="orders"} 2
hubrelay_delivery_attempts_total{outcome="other",sink="ops"} 1
hubrelay_delivery_attempts_total{outcome="permanent",sink="ops"} 1
hubrelay_delivery_attempts_total{outcome="permanent",sink="orders"} 0
hubrelay_delivery_attempts_total{outcome="retry",sink="ops"} 0
hubrelay_delivery_attempts_total{outcome="retry",sink="orders"} 2
hubrelay_deliveries_total{result="dead_lettered",sink="ops"} 1
hubrelay_deliveries_total{result="dead_lettered",sink="orders"} 0
hubrelay_deliveries_total{result="delivered",sink="ops"} 0
hubrelay_deliveries_total{result="delivered",sink="orders"} 2
`, "hubrelay_delivery_attempts_total", "hubrelay_deliveries_total")

	tests := []struct {
		name      string
		metric    string
		sink      string
		wantCount uint64
		wantSum   float64
		le        float64
		wantLE    uint64
	}{
		{"attempt duration", "hubrelay_delivery_attempt_duration_seconds", "orders", 4, 5.03, 0.025, 2},
		{"latency", "hubrelay_delivery_latency_seconds", "orders", 2, 90.05, 60, 1},
		{"attempts", "hubrelay_attempts_per_delivery", "orders", 2, 4, 1, 1},
		{"no deliveries", "hubrelay_attempts_per_delivery", "ops", 0, 0, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := histogram(t, reg, tt.metric, map[string]string{"sink": tt.sink})
			if h.GetSampleCount() != tt.wantCount || math.Abs(h.GetSampleSum()-tt.wantSum) > 1e-9 {
				t.Errorf("count, sum = %d, %g; want %d, %g", h.GetSampleCount(), h.GetSampleSum(), tt.wantCount, tt.wantSum)
			}
			if got := bucket(t, h, tt.le); got != tt.wantLE {
				t.Errorf("bucket le=%g = %d, want %d", tt.le, got, tt.wantLE)
			}
		})
	}
}

func TestMetrics_Reload(t *testing.T) {
	before := time.Now()
	m, reg := newTest(t)
	after := time.Now()
	if ts := testutil.ToFloat64(m.reloadTime); ts < float64(before.Unix()) || ts > float64(after.Unix()+1) {
		t.Errorf("last reload success at New = %g, want the time of New (%d)", ts, before.Unix())
	}
	names := []string{"hubrelay_config_reloads_total", "hubrelay_config_last_reload_successful", "hubrelay_config_last_reload_success_timestamp_seconds"}
	compare(t, reg, `
hubrelay_config_reloads_total{result="error"} 0
hubrelay_config_reloads_total{result="ok"} 0
hubrelay_config_last_reload_successful 1
`, names[:2]...)

	m.Reload(false)
	compare(t, reg, `
hubrelay_config_reloads_total{result="error"} 1
hubrelay_config_reloads_total{result="ok"} 0
hubrelay_config_last_reload_successful 0
`, names[:2]...)

	m.now = func() time.Time { return t0.Add(90 * time.Second) }
	m.Reload(true)
	compare(t, reg, `
hubrelay_config_reloads_total{result="error"} 1
hubrelay_config_reloads_total{result="ok"} 1
hubrelay_config_last_reload_successful 1
hubrelay_config_last_reload_success_timestamp_seconds 1.71456489e+09
`, names...)
}

func TestMetrics_BuildInfo(t *testing.T) {
	tests := []struct {
		name, version, want string
	}{
		{"version", "v1.2.3", "v1.2.3"},
		{"empty", "", "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, reg := newTest(t)
			m.SetBuildInfo("v0.0.1")
			m.SetBuildInfo(tt.version)
			compare(t, reg, fmt.Sprintf("hubrelay_build_info{goversion=%q,version=%q} 1\n", runtime.Version(), tt.want), "hubrelay_build_info")
		})
	}
}

func TestNew_RuntimeCollectors(t *testing.T) {
	tests := []struct {
		name string
		pre  []prometheus.Collector
	}{
		{"fresh registry", nil},
		{"already registered", []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(tt.pre...)
			New(reg)
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatalf("Gather: %v", err)
			}
			found := map[string]bool{}
			for _, mf := range mfs {
				found[mf.GetName()] = true
			}
			for _, name := range []string{"go_goroutines", "hubrelay_build_info", "hubrelay_state_collect_errors_total"} {
				if !found[name] {
					t.Errorf("%s not gathered", name)
				}
			}
		})
	}
}

func TestMetrics_Handler(t *testing.T) {
	m, reg := newTest(t)
	m.Request("shop", relay.OutcomeAccepted, 5*time.Millisecond)
	for _, g := range []prometheus.Gatherer{reg, nil} {
		srv := httptest.NewServer(m.Handler(g))
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatalf("GET /metrics: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if err != nil {
			t.Fatalf("read body: %v", err)
		}
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		for _, want := range []string{
			"# TYPE hubrelay_requests_total counter",
			`hubrelay_requests_total{app="shop",outcome="accepted"} 1`,
			`hubrelay_ack_duration_seconds_bucket{outcome="accepted",le="0.005"} 1`,
			"go_goroutines ",
			"promhttp_metric_handler_requests_total",
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("body lacks %q", want)
			}
		}
	}
}

// TestMetrics_Concurrent hammers the hot paths from several goroutines while label children
// are still being created; run with -race.
func TestMetrics_Concurrent(t *testing.T) {
	m, _ := newTest(t)
	const workers, per = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				f := fmt.Sprint("f", i%20)
				m.Change(&relay.Event{Object: "page", Field: f}, &relay.Route{Rules: []string{"r" + f}}, false)
				m.Request(fmt.Sprint("app", w%3), relay.OutcomeAccepted, time.Millisecond)
				m.Attempt("s"+f, "ok", time.Millisecond)
				m.Delivered("s"+f, 1, time.Second)
			}
		}()
	}
	wg.Wait()
	sum := func(c prometheus.Collector) float64 {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("Gather: %v", err)
		}
		var s float64
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				s += mt.GetCounter().GetValue()
			}
		}
		return s
	}
	for name, c := range map[string]prometheus.Collector{
		"changes": m.changes, "rule matches": m.ruleMatches, "requests": m.requests, "attempts": m.attempts, "deliveries": m.deliveries,
	} {
		if got := sum(c); got != workers*per {
			t.Errorf("%s total = %g, want %d", name, got, workers*per)
		}
	}
}

// TestMetrics_HotPathAllocs checks that Change and Request allocate nothing once their labels
// have been seen.
func TestMetrics_HotPathAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	m, _ := newTest(t)
	ev := &relay.Event{Object: "whatsapp_business_account", Field: "messages"}
	rt := &relay.Route{Rules: []string{"inbound", "archive"}}
	m.Change(ev, rt, false)
	m.Request("shop", relay.OutcomeAccepted, time.Millisecond)
	if n := testing.AllocsPerRun(100, func() { m.Change(ev, rt, false) }); n != 0 {
		t.Errorf("Change allocates %g times per call", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.Request("shop", relay.OutcomeAccepted, time.Millisecond) }); n != 0 {
		t.Errorf("Request allocates %g times per call", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.Attempt("orders", "ok", time.Millisecond) }); n != 0 {
		t.Errorf("Attempt allocates %g times per call", n)
	}
}
