package relay

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// README markers around the generated identity table.
const (
	identityTableBegin = "<!-- identity table: generated from relay.Identities by `go test ./relay -run TestREADME -update` -->\n"
	identityTableEnd   = "<!-- end of identity table -->\n"
)

// identityTable renders Identities as the README's markdown table.
func identityTable() string {
	var b strings.Builder
	b.WriteString("| object | field | verb | source | key | what identifies the change |\n|---|---|---|---|---|---|\n")
	anyOr := func(s string) string {
		if s == "" {
			return "any"
		}
		return "`" + s + "`"
	}
	for _, id := range Identities {
		verbs := "any"
		if id.Verbs != nil {
			verbs = "`" + strings.Join(id.Verbs, "`, `") + "`"
		}
		sources := "any"
		if id.Sources != nil {
			names := make([]string, len(id.Sources))
			for i, s := range id.Sources {
				names[i] = s.String()
			}
			sources = "`" + strings.Join(names, "`, `") + "`"
		}
		var key string
		switch id.Kind {
		case IdentityWhatsApp:
			key = "`wa:msg:<app>:<ids>`, `wa:st:<app>:<id>:<status>[:<recipient_id>:<participant>]`; else `h:` value + time"
		case IdentityMid:
			key = "`mid:<app>:<object>:<field>:<verb>:<mid>`; else `h:` value"
		case IdentityValue:
			key = "`h:` value"
		default:
			key = "`h:` value + time"
		}
		b.WriteString("| " + anyOr(id.Object) + " | " + anyOr(id.Field) + " | " + verbs + " | " + sources + " | " + key + " | " + id.Why + " |\n")
	}
	return b.String()
}

// TestREADME_IdentityTable checks that the README's dedup key table is the one Key uses.
func TestREADME_IdentityTable(t *testing.T) {
	const path = "../README.md"
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(readme, []byte(identityTableBegin))
	j := bytes.Index(readme, []byte(identityTableEnd))
	if i < 0 || j < i {
		t.Fatalf("README.md has no identity table between %q and %q", identityTableBegin, identityTableEnd)
	}
	i += len(identityTableBegin)
	want := identityTable()
	if got := string(readme[i:j]); got != want {
		if *updateGolden {
			out := append(append(append([]byte{}, readme[:i]...), want...), readme[j:]...)
			if err := os.WriteFile(path, out, 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README.md's identity table differs from relay.Identities (rerun with -update):\n%s", want)
	}
}
