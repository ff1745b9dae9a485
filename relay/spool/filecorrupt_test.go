package spool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The spool file's corruption sweep: a flipped byte or a truncation at many positions of
// spool.db. Each case runs in a child process (SIGBUS, or an unrecovered panic in a goroutine
// of bbolt's, would kill the test binary), bounded in time: a case that does not answer within
// fileCaseTimeout fails, the child is killed, and the next case runs in a new child.

const (
	fileCorruptEnv  = "HUBRELAY_SPOOL_FILECORRUPT" // the case file a TestFileCorruptHelper child runs
	fileCaseTimeout = 90 * time.Second
)

// fileBase is a spool on disk to damage, and what it must deliver.
type fileBase struct {
	Dir     string            `json:"dir"`     // holds spool.db and its journal
	Pending map[string]string `json:"pending"` // "sink/seq" -> data of every acknowledged, undelivered change
	Used    int64             `json:"used"`    // bytes of spool.db below its high water mark; the rest is a hole
	// Where is where each pending change's data lies in a page the tree reaches (offset, end).
	Where map[string][2]int64 `json:"-"`
	Data  map[string]bool     `json:"-"` // every data ever accepted
}

// fileCase is one way of damaging the spool file.
type fileCase struct {
	Base  int    `json:"base"`
	Pos   int64  `json:"pos"`
	Trunc bool   `json:"trunc"` // truncate at Pos; else flip the byte at Pos
	What  string `json:"what"`  // where Pos lies, for messages
}

func (c fileCase) String() string {
	if c.Trunc {
		return fmt.Sprintf("base %d: spool.db truncated at %d (%s)", c.Base, c.Pos, c.What)
	}
	return fmt.Sprintf("base %d: spool.db byte %d flipped (%s)", c.Base, c.Pos, c.What)
}

// fileResult is what a child found for one case.
type fileResult struct {
	Case       int               `json:"case"`
	Refused    string            `json:"refused,omitempty"` // Open's error
	Damaged    bool              `json:"damaged"`           // it is an ErrDamaged
	RecoverErr string            `json:"recover_err,omitempty"`
	ReopenErr  string            `json:"reopen_err,omitempty"`
	Lost       []string          `json:"lost,omitempty"`      // "sink/seq" Recover reported lost
	Damage     [][2]int64        `json:"damage,omitempty"`    // (offset, end) of the spool.db damage Recover reported
	Delivered  map[string]string `json:"delivered,omitempty"` // "sink/seq" -> data
	SetAside   string            `json:"set_aside,omitempty"`
	KeptFile   bool              `json:"kept_file"` // the damaged spool.db is in SetAside
}

