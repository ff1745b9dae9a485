package config

import (
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// apps decodes the apps list. defaultPath is server.path.
func (d *decoder) apps(n *yaml.Node, path, defaultPath string) []App {
	items, ok := d.sequence(n, path)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		d.problem(resolve(n), path, "at least one app is required")
		return nil
	}
	type seen struct {
		index int
		name  string
		line  int
		token string
	}
	var (
		apps   []App
		names  = make(map[string]int) // name -> line
		tokens = make(map[string]seen)
	)
	for i, it := range items {
		p := index(path, i)
		f, ok := d.mapping(it, p, "name", "path", "verify_token", "verify_token_file", "app_secrets", "app_secrets_file", "allow_sha1",
			"app_id", "access_token", "access_token_file")
		if !ok {
			continue
		}
		a := App{Path: defaultPath}
		if e, ok := f["name"]; ok {
			if v, ok := d.nonEmpty(e.val, join(p, "name")); ok {
				if line, dup := names[v]; dup {
					d.problem(e.val, join(p, "name"), "duplicate app name %q (first at line %d)", v, line)
				}
				names[v] = e.val.Line
				a.Name = v
			}
		} else {
			d.missing(it, p, "name", "every app needs a name, used in logs and in rules as `app`")
		}
		if e, ok := f["path"]; ok {
			if v, ok := d.urlPath(e.val, join(p, "path")); ok {
				a.Path = v
			}
		}
		tokenNode := d.setPair(it, f, p, "verify_token", "verify token", true, &a.VerifyToken)
		if tokenNode != nil && a.VerifyToken != "" {
			// Apps on one path are told apart by the verify token of Meta's subscription
			// request, so two apps there must not share it. Compare without echoing it.
			key := a.Path + "\x00" + a.VerifyToken
			if prev, dup := tokens[key]; dup {
				d.problem(tokenNode, join(p, "verify_token"), "apps[%d] (%q, line %d) has the same path %s and verify token: Meta's verification request could not tell them apart", prev.index, prev.name, prev.line, a.Path)
			} else {
				tokens[key] = seen{index: i, name: a.Name, line: it.Line}
			}
		}
		d.appSecrets(it, f, p, &a)
		d.setBool(f, p, "allow_sha1", &a.AllowSHA1)
		d.appGraph(it, f, p, &a)
		apps = append(apps, a)
	}
	return apps
}

// appSecrets decodes app_secrets or app_secrets_file.
func (d *decoder) appSecrets(n *yaml.Node, f fields, path string, a *App) {
	e, inline := f["app_secrets"]
	ef, fromFile := f["app_secrets_file"]
	switch {
	case inline && fromFile:
		d.problem(ef.key, join(path, "app_secrets_file"), "set app_secrets or app_secrets_file, not both")
	case inline:
		p := join(path, "app_secrets")
		its := d.items(e.val, p)
		for _, it := range its {
			if v, ok := d.secret(it.node, it.path, "secret"); ok {
				a.AppSecrets = append(a.AppSecrets, v)
			}
		}
		if len(its) == 0 && isEmptyList(e.val) {
			d.problem(e.val, p, "at least one app secret is required")
		}
	case fromFile:
		p := join(path, "app_secrets_file")
		name, ok := d.nonEmpty(ef.val, p)
		if !ok {
			return
		}
		b, err := os.ReadFile(name)
		if err != nil {
			d.problem(ef.val, p, "read app secrets: %v", unwrapPath(err))
			return
		}
		for line := range strings.Lines(string(b)) {
			if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
				a.AppSecrets = append(a.AppSecrets, s)
			}
		}
		if len(a.AppSecrets) == 0 {
			d.problem(ef.val, p, "no secret in %s: write one app secret per line", name)
		}
	default:
		d.missing(n, path, "app_secrets", "set app_secrets (a list, several while rotating) or app_secrets_file")
	}
}
