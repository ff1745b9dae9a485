package bench

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// DefaultSecretEnv is the environment variable through which the bench hands the app secret to
// its children, so that it never shows in a process listing.
const DefaultSecretEnv = "HUBRELAY_BENCH_SECRET"

// maxReferenceBody is the reference server's body limit, hubrelay's default max_body_bytes.
const maxReferenceBody = 8 << 20

// ReferenceConfig configures the reference server.
type ReferenceConfig struct {
	// Listen is the address to listen on, 127.0.0.1:port.
	Listen string
	// Secret is the app secret that signs notifications.
	Secret string
	// FsyncFile, when set, makes every accepted body be appended to this file and fsync'd
	// before the answer, one fsync shared by the requests that arrived meanwhile.
	FsyncFile string
}

// ReferenceArgs returns the command-line arguments of `hubrelay bench-reference` for c,
// secret left out: the child reads it from the environment variable DefaultSecretEnv.
func ReferenceArgs(c ReferenceConfig) []string {
	args := []string{"-listen", c.Listen}
	if c.FsyncFile != "" {
		args = append(args, "-fsync-file", c.FsyncFile)
	}
	return args
}

// ParseReferenceArgs parses the arguments ReferenceArgs builds. getenv supplies the secret
// (from -secret-env, default DefaultSecretEnv) unless -secret is given.
func ParseReferenceArgs(args []string, getenv func(string) string, stderr io.Writer) (ReferenceConfig, error) {
	fs := flag.NewFlagSet("bench-reference", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c ReferenceConfig
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:0", "`address` to listen on")
	fs.StringVar(&c.Secret, "secret", "", "app `secret` (prefer -secret-env)")
	secretEnv := fs.String("secret-env", DefaultSecretEnv, "environment `variable` holding the app secret")
	fs.StringVar(&c.FsyncFile, "fsync-file", "", "append every accepted body to this `file`, group-committed fsync")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.Secret == "" {
		c.Secret = getenv(*secretEnv)
	}
	if c.Secret == "" {
		return c, fmt.Errorf("no app secret: set %s or pass -secret", *secretEnv)
	}
	return c, nil
}

// ServeReference runs the reference server until ctx is cancelled: the bare minimum a Meta
// webhook receiver must do. Every POST body is read whole, its X-Hub-Signature-256 checked
// (401 when wrong), its JSON parsed into Meta's envelope shape (400 when malformed), with
// FsyncFile appended to the file and fsync'd, and answered 200. GET /healthz answers 200.
func ServeReference(ctx context.Context, c ReferenceConfig) error {
	var log *groupLog
	if c.FsyncFile != "" {
		f, err := os.OpenFile(c.FsyncFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open fsync file: %w", err)
		}
		log = newGroupLog(f)
		defer log.close()
	}
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	key := []byte(c.Secret)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReferenceBody))
		if err != nil {
			http.Error(w, "bad body", http.StatusRequestEntityTooLarge)
			return
		}
		if !validSignature(body, r.Header.Get("X-Hub-Signature-256"), key) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var n notification
		if err := json.Unmarshal(body, &n); err != nil || n.Object == "" || n.Entry == nil {
			http.Error(w, "malformed notification", http.StatusBadRequest)
			return
		}
		if log != nil {
			if err := log.append(r.Context(), body); err != nil {
				http.Error(w, "cannot store", http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// notification is the shape of a Meta notification the reference parses into.
type notification struct {
	Object string `json:"object"`
	Entry  []struct {
		ID      string `json:"id"`
		Time    int64  `json:"time"`
		Changes []struct {
			Field string          `json:"field"`
			Value json.RawMessage `json:"value"`
		} `json:"changes"`
	} `json:"entry"`
}

// validSignature reports whether sig is "sha256=" and the hex HMAC-SHA256 of body under key.
func validSignature(body []byte, sig string, key []byte) bool {
	hexSig, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return false
	}
	want, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return hmac.Equal(m.Sum(nil), want)
}

// errLogClosed answers the records handed to a closed groupLog.
var errLogClosed = errors.New("log closed")

// groupLog appends records to a file; records handed in while an fsync runs share the next.
type groupLog struct {
	f    *os.File
	in   chan logWrite
	stop chan struct{} // closed by close
	done chan struct{} // closed when the committer has returned
}

// logWrite is one record waiting for its commit.
type logWrite struct {
	b    []byte
	errc chan error
}

func newGroupLog(f *os.File) *groupLog {
	g := &groupLog{f: f, in: make(chan logWrite, 1024), stop: make(chan struct{}), done: make(chan struct{})}
	go g.commit()
	return g
}

// append writes b and a newline and returns once they are fsync'd.
func (g *groupLog) append(ctx context.Context, b []byte) error {
	w := logWrite{b: b, errc: make(chan error, 1)}
	select {
	case g.in <- w:
	case <-g.stop:
		return errLogClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-w.errc:
		return err
	case <-g.done:
		return errLogClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commit takes every waiting record, writes them in one write, fsyncs, answers them all, and
// starts over until close.
func (g *groupLog) commit() {
	defer close(g.done)
	var buf []byte
	var group []logWrite
	for {
		select {
		case w := <-g.in:
			group = append(group[:0], w)
		case <-g.stop:
			return
		}
	more:
		for {
			select {
			case w := <-g.in:
				group = append(group, w)
			default:
				break more
			}
		}
		buf = buf[:0]
		for _, w := range group {
			buf = append(append(buf, w.b...), '\n')
		}
		_, err := g.f.Write(buf)
		if err == nil {
			err = g.f.Sync()
		}
		for _, w := range group {
			w.errc <- err
		}
	}
}

// close stops the committer and closes the file. Records handed in after it fail.
func (g *groupLog) close() error {
	close(g.stop)
	<-g.done
	return g.f.Close()
}