// buildFileBase makes a spool whose last transaction applied journal frames: items accepted
// for sinks a and b, some delivered to a, some of b's parked for a retry, then a last batch
// that Close applies (and whose segments it then deletes). crash leaves it as a crash would
// instead: the last frames only in the journal.
func buildFileBase(t *testing.T, crash bool) *fileBase {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	s, err := Open(path, Options{ApplyDelay: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	b := &fileBase{Dir: dir, Pending: map[string]string{}, Data: map[string]bool{}}
	n := 0
	accept := func(count int) {
		var items []Item
		for range count {
			d := fmt.Sprintf(`{"object":"whatsapp_business_account","entry":[{"id":"%d","changes":[{"field":"messages","value":{"body":"order %04d"}}]}]}`, n, n)
			items = append(items, Item{Key: fmt.Sprintf("k%04d", n), Data: []byte(d), Sinks: []string{"a", "b"}})
			b.Data[d] = true
			n++
		}
		mustAccept(t, s, t0.Add(time.Duration(n)*time.Second), items...)
	}
	for range 6 {
		accept(10)
		s.apply.waitApplied()
	}
	all := map[string]Delivery{}
	for _, sink := range []string{"a", "b"} {
		for _, d := range mustReady(t, s, sink, 0, 1000) {
			all[fmt.Sprintf("%s/%d", sink, d.Seq)] = d
		}
	}
	var doneA []uint64
	var retryB []Retry
	for k, d := range all {
		switch {
		case d.Sink == "a" && d.Seq%3 == 0:
			doneA = append(doneA, d.Seq)
		case d.Sink == "b" && d.Seq%4 == 1:
			retryB = append(retryB, Retry{Seq: d.Seq, At: t0.Add(time.Hour), Attempt: 1, History: []byte("503 from b")})
			b.Pending[k] = string(d.Data)
		default:
			b.Pending[k] = string(d.Data)
		}
	}
	if err := s.Done("a", doneA...); err != nil {
		t.Fatal(err)
	}
	if err := s.RescheduleBatch("b", retryB); err != nil {
		t.Fatal(err)
	}
	accept(10) // the last transaction (Close's apply, or the journal after a crash)
	for _, sink := range []string{"a", "b"} {
		for _, d := range mustReady(t, s, sink, 0, 1000) {
			if k := fmt.Sprintf("%s/%d", sink, d.Seq); all[k].Seq == 0 {
				b.Pending[k] = string(d.Data)
			}
		}
	}
	if crash {
		release := holdCommits(t, s)
		cp := copySpool(t, path)
		release()
		_ = s.Close()
		b.Dir = filepath.Dir(cp)
		if err := os.Rename(cp, filepath.Join(b.Dir, "spool.db")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(journalDir(cp), journalDir(filepath.Join(b.Dir, "spool.db"))); err != nil {
			t.Fatal(err)
		}
	} else if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return b
}

// fileCases picks the positions to damage in the base's spool file: bytes of both meta pages,
// of the header, element table and data of every page the tree reaches (and of a free page),
// and truncations at every page boundary, inside pages and inside the meta pages.
func fileCases(t *testing.T, base int, b *fileBase) []fileCase {
	t.Helper()
	path := filepath.Join(b.Dir, "spool.db")
	chk, err := checkBoltFile(path, nil)
	if err != nil || len(chk.damage) > 0 {
		t.Fatalf("pristine spool file: %v %v", err, chk.damage)
	}
	ps := int64(chk.pageSize)
	b.Used = int64(chk.use.hwm) * ps
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b.Where = map[string][2]int64{}
	for k, d := range b.Pending {
		for off := 0; ; {
			i := strings.Index(string(raw[off:]), d)
			if i < 0 {
				break
			}
			at := int64(off + i)
			if slices.Contains(chk.reached, uint64(at/ps)) {
				b.Where[k] = [2]int64{at, at + int64(len(d))}
				break
			}
			off += i + 1
		}
	}
	var out []fileCase
	add := func(pos int64, trunc bool, what string) {
		if pos >= 0 && pos < chk.size {
			out = append(out, fileCase{Base: base, Pos: pos, Trunc: trunc, What: what})
		}
	}
	for page := range int64(2) {
		for _, off := range []int64{0, 8, 16, 20, 24, 28, 32, 40, 48, 56, 64, 72} {
			add(page*ps+off, false, fmt.Sprintf("meta page %d +%d", page, off))
		}
	}
	reached := map[uint64]bool{}
	// Of each page: 5 of its header and element table bytes (the page id, flags, count,
	// overflow, and an element's offset, lengths or flags, rotating from page to page) and 3
	// of its keys and values.
	hdr := []int64{0, 8, 10, 12, 16, 20, 24, 28, 32, 40}
	for i, id := range chk.reached {
		reached[id] = true
		start := int64(id) * ps
		for k := range 5 {
			off := hdr[(i*5+k)%len(hdr)]
			add(start+off, false, fmt.Sprintf("page %d header/elements +%d", id, off))
		}
		for off := int64(64 + 37*i%97); off < ps; off += ps / 3 {
			add(start+off, false, fmt.Sprintf("page %d data +%d", id, off))
		}
	}
	for id := uint64(2); id < chk.use.hwm; id++ {
		if !reached[id] {
			add(int64(id)*ps+8, false, fmt.Sprintf("free page %d", id))
			break
		}
	}
	for _, pos := range []int64{0, 1, 100, ps - 1, ps + 50, 2*ps - 1} {
		add(pos, true, "inside the meta pages")
	}
	for id := int64(2); id*ps < b.Used; id++ {
		if id%2 == 0 {
			add(id*ps, true, fmt.Sprintf("at page %d", id))
		} else {
			add(id*ps+ps/2, true, fmt.Sprintf("inside page %d", id))
		}
	}
	add(b.Used, true, "at the high water mark")
	add(chk.size-1, true, "last byte")
	return out
}

// TestSpoolFile_Corruption damages spool.db (see fileCases) of two spools, one closed cleanly
// right after a commit that applied journal frames, one copied as a crash leaves it. For each
// case, Open either takes the spool and every acknowledged change is delivered, or it refuses
// with ErrDamaged naming the file, and Recover then sets the damaged file aside and delivers
// every change it does not report lost; a change that is neither delivered nor reported lost
// is a silent loss, and fails the test. No case may crash or hang the process.
//
// It takes longer than 20 s: ~300 cases, each an Open, a Recover and an Open again of a damaged
// copy in a child process (a child for all the cases that follow a crash), which is what it
// takes to show that no position crashes the relay (50 s without -race at load 30 on 2 cores).
func TestSpoolFile_Corruption(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	bases := []*fileBase{buildFileBase(t, false), buildFileBase(t, true)}
	var cases []fileCase
	for i, b := range bases {
		cases = append(cases, fileCases(t, i, b)...)
	}
	results := runFileCases(t, bases, cases)

	var flips, truncs, refused, opened, acked, delivered, lostReported, lostDamaged, silent, altered, notKept int
	for i, c := range cases {
		if c.Trunc {
			truncs++
		} else {
			flips++
		}
		r, ok := results[i]
		if !ok {
			continue // runFileCases failed it
		}
		b := bases[c.Base]
		if r.Refused != "" {
			refused++
			switch {
			case !r.Damaged:
				t.Errorf("%s: Open refused with %q, not an ErrDamaged", c, r.Refused)
			case !strings.Contains(r.Refused, "spool.db"):
				t.Errorf("%s: the error does not name spool.db: %s", c, r.Refused)
			case r.RecoverErr != "":
				t.Errorf("%s: Recover: %s", c, r.RecoverErr)
				continue
			case r.ReopenErr != "":
				t.Errorf("%s: Open after Recover: %s", c, r.ReopenErr)
				continue
			case !r.KeptFile:
				notKept++
				t.Errorf("%s: the damaged spool.db was not set aside (%q)", c, r.SetAside)
			}
		} else {
			opened++
		}
		for k, d := range b.Pending {
			acked++
			switch {
			case r.Delivered[k] == d:
				delivered++
			case slices.Contains(r.Lost, k):
				lostReported++
			case r.Refused != "" && inDamage(b.Where[k], r.Damage):
				lostDamaged++ // its bytes were in a part recover reported damaged or missing
			default:
				silent++
				t.Errorf("%s: acknowledged change %s (data at %v) silently lost (refused: %v; damage reported at %v)", c, k, b.Where[k], r.Refused != "", r.Damage)
			}
		}
		for k, d := range r.Delivered {
			if !b.Data[d] {
				altered++
				t.Errorf("%s: delivered %s as %q, which was never accepted", c, k, d)
			}
		}
	}
	t.Logf("spool.db corruption: %d positions (%d flipped bytes, %d truncations); %d opened as they were, "+
		"%d refused and recovered; %d acknowledged changes, %d delivered, lost: %d listed by recover, "+
		"%d whose data lay in the damaged or missing part recover reported, %d silently; %d altered; %d damaged files not set aside",
		len(cases), flips, truncs, opened, refused, acked, delivered, lostReported, lostDamaged, silent, altered, notKept)
}

// inDamage reports whether the range at overlaps one of the damaged ranges.
func inDamage(at [2]int64, damage [][2]int64) bool {
	if at[1] == 0 {
		return false // not found in the pristine file: no excuse
	}
	for _, d := range damage {
		if at[0] < d[1] && d[0] < at[1] {
			return true
		}
	}
	return false
}

// runFileCases runs the cases in child processes and returns their results by case index. A
// case that crashes its child or does not answer within fileCaseTimeout fails the test; the
// cases after it run in a new child.
func runFileCases(t *testing.T, bases []*fileBase, cases []fileCase) map[int]fileResult {
	t.Helper()
	spec := filepath.Join(t.TempDir(), "cases.json")
	results := map[int]fileResult{}
	for next := 0; next < len(cases); {
		buf, err := json.Marshal(struct {
			Bases []*fileBase `json:"bases"`
			Cases []fileCase  `json:"cases"`
			First int         `json:"first"`
		}{bases, cases, next})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(spec, buf, 0o600); err != nil {
			t.Fatal(err)
		}
		next = runFileChild(t, spec, cases, next, results)
	}
	return results
}

// runFileChild runs one child from case first on; it returns the case to go on from.
func runFileChild(t *testing.T, spec string, cases []fileCase, first int, results map[int]fileResult) int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFileCorruptHelper$")
	cmd.Env = append(os.Environ(), fileCorruptEnv+"="+spec)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	current := first
	timer := time.NewTimer(fileCaseTimeout)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				err := cmd.Wait()
				if current < len(cases) {
					tail := stderr.String()
					if len(tail) > 2000 {
						tail = tail[len(tail)-2000:]
					}
					t.Errorf("%s: the process died (%v):\n%s", cases[current], err, tail)
					return current + 1
				}
				return current
			}
			var r fileResult
			if rest, ok := strings.CutPrefix(line, "result "); ok {
				if err := json.Unmarshal([]byte(rest), &r); err != nil {
					t.Fatalf("child result %q: %v", line, err)
				}
				results[r.Case] = r
				current = r.Case + 1
				timer.Reset(fileCaseTimeout)
			}
		case <-timer.C:
			cancel()
			_ = cmd.Wait()
			t.Errorf("%s: no answer within %s; killed", cases[current], fileCaseTimeout)
			return current + 1
		}
	}
}

