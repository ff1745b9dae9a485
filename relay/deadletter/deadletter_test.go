package deadletter_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

var t0 = time.Date(2025, 6, 8, 12, 0, 0, 0, time.UTC)

func openDir(t *testing.T) *deadletter.Dir {
	t.Helper()
	d, err := deadletter.Open(filepath.Join(t.TempDir(), "dead-letter"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// letter returns a valid letter of sink, dead at t0 plus seq minutes.
func letter(sink string, seq uint64, rules ...string) *deadletter.Letter {
	return &deadletter.Letter{
		Sink:     sink,
		Seq:      seq,
		ChangeID: fmt.Sprintf("change-%d", seq),
		Rules:    rules,
		Reason:   "max attempts (3) reached",
		FirstAt:  t0,
		DeadAt:   t0.Add(time.Duration(seq) * time.Minute),
		Attempts: []deadletter.Attempt{{At: t0, Status: 503, Error: "status 503"}},
		Change:   []byte(fmt.Sprintf(`{"id":"change-%d","object":"page","field":"feed","value":{"item":"photo"}}`, seq)),
	}
}

func write(t *testing.T, d *deadletter.Dir, letters ...*deadletter.Letter) {
	t.Helper()
	for _, l := range letters {
		if err := d.Write(l); err != nil {
			t.Fatal(err)
		}
	}
}

func ids(letters []*deadletter.Letter) []string {
	out := []string{}
	for _, l := range letters {
		out = append(out, l.ID)
	}
	return out
}

// dirNames returns the names in dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestDir_WriteGet(t *testing.T) {
	d := openDir(t)
	// Nested JSON, raw UTF-8 from several scripts, Meta's \u escapes (which must stay as they
	// are: a raw body's signature covers them) and HTML characters (which must not become \u003c).
	change := `{"id":"wamid.X","object":"whatsapp_business_account","entry":{"id":"1","time":0},"field":"messages",` +
		`"value":{"contacts":[{"profile":{"name":"محمد Élodie 😊"}}],"messages":[{"text":{"body":"Café \u00e9 \ud83d\udc4d <b>&</b> 日本語"},"n":[1,[2,{"x":null}],true]}]}}`
	in := letter("orders", 7, "whatsapp-inbound")
	in.Change = []byte(change)
	in.Signature = "sha256=0f1e2d"
	write(t, d, in)

	got, err := d.Get(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("Get = %+v, want %+v", got, in)
	}
	if string(got.Change) != change {
		t.Fatalf("change not byte for byte:\n got %s\nwant %s", got.Change, change)
	}

	file, err := os.ReadFile(filepath.Join(d.Path(), in.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(file)
	for _, want := range []string{
		"\n  \"change\": {\n", // the change is a JSON object, indented with the letter
		"\n          \"profile\": {\n            \"name\": \"محمد Élodie 😊\"", // nested and raw UTF-8 kept readable
		`"body": "Café \u00e9 \ud83d\udc4d <b>&</b> 日本語"`,                     // escapes and HTML characters as given
		"\n  \"sink\": \"orders\",\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("file does not contain %q:\n%s", want, text)
		}
	}
	if b64 := base64.StdEncoding.EncodeToString([]byte(change)); strings.Contains(text, b64[:40]) {
		t.Errorf("file holds the change as base64:\n%s", text)
	}
	if !strings.HasSuffix(text, "}\n") {
		t.Errorf("file does not end with a newline")
	}
	if fi, err := os.Stat(filepath.Join(d.Path(), in.ID+".json")); err != nil {
		t.Fatal(err)
	} else if perm := fi.Mode().Perm(); perm != 0o640 {
		t.Errorf("file mode %v, want 0640", perm)
	}
}

// TestDir_IDsNeverCollide: sink names that sanitize alike, and a sequence number reused by a
// new spool, each keep their own letter.
func TestDir_IDsNeverCollide(t *testing.T) {
	d := openDir(t)
	a, b := letter("crm v2", 7), letter("crm_v2", 7)
	c := letter("crm v2", 7)
	c.ChangeID = "another-change-same-seq"
	for _, l := range []*deadletter.Letter{a, b, c} {
		write(t, d, l)
	}
	ids := map[string]bool{a.ID: true, b.ID: true, c.ID: true}
	if len(ids) != 3 {
		t.Fatalf("ids %q %q %q collide", a.ID, b.ID, c.ID)
	}
	all, err := d.List(deadletter.Filter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("%d letters (%v), want 3", len(all), err)
	}
	again := letter("crm v2", 7) // the same change again: replaces its own letter
	write(t, d, again)
	if again.ID != a.ID {
		t.Errorf("rewriting a letter got id %q, want %q", again.ID, a.ID)
	}
}

func TestDir_WriteDefaults(t *testing.T) {
	tests := []struct {
		name   string
		sink   string
		seq    uint64
		wantID string
	}{
		{"plain", "orders", 42, "orders-00000000000000000042"},
		{"max seq", "orders", ^uint64(0), "orders-18446744073709551615"},
		{"path characters", "../etc/passwd", 1, "_._etc_passwd.62dab22f-00000000000000000001"},
		{"unicode and spaces", "ops é 1", 2, "ops____1.5633ee62-00000000000000000002"},
		{"dotted", "orders.v2", 3, "orders.v2-00000000000000000003"},
		{"long", strings.Repeat("s", 500), 4, strings.Repeat("s", 170) + ".85ab8949-00000000000000000004"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := openDir(t)
			l := letter(tt.sink, tt.seq)
			l.DeadAt = time.Time{}
			before := time.Now()
			write(t, d, l)
			if l.ID != tt.wantID {
				t.Errorf("ID = %q, want %q", l.ID, tt.wantID)
			}
			if l.Version != deadletter.Version {
				t.Errorf("Version = %d, want %d", l.Version, deadletter.Version)
			}
			if l.DeadAt.Before(before.Add(-time.Second)) {
				t.Errorf("DeadAt = %v, want about now", l.DeadAt)
			}
			want := []string{tt.wantID + ".json", "replay"}
			slices.Sort(want)
			if names := dirNames(t, d.Path()); !slices.Equal(names, want) {
				t.Errorf("dir holds %q", names)
			}
			got, err := d.Get(tt.wantID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Sink != tt.sink {
				t.Errorf("Sink = %q, want %q", got.Sink, tt.sink)
			}
		})
	}
}

func TestDir_WriteInvalid(t *testing.T) {
	tests := []struct {
		name   string
		letter func() *deadletter.Letter
		wantIs error
	}{
		{"nil", func() *deadletter.Letter { return nil }, nil},
		{"no sink", func() *deadletter.Letter { l := letter("", 1); return l }, nil},
		{"no change", func() *deadletter.Letter { l := letter("s", 1); l.Change = nil; return l }, nil},
		{"bad change", func() *deadletter.Letter { l := letter("s", 1); l.Change = []byte(`{"a":`); return l }, nil},
		{"newer version", func() *deadletter.Letter { l := letter("s", 1); l.Version = 2; return l }, nil},
		{"id with separator", func() *deadletter.Letter { l := letter("s", 1); l.ID = "../x"; return l }, deadletter.ErrInvalidID},
		{"dot id", func() *deadletter.Letter { l := letter("s", 1); l.ID = ".tmp-x"; return l }, deadletter.ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := openDir(t)
			err := d.Write(tt.letter())
			if err == nil {
				t.Fatal("Write succeeded")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v, want %v", err, tt.wantIs)
			}
			if names := dirNames(t, d.Path()); !reflect.DeepEqual(names, []string{"replay"}) {
				t.Errorf("failed Write left %q", names)
			}
		})
	}
}

func TestDir_WriteOverwrite(t *testing.T) {
	d := openDir(t)
	first := letter("orders", 9)
	write(t, d, first)
	again := letter("orders", 9)
	again.Reason = "max age 24h exceeded"
	again.Attempts = append(again.Attempts, deadletter.Attempt{At: t0.Add(time.Hour), Error: "timeout"})
	write(t, d, again)

	got, err := d.List(deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0], again) {
		t.Fatalf("List after rewrite = %+v, want only %+v", got, again)
	}
	if names := dirNames(t, d.Path()); !reflect.DeepEqual(names, []string{"orders-00000000000000000009.json", "replay"}) {
		t.Errorf("dir holds %q", names)
	}
}

func TestDir_ListFilters(t *testing.T) {
	d := openDir(t)
	// Written out of order: List sorts by DeadAt, then ID.
	write(t, d,
		letter("ops", 3, "page-photos"),
		letter("orders", 1, "whatsapp-inbound"),
		letter("orders", 2, "whatsapp-inbound", "page-photos"),
		letter("archive", 4),
	)
	same := letter("archive", 5)
	same.DeadAt = t0.Add(3 * time.Minute) // ties with ops-3: ID decides
	write(t, d, same)

	tests := []struct {
		name    string
		filter  deadletter.Filter
		want    []string
		wantErr error
	}{
		{"all", deadletter.Filter{}, []string{"orders-00000000000000000001", "orders-00000000000000000002", "archive-00000000000000000005", "ops-00000000000000000003", "archive-00000000000000000004"}, nil},
		{"sink", deadletter.Filter{Sink: "orders"}, []string{"orders-00000000000000000001", "orders-00000000000000000002"}, nil},
		{"unknown sink", deadletter.Filter{Sink: "nope"}, []string{}, nil},
		{"rule", deadletter.Filter{Rule: "page-photos"}, []string{"orders-00000000000000000002", "ops-00000000000000000003"}, nil},
		{"since inclusive", deadletter.Filter{Since: t0.Add(3 * time.Minute)}, []string{"archive-00000000000000000005", "ops-00000000000000000003", "archive-00000000000000000004"}, nil},
		{"until exclusive", deadletter.Filter{Until: t0.Add(2 * time.Minute)}, []string{"orders-00000000000000000001"}, nil},
		{"sink and since", deadletter.Filter{Sink: "archive", Since: t0.Add(4 * time.Minute)}, []string{"archive-00000000000000000004"}, nil},
		{"ids", deadletter.Filter{IDs: []string{"ops-00000000000000000003", "orders-00000000000000000001", "ops-00000000000000000003"}}, []string{"orders-00000000000000000001", "ops-00000000000000000003"}, nil},
		{"ids and sink", deadletter.Filter{IDs: []string{"ops-00000000000000000003", "orders-00000000000000000001"}, Sink: "ops"}, []string{"ops-00000000000000000003"}, nil},
		{"missing id", deadletter.Filter{IDs: []string{"orders-00000000000000000001", "orders-00000000000000000099"}}, []string{"orders-00000000000000000001"}, fs.ErrNotExist},
		{"bad id", deadletter.Filter{IDs: []string{"../orders-00000000000000000001"}}, []string{}, deadletter.ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.List(tt.filter)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if g := ids(got); !slices.Equal(g, tt.want) {
				t.Errorf("List = %q, want %q", g, tt.want)
			}
		})
	}
}

