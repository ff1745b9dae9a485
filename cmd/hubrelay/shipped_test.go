package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hubrelay/hubrelay/config"
	"gopkg.in/yaml.v3"
)

// shippedConfigs returns the quick start's config and every example's.
func shippedConfigs(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob("../../examples/*/hubrelay.yaml")
	if len(files) < 8 {
		t.Fatalf("found %d example configs, want the 8 or more shipped", len(files))
	}
	return append([]string{"../../config.example.yaml"}, files...)
}

// TestShippedConfigs_OwnPorts loads every shipped config and checks that no two listen on
// the same port, so any two can run side by side on one machine (and none takes 9090,
// Prometheus's own port).
func TestShippedConfigs_OwnPorts(t *testing.T) {
	getenv := exampleEnv(t)
	owner := map[string]string{}
	for _, f := range shippedConfigs(t) {
		cfg, err := config.Load(f, getenv)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for key, addr := range map[string]string{"server.listen": cfg.Server.Listen, "admin.listen": cfg.Admin.Listen} {
			if addr == "" {
				continue
			}
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				t.Fatalf("%s %s: %v", f, key, err)
			}
			where := f + " " + key
			if prev, ok := owner[port]; ok {
				t.Errorf("port %s: %s and %s", port, prev, where)
			}
			if port == "9090" {
				t.Errorf("%s: port 9090 is Prometheus's default", where)
			}
			owner[port] = where
		}
	}
}

// manifests returns every document of the YAML files in dir, decoded.
func manifests(t *testing.T, dir string) []map[string]any {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	var docs []map[string]any
	for _, f := range files {
		if filepath.Base(f) == "hubrelay.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); err != nil {
				break
			}
			docs = append(docs, doc)
		}
	}
	return docs
}

// dig follows keys through nested maps.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// TestKubernetesManifests checks the Kubernetes examples against themselves and their
// hubrelay.yaml: a StatefulSet's serviceName is a Service of the same folder, the webhooks
// and admin container ports and the Prometheus port are the ones the config listens on.
func TestKubernetesManifests(t *testing.T) {
	getenv := exampleEnv(t)
	for _, dir := range []string{"../../examples/kubernetes", "../../examples/kubernetes-postgres"} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			cfg, err := config.Load(filepath.Join(dir, "hubrelay.yaml"), getenv)
			if err != nil {
				t.Fatal(err)
			}
			port := func(addr string) int {
				_, p, _ := net.SplitHostPort(addr)
				n := 0
				for _, c := range p {
					n = n*10 + int(c-'0')
				}
				return n
			}
			var services []string
			docs := manifests(t, dir)
			for _, d := range docs {
				if d["kind"] == "Service" {
					services = append(services, dig(d, "metadata", "name").(string))
				}
			}
			workloads := 0
			for _, d := range docs {
				kind := d["kind"]
				if kind != "StatefulSet" && kind != "Deployment" {
					continue
				}
				workloads++
				name := dig(d, "metadata", "name")
				if kind == "StatefulSet" {
					sn, _ := dig(d, "spec", "serviceName").(string)
					if !slices.Contains(services, sn) {
						t.Errorf("StatefulSet %s: serviceName %q is not a Service of %s (%v)", name, sn, dir, services)
					}
				}
				if p := dig(d, "spec", "template", "metadata", "annotations", "prometheus.io/port"); p != nil && p != strings.TrimPrefix(cfg.Admin.Listen, "0.0.0.0:") {
					t.Errorf("%s %s: prometheus.io/port %v, admin.listen %s", kind, name, p, cfg.Admin.Listen)
				}
				containers, _ := dig(d, "spec", "template", "spec", "containers").([]any)
				found := false
				for _, c := range containers {
					if dig(c, "name") != "hubrelay" {
						continue
					}
					found = true
					ports, _ := dig(c, "ports").([]any)
					want := map[string]int{"webhooks": port(cfg.Server.Listen), "admin": port(cfg.Admin.Listen)}
					for _, p := range ports {
						pn, _ := dig(p, "name").(string)
						if w, ok := want[pn]; ok {
							if got, _ := dig(p, "containerPort").(int); got != w {
								t.Errorf("%s %s: containerPort %s = %d, the config listens on %d", kind, name, pn, got, w)
							}
							delete(want, pn)
						}
					}
					if len(want) > 0 {
						t.Errorf("%s %s: no containerPort named %v", kind, name, want)
					}
				}
				if !found {
					t.Errorf("%s %s has no hubrelay container", kind, name)
				}
			}
			if workloads == 0 {
				t.Fatalf("%s: no StatefulSet or Deployment", dir)
			}
		})
	}
}

// TestContainerConfig checks that the Dockerfile's image runs the shipped container config:
// copied to the path its CMD names, listening on all interfaces on the ports it exposes,
// writing only under its volume.
func TestContainerConfig(t *testing.T) {
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	d := string(df)
	const shipped = "examples/container/hubrelay.yaml"
	m := regexp.MustCompile(`(?m)^COPY ` + regexp.QuoteMeta(shipped) + ` (\S+)$`).FindStringSubmatch(d)
	if m == nil {
		t.Fatalf("the Dockerfile does not COPY %s into the image", shipped)
	}
	if !strings.Contains(d, `CMD ["serve", "-config", "`+m[1]+`"]`) {
		t.Errorf("the Dockerfile's CMD does not serve %s", m[1])
	}
	vol := regexp.MustCompile(`(?m)^VOLUME \["([^"]+)"\]$`).FindStringSubmatch(d)
	expose := regexp.MustCompile(`(?m)^EXPOSE (.+)$`).FindStringSubmatch(d)
	if vol == nil || expose == nil {
		t.Fatal("the Dockerfile has no VOLUME or EXPOSE line")
	}
	cfg, err := config.Load("../../"+shipped, exampleEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{cfg.Server.Listen, cfg.Admin.Listen} {
		host, port, _ := net.SplitHostPort(addr)
		if host != "0.0.0.0" && host != "" && host != "::" {
			t.Errorf("%s listens on %s: a published port cannot reach it", shipped, addr)
		}
		if !slices.Contains(strings.Fields(expose[1]), port) {
			t.Errorf("the Dockerfile does not EXPOSE %s (%s)", port, expose[1])
		}
	}
	under := func(p string) bool {
		rel, err := filepath.Rel(vol[1], p)
		return err == nil && filepath.IsAbs(p) && !strings.HasPrefix(rel, "..")
	}
	paths := []string{cfg.Storage.Dir, cfg.DeadLetter.Dir}
	for _, s := range cfg.Sinks {
		if s.Path != "" {
			paths = append(paths, s.Path)
		}
	}
	for _, p := range paths {
		if !under(p) {
			t.Errorf("%s writes %s, outside the volume %s", shipped, p, vol[1])
		}
	}
}