// TestFileCorruptHelper is not a test: runFileChild runs the test binary again with it
// selected to run spool file cases (see TestSpoolFile_Corruption).
func TestFileCorruptHelper(t *testing.T) {
	spec := os.Getenv(fileCorruptEnv)
	if spec == "" {
		t.Skip("helper process for TestSpoolFile_Corruption")
	}
	buf, err := os.ReadFile(spec)
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		Bases []*fileBase `json:"bases"`
		Cases []fileCase  `json:"cases"`
		First int         `json:"first"`
	}
	if err := json.Unmarshal(buf, &in); err != nil {
		t.Fatal(err)
	}
	for i := in.First; i < len(in.Cases); i++ {
		r := runFileCase(t, in.Bases[in.Cases[i].Base], in.Cases[i])
		r.Case = i
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(os.Stdout, "result %s\n", out)
	}
}

// runFileCase damages a copy of b as c says and reports what Open, and Recover if Open
// refuses, make of it.
func runFileCase(t *testing.T, b *fileBase, c fileCase) fileResult {
	dir := t.TempDir()
	path := filepath.Join(dir, "spool.db")
	if err := os.MkdirAll(journalDir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	segs, err := listSegments(journalDir(filepath.Join(b.Dir, "spool.db")))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range segs {
		copyFile(t, p, filepath.Join(journalDir(path), filepath.Base(p)))
	}
	// The file is mostly a hole past its high water mark (bbolt grows it in large steps):
	// copy what is used and extend the copy with a hole.
	raw, err := os.ReadFile(filepath.Join(b.Dir, "spool.db"))
	if err != nil {
		t.Fatal(err)
	}
	size := int64(len(raw))
	if c.Trunc {
		size = c.Pos
	} else {
		raw[c.Pos] ^= 0x5a
	}
	if err := os.WriteFile(path, raw[:min(size, max(b.Used, c.Pos+1))], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	var r fileResult
	s, err := Open(path, Options{})
	if err != nil {
		r.Refused, r.Damaged = err.Error(), errors.Is(err, ErrDamaged)
		rep, err := Recover(path, Options{})
		if err != nil {
			r.RecoverErr = err.Error()
			return r
		}
		r.Lost, r.SetAside = rep.Lost, rep.SetAside
		for _, d := range rep.Damage {
			switch {
			case d.File == path && d.ToEnd:
				r.Damage = append(r.Damage, [2]int64{d.Offset, math.MaxInt64})
			case d.File == path:
				r.Damage = append(r.Damage, [2]int64{d.Offset, d.Offset + d.Len})
			}
		}
		if rep.SetAside != "" {
			_, err := os.Stat(filepath.Join(rep.SetAside, "spool.db"))
			r.KeptFile = err == nil
		}
		if s, err = Open(path, Options{}); err != nil {
			r.ReopenErr = err.Error()
			return r
		}
	}
	defer s.Close()
	r.Delivered = map[string]string{}
	for range 100 {
		low, err := s.Promote(t0.Add(10 * 365 * 24 * time.Hour))
		if err != nil || len(low) == 0 {
			break
		}
	}
	for _, sink := range []string{"a", "b"} {
		ds, err := s.Ready(sink, 0, 100000)
		if err != nil {
			r.ReopenErr = fmt.Sprintf("ready %s: %v", sink, err)
			return r
		}
		for _, d := range ds {
			r.Delivered[fmt.Sprintf("%s/%d", sink, d.Seq)] = string(d.Data)
		}
	}
	return r
}
