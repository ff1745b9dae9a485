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
	"strings"
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

// run is the whole program, testable: it returns when the command is done or ctx is cancelled.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		topUsage(stderr)
		return errUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 { // hubrelay help COMMAND
			if c := lookup(strings.Join(rest, " ")); c != nil && !c.hidden {
				c.help(stdout, nil)
				fmt.Fprintf(stdout, "\nRun 'hubrelay %s -h' for its flags.\n", c.name)
				return nil
			}
		}
		topUsage(stdout)
		return nil
	case "-version", "--version":
		name = "version"
	}
	c := lookup(name)
	if c == nil || c.run == nil {
		unknownCommand(stderr, "hubrelay", name, visibleNames())
		fmt.Fprintln(stderr, "Run 'hubrelay -h' for the list of commands.")
		return errUsage
	}
	err := c.run(ctx, rest, e)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil && !errors.Is(err, errUsage) && !errors.Is(err, errReported) {
		fmt.Fprintf(stderr, "hubrelay %s: %v\n", c.name, err)
	}
	return err
}