func TestDir_ListIgnoresNonLetters(t *testing.T) {
	d := openDir(t)
	write(t, d, letter("orders", 1))
	// What a crash during Write, an editor or an operator may leave behind.
	for name, data := range map[string]string{
		".tmp-orders-00000000000000000002.json-12345": `{"version":1,"sink":"ord`,
		".orders-00000000000000000001.json.swp":       "\x00\x01",
		"README.txt":                                  "notes",
	} {
		if err := os.WriteFile(filepath.Join(d.Path(), name), []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(d.Path(), "old.json"), 0o750); err != nil {
		t.Fatal(err)
	}
	got, err := d.List(deadletter.Filter{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if g := ids(got); !slices.Equal(g, []string{"orders-00000000000000000001"}) {
		t.Errorf("List = %q", g)
	}
	if n, err := d.Count(""); err != nil || n != 1 {
		t.Errorf("Count = %d, %v; want 1", n, err)
	}
}

func TestDir_ListCorrupt(t *testing.T) {
	d := openDir(t)
	write(t, d, letter("orders", 1), letter("orders", 2))
	bad := map[string]string{
		"truncated.json":  `{"version":1,"sink":"orders","change":{"a"`,
		"noversion.json":  `{"sink":"orders","change":{}}`,
		"newer.json":      `{"version":2,"sink":"orders","change":{}}`,
		"nosink.json":     `{"version":1,"change":{}}`,
		"nochange.json":   `{"version":1,"sink":"orders","change":null}`,
		"wrongtypes.json": `{"version":"1","sink":"orders","change":{}}`,
		"bad name.json":   `{"version":1,"sink":"orders","change":{}}`,
	}
	for name, data := range bad {
		if err := os.WriteFile(filepath.Join(d.Path(), name), []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}

	got, err := d.List(deadletter.Filter{})
	if g := ids(got); !slices.Equal(g, []string{"orders-00000000000000000001", "orders-00000000000000000002"}) {
		t.Errorf("List = %q, want the two good letters", g)
	}
	if !errors.Is(err, deadletter.ErrCorrupt) || !errors.Is(err, deadletter.ErrInvalidID) {
		t.Fatalf("List error %v, want ErrCorrupt and ErrInvalidID", err)
	}
	for name := range bad {
		if !strings.Contains(err.Error(), filepath.Join(d.Path(), name)) {
			t.Errorf("List error does not name %s:\n%v", name, err)
		}
	}
	if _, err := d.Get("truncated"); !errors.Is(err, deadletter.ErrCorrupt) {
		t.Errorf("Get(truncated) error %v, want ErrCorrupt", err)
	}
}

func TestDir_InvalidIDs(t *testing.T) {
	root := t.TempDir()
	d, err := deadletter.Open(filepath.Join(root, "dl"))
	if err != nil {
		t.Fatal(err)
	}
	// A valid letter just outside the directory, which "../outside" would reach.
	outside := letter("orders", 1)
	outside.Version = deadletter.Version
	outside.ID = "outside"
	other, err := deadletter.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	write(t, other, outside)

	for _, id := range []string{"", "../outside", "..", ".", "a/b", `a\b`, "/etc/passwd", ".hidden", "nul\x00", "é", strings.Repeat("a", 201)} {
		t.Run(fmt.Sprintf("%q", id), func(t *testing.T) {
			if _, err := d.Get(id); !errors.Is(err, deadletter.ErrInvalidID) {
				t.Errorf("Get error %v, want ErrInvalidID", err)
			}
			if err := d.Remove(id); !errors.Is(err, deadletter.ErrInvalidID) {
				t.Errorf("Remove error %v, want ErrInvalidID", err)
			}
			if err := d.QueueReplay(id); !errors.Is(err, deadletter.ErrInvalidID) {
				t.Errorf("QueueReplay error %v, want ErrInvalidID", err)
			}
			if err := d.Ack(id); !errors.Is(err, deadletter.ErrInvalidID) {
				t.Errorf("Ack error %v, want ErrInvalidID", err)
			}
		})
	}
	if _, err := other.Get("outside"); err != nil {
		t.Errorf("letter outside the directory was touched: %v", err)
	}
}

func TestDir_GetRemoveMissing(t *testing.T) {
	d := openDir(t)
	if _, err := d.Get("orders-00000000000000000001"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get error %v, want fs.ErrNotExist", err)
	}
	if err := d.Remove("orders-00000000000000000001"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Remove error %v, want fs.ErrNotExist", err)
	}
}

func TestDir_Remove(t *testing.T) {
	d := openDir(t)
	write(t, d, letter("orders", 1), letter("orders", 2))
	if err := d.Remove("orders-00000000000000000001"); err != nil {
		t.Fatal(err)
	}
	got, err := d.List(deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if g := ids(got); !slices.Equal(g, []string{"orders-00000000000000000002"}) {
		t.Errorf("List after Remove = %q", g)
	}
}

func TestDir_GetRenamedFile(t *testing.T) {
	d := openDir(t)
	l := letter("orders", 1)
	write(t, d, l)
	data, err := os.ReadFile(filepath.Join(d.Path(), l.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.Path(), "copy.json"), data, 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := d.Get("copy")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "copy" {
		t.Errorf("ID = %q, want the file name %q", got.ID, "copy")
	}
}

func TestDir_Count(t *testing.T) {
	d := openDir(t)
	custom := letter("orders", 9)
	custom.ID = "orders-manual"
	write(t, d, letter("orders", 1), letter("orders", 2), letter("orders-eu", 3), letter("ops", 4), custom)
	if err := d.QueueReplay("ops-00000000000000000004"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		sink string
		want int
	}{
		{"", 4},
		{"orders", 2},
		{"orders-eu", 1},
		{"ops", 0},
		{"nope", 0},
	}
	for _, tt := range tests {
		t.Run(tt.sink, func(t *testing.T) {
			n, err := d.Count(tt.sink)
			if err != nil {
				t.Fatal(err)
			}
			if n != tt.want {
				t.Errorf("Count(%q) = %d, want %d", tt.sink, n, tt.want)
			}
		})
	}
}

func TestDir_ConcurrentWrites(t *testing.T) {
	d := openDir(t)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				// Every writer also rewrites one shared letter, which must stay whole.
				for _, l := range []*deadletter.Letter{letter(fmt.Sprintf("sink%d", w), uint64(i)), letter("shared", 0)} {
					if err := d.Write(l); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := d.List(deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != writers*each+1 {
		t.Errorf("List returned %d letters, want %d", len(got), writers*each+1)
	}
	for _, name := range dirNames(t, d.Path()) {
		if strings.HasPrefix(name, ".") {
			t.Errorf("temporary file left behind: %s", name)
		}
	}
}

func TestOpen_Existing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	d, err := deadletter.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	write(t, d, letter("orders", 1))
	// A second process (the CLI while serve runs) opens the same directory.
	d2, err := deadletter.Open(dir + string(filepath.Separator))
	if err != nil {
		t.Fatal(err)
	}
	if d2.Path() != dir {
		t.Errorf("Path = %q, want %q", d2.Path(), dir)
	}
	if _, err := d2.Get("orders-00000000000000000001"); err != nil {
		t.Error(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "replay")} {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			t.Errorf("%s: not a directory (%v)", p, err)
		}
	}
}

func TestOpen_NotADirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := deadletter.Open(file); err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
}
