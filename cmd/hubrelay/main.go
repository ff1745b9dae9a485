// Command hubrelay receives Meta webhooks and relays every change to the services that care.
//
//	hubrelay serve -config FILE          run the relay
//	hubrelay check -config FILE          validate config and rules
//	hubrelay route -config FILE PAYLOAD  dry run: which rules and sinks each change matches
//	hubrelay send -url URL -secret S PAYLOAD   sign a payload as Meta does and POST it
//	hubrelay deadletter list|show|replay -config FILE
//	hubrelay subscribe|subscriptions|unsubscribe -config FILE -app NAME ...   Meta's webhook subscriptions
//	hubrelay version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal starts the graceful shutdown, a second one gets the default
		// action and ends the process at once. The spool stays consistent: bbolt commits are
		// atomic, and deliveries in flight are made again after the restart.
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err))
}

// errUsage marks a command-line mistake (exit 2); errReported marks an error already printed
// (exit 1, nothing more to say).
var (
	errUsage    = errors.New("usage")
	errReported = errors.New("reported")
)

func exitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		return 1
	}
}

// env is what every subcommand gets from the process: arguments aside, all of its outside world.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

const usage = `hubrelay receives Meta webhooks and relays every change to your services.

Usage:
  hubrelay serve -config FILE [-log-format json|text] [-log-level LEVEL]
  hubrelay check -config FILE
  hubrelay route -config FILE [-json] [-app NAME] PAYLOAD.json
  hubrelay send -url URL [-secret S | -secret-env VAR] [-sha1] PAYLOAD.json
  hubrelay deadletter list|show|replay -config FILE [filters]
  hubrelay subscribe -config FILE [-app NAME] -object OBJ -fields F1,F2 -callback URL [-include-values] [-waba ID [-override-callback]]
  hubrelay subscriptions -config FILE [-app NAME] [-waba ID]
  hubrelay unsubscribe -config FILE [-app NAME] -object OBJ [-fields F1,F2] | -waba ID
  hubrelay bench [-scenario throughput|outage] [-json] [-svg FILE]
  hubrelay version

Run 'hubrelay COMMAND -h' for a command's flags.
`

// run is the whole program, testable: it returns when the command is done or ctx is cancelled.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = runServe(ctx, rest, e)
	case "check":
		err = runCheck(rest, e)
	case "route":
		err = runRoute(rest, e)
	case "send":
		err = runSend(ctx, rest, e)
	case "deadletter", "dead-letter":
		err = runDeadLetter(ctx, rest, e)
	case "subscribe":
		err = runSubscribe(ctx, rest, e)
	case "subscriptions":
		err = runSubscriptions(ctx, rest, e)
	case "unsubscribe":
		err = runUnsubscribe(ctx, rest, e)
	case "bench":
		err = runBench(ctx, rest, e)
	case "bench-reference":
		err = runBenchReference(ctx, rest, e)
	case "version", "-version", "--version":
		err = runVersion(e)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprintf(stderr, "hubrelay: unknown command %q\n\n%s", cmd, usage)
		return errUsage
	}
	if err != nil && !errors.Is(err, errUsage) && !errors.Is(err, errReported) {
		fmt.Fprintf(stderr, "hubrelay %s: %v\n", cmd, err)
	}
	return err
}
