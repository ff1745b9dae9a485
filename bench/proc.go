package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is the kernel's USER_HZ, the unit of utime and stime in /proc/PID/stat; 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// child is a target running as a child process.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // cmd.Wait's result, once done is closed
}

// startChild starts exe with args and extra environment variables, its output going to logPath.
func startChild(name, exe string, args, env []string, logPath string) (*child, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	return c, nil
}

// waitReady polls url until it answers 200, the child exits, ctx ends or limit passes.
func (c *child) waitReady(ctx context.Context, url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited before it was ready (%v); its log: %s", c.name, c.err, c.tail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s; its log: %s", c.name, limit, c.tail())
		}
	}
}

// stop asks the child to exit (SIGTERM) and kills it if it has not within grace.
func (c *child) stop(grace time.Duration) error {
	select {
	case <-c.done:
		return c.exitErr()
	default:
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		c.cmd.Process.Kill()
	}
	select {
	case <-c.done:
		return c.exitErr()
	case <-time.After(grace):
		c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM: killed", c.name, grace)
	}
}

func (c *child) exitErr() error {
	if c.err != nil {
		return fmt.Errorf("%s exited: %w; its log: %s", c.name, c.err, c.tail())
	}
	return nil
}

// exited reports whether the child has exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// tail returns the last lines of the child's log.
func (c *child) tail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-8):], "\n")
}

// procUsage is what /proc says about a process at one moment.
type procUsage struct {
	cpu     time.Duration // user + system time so far
	rss     int64         // resident set, bytes
	peak    int64         // peak resident set (VmHWM), bytes
	rssAnon int64         // of rss, anonymous memory (heap, stacks), bytes
	rssFile int64         // of rss, file-backed pages (an mmap'd spool), bytes
}

// usage reads the child's CPU time and memory from /proc; errors.ErrUnsupported off Linux.
func (c *child) usage() (procUsage, error) {
	return readProc(c.cmd.Process.Pid)
}

func readProc(pid int) (procUsage, error) {
	var u procUsage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return u, fmt.Errorf("read /proc: %w", errors.ErrUnsupported)
		}
		return u, fmt.Errorf("read /proc: %w", err)
	}
	// The command name (field 2) may hold spaces: fields are counted after its ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, fmt.Errorf("read /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("read /proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	u.cpu = time.Duration(utime+stime) * time.Second / clockTicks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("read /proc: %w", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		name, val, ok := strings.Cut(line, ":")
		var dst *int64
		switch name {
		case "VmRSS":
			dst = &u.rss
		case "VmHWM":
			dst = &u.peak
		case "RssAnon":
			dst = &u.rssAnon
		case "RssFile":
			dst = &u.rssFile
		}
		if !ok || dst == nil {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return u, fmt.Errorf("read /proc/%d/status: %s: %w", pid, name, err)
		}
		*dst = kb << 10
	}
	return u, nil
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
