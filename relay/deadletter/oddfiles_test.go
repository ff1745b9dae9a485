//go:build unix

package deadletter_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hubrelay/hubrelay/relay/deadletter"
)

// within runs f and fails the test if it has not returned after a generous deadline: the
// point of these tests is that nothing blocks, so a blocked call must fail, not hang the run.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s still blocked after 20s", what)
	}
}

// oddFile makes, at path, an entry that is not a regular letter inside its directory.
type oddFile struct {
	name    string
	make    func(t *testing.T, path string)
	wantErr error  // what List, Get and QueueReplay report it as
	detail  string // in the error text
}

func oddFiles(outside string) []oddFile {
	return []oddFile{
		{"fifo", func(t *testing.T, p string) {
			if err := syscall.Mkfifo(p, 0o640); err != nil {
				t.Fatal(err)
			}
			// Unblock any reader that opened it anyway, so a failing test ends.
			t.Cleanup(func() {
				if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			})
		}, deadletter.ErrNotRegular, "named pipe"},
		{"symlink to /dev/zero", func(t *testing.T, p string) { symlink(t, "/dev/zero", p) },
			deadletter.ErrNotRegular, "leading out of the directory"},
		{"symlink to a letter outside", func(t *testing.T, p string) { symlink(t, outside, p) },
			deadletter.ErrNotRegular, "leading out of the directory"},
		{"relative symlink climbing out", func(t *testing.T, p string) {
			rel, err := filepath.Rel(filepath.Dir(p), outside)
			if err != nil {
				t.Fatal(err)
			}
			symlink(t, rel, p)
		}, deadletter.ErrNotRegular, "leading out of the directory"},
		{"dangling symlink", func(t *testing.T, p string) { symlink(t, filepath.Join(filepath.Dir(p), "nothing"), p) },
			deadletter.ErrNotRegular, "to nothing"},
		{"socket", func(t *testing.T, p string) {
			fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Close(fd)
			if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: p}); err != nil {
				t.Skipf("bind unix socket: %v", err) // path too long on some systems
			}
		}, deadletter.ErrNotRegular, "socket"},
		{"huge sparse file", func(t *testing.T, p string) {
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(1 << 40); err != nil {
				t.Skipf("sparse file: %v", err)
			}
		}, deadletter.ErrCorrupt, "larger than"},
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// TestDir_OddFiles: a named pipe, a link to /dev/zero or out of the directory, a socket or a
// huge file named like a letter is reported by name and skipped; it never blocks List, Get,
// Count, QueueReplay or Pending, and the real letters next to it are still listed.
func TestDir_OddFiles(t *testing.T) {
	for _, of := range oddFiles("") {
		t.Run(of.name, func(t *testing.T) {
			d := openDir(t)
			// A valid letter outside the directory, which a link must not smuggle in.
			outsideDir := t.TempDir()
			outside := filepath.Join(outsideDir, "x.json")
			od, err := deadletter.Open(outsideDir)
			if err != nil {
				t.Fatal(err)
			}
			l := letter("orders", 9)
			write(t, od, l)
			if err := os.Rename(filepath.Join(outsideDir, l.ID+".json"), outside); err != nil {
				t.Fatal(err)
			}
			of := oddFiles(outside)[indexOf(of.name)]
			write(t, d, letter("orders", 1), letter("orders", 2))
			const odd = "orders-00000000000000000099"
			of.make(t, filepath.Join(d.Path(), odd+".json"))
			check := func(op string, err error) {
				t.Helper()
				if !errors.Is(err, of.wantErr) || !strings.Contains(err.Error(), of.detail) || !strings.Contains(err.Error(), odd) {
					t.Errorf("%s: error %v, want %v naming %s and saying %q", op, err, of.wantErr, odd, of.detail)
				}
			}
			within(t, "List", func() {
				letters, err := d.List(deadletter.Filter{})
				check("List", err)
				if got := strings.Join(ids(letters), ","); got != "orders-00000000000000000001,orders-00000000000000000002" {
					t.Errorf("List = %s, want the two real letters", got)
				}
			})
			within(t, "Get", func() {
				_, err := d.Get(odd)
				check("Get", err)
			})
			within(t, "Count", func() {
				n, err := d.Count("orders")
				if err != nil || n > 3 {
					t.Errorf("Count = %d, %v", n, err)
				}
			})
			within(t, "QueueReplay", func() {
				check("QueueReplay", d.QueueReplay(odd))
			})
			within(t, "Write under the odd file's id", func() {
				// The delivery engine asks whether an id is free by reading it.
				w := letter("orders", 99)
				if err := d.Write(w); err != nil {
					t.Errorf("Write: %v", err)
				}
				if w.ID == odd {
					t.Errorf("Write replaced the odd file %s", odd)
				}
			})
			// The same entry in replay/, where the running relay polls.
			of.make(t, filepath.Join(d.Path(), "replay", odd+".json"))
			within(t, "Pending", func() {
				_, err := d.Pending()
				check("Pending", err)
			})
		})
	}
}

func indexOf(name string) int {
	for i, of := range oddFiles("") {
		if of.name == name {
			return i
		}
	}
	panic(name)
}

// TestDir_SymlinkInside: a symbolic link to a letter inside the directory is read.
func TestDir_SymlinkInside(t *testing.T) {
	d := openDir(t)
	l := letter("orders", 1)
	write(t, d, l)
	symlink(t, l.ID+".json", filepath.Join(d.Path(), "alias.json"))
	got, err := d.Get("alias")
	if err != nil {
		t.Fatalf("Get through a link inside the directory: %v", err)
	}
	if got.ChangeID != l.ChangeID {
		t.Fatalf("Get = %s, want %s", got.ChangeID, l.ChangeID)
	}
}
