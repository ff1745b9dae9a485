package metrics

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hubrelay/hubrelay/relay"
)

// ruleFile is the part of the Prometheus rule file format the example uses.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var metricName = regexp.MustCompile(`\bhubrelay_[a-z_]+`)

// TestAlertsExample_Parses checks that alerts.example.yaml is a rule file of alerting rules
// whose expressions name only metrics this package serves.
func TestAlertsExample_Parses(t *testing.T) {
	data, err := os.ReadFile("alerts.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f ruleFile
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("decode alerts.example.yaml: %v", err)
	}

	// Every family with labels appears once it has a series.
	m, reg := newTest(t)
	m.Request("shop", relay.OutcomeAccepted, time.Millisecond)
	m.Change(&relay.Event{Object: "page", Field: "feed"}, &relay.Route{Rules: []string{"r"}}, false)
	m.RuleError("r")
	m.Attempt("orders", "ok", time.Millisecond)
	m.Delivered("orders", 1, time.Second)
	m.WatchSpool(func() (map[string]relay.SinkStats, error) { return nil, nil },
		func() (int, error) { return 0, nil },
		func(string) (int, error) { return 0, nil },
		func() []string { return []string{"orders"} })
	m.WatchPaused(func() map[string]bool { return nil })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	served := map[string]bool{}
	for _, mf := range mfs {
		served[mf.GetName()] = true
	}

	var alerts int
	for _, g := range f.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: needs a name and rules", g.Name)
		}
		for _, r := range g.Rules {
			alerts++
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" || r.Annotations["summary"] == "" || r.Labels["severity"] == "" {
				t.Errorf("rule %q: needs alert, expr, a severity label and a summary", r.Alert)
			}
			names := metricName.FindAllString(r.Expr, -1)
			if len(names) == 0 {
				t.Errorf("rule %q: expression names no hubrelay metric", r.Alert)
			}
			for _, n := range names {
				if !served[n] {
					t.Errorf("rule %q: %s is not a metric of this package", r.Alert, n)
				}
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") || strings.Count(r.Expr, "[") != strings.Count(r.Expr, "]") {
				t.Errorf("rule %q: unbalanced brackets in %q", r.Alert, r.Expr)
			}
		}
	}
	if alerts != 3 {
		t.Errorf("got %d alerts, want 3", alerts)
	}
}
