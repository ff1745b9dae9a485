package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hubrelay/hubrelay/config"
)

// command is one subcommand of hubrelay. To add one: write its run function (build the flag
// set with newFlags, parse with parseArgs), then add an entry to commands. Its help (-h),
// the top-level usage, "did you mean" and the refusal of stray arguments come from the entry.
type command struct {
	// name is what the user types; a subcommand of a group is "group sub" (deadletter show).
	name    string
	aliases []string
	// synopsis is the flags and arguments after the name, as in the usage line.
	synopsis string
	// summary is one line: what the command does.
	summary string
	// args describes the positional arguments ("PAYLOAD.json  a Meta notification..."), one
	// per line; empty when the command takes none.
	args string
	// minArgs and maxArgs bound the positional arguments (maxArgs -1: any number).
	minArgs, maxArgs int
	// hidden keeps the command out of the usage (internal helpers).
	hidden bool
	// run runs the command with the arguments after its name.
	run func(ctx context.Context, args []string, e env) error
}

// commands is every subcommand, in the order the usage lists them.
var commands []*command

func init() {
	commands = []*command{
		{name: "serve", synopsis: "-config FILE [-log-format json|text] [-log-level LEVEL] [-watch INTERVAL]",
			summary: "run the relay", run: runServe},
		{name: "check", synopsis: "-config FILE",
			summary: "validate the config and rules: every problem as FILE:LINE:COL: path: what to fix, exit 1 if any",
			run:     func(_ context.Context, args []string, e env) error { return runCheck(args, e) }},
		{name: "route", synopsis: "-config FILE [-json] [-app NAME] PAYLOAD.json",
			summary: "dry run: decode a payload and print the rules and sinks each change matches; delivers nothing",
			args:    "PAYLOAD.json  a Meta notification, as Meta posts it (- for standard input)", minArgs: 1, maxArgs: 1,
			run: func(_ context.Context, args []string, e env) error { return runRoute(args, e) }},
		{name: "send", synopsis: "-url URL [-secret S | -secret-env VAR] [-sha1] [-unique] PAYLOAD.json",
			summary: "sign a payload's exact bytes as Meta does and POST it to a relay (to try a deployment)",
			args:    "PAYLOAD.json  a Meta notification to sign and post (- for standard input)", minArgs: 1, maxArgs: 1,
			run: runSend},
		{name: "deadletter", aliases: []string{"dead-letter"}, synopsis: "list|show|replay|export -config FILE [filters]",
			summary: "inspect dead letters and put them back on the delivery queue", run: runDeadLetter, maxArgs: -1},
		{name: "deadletter list", synopsis: "-config FILE [-sink S] [-rule R] [-since DUR|TIME] [-json]",
			summary: "list dead letters (reads only the dead-letter directory, or the database: works while serve runs)"},
		{name: "deadletter show", synopsis: "-config FILE ID",
			summary: "print one dead letter as JSON", args: "ID  a dead letter's id, as deadletter list prints it",
			minArgs: 1, maxArgs: 1},
		{name: "deadletter replay", synopsis: "-config FILE [-sink S] [-rule R] [-since DUR|TIME] [-all] [ID ...]",
			summary: "put dead letters back on the delivery queue (through the running relay, or into the spool when none runs)",
			args:    "ID  dead letters to replay (or select them with the filters, or -all)", maxArgs: -1},
		{name: "deadletter export", synopsis: "-config FILE -dir D [-sink S] [-rule R] [-since DUR|TIME] [ID ...]",
			summary: "write dead letters as the dead-letter directory's JSON files into D (from the database in Postgres mode)",
			args:    "ID  dead letters to export (default: every one the filters select)", maxArgs: -1},
		{name: "spool", synopsis: "verify|recover -config FILE [-json]",
			summary: "check every checksum of the embedded spool, or recover a damaged one (the relay stopped)",
			run:     func(_ context.Context, args []string, e env) error { return runSpool(args, e) }, maxArgs: -1},
		{name: "spool verify", synopsis: "-config FILE [-json]",
			summary: "report what of the spool fails its checksum, changing nothing; exit 1 if anything does"},
		{name: "spool recover", synopsis: "-config FILE [-json]",
			summary: "apply every journal frame that still checks out, rebuild a damaged spool.db from what checks out, and move the damaged files aside, deleting nothing damaged"},
		{name: "sinks", synopsis: "list|pause|resume -config FILE [NAME]",
			summary: "list the sinks with their backlog, or pause and resume deliveries to one (the relay running or not)", run: runSinks, maxArgs: -1},
		{name: "sinks list", synopsis: "-config FILE [-json]",
			summary: "list the sinks: paused or delivering, since when and by whom, and their backlog"},
		{name: "sinks pause", synopsis: "-config FILE NAME",
			summary: "stop delivering to a sink, keeping everything for it (it still accepts); it stays paused across restarts",
			args:    "NAME  the sink to pause, as sinks[].name in the config", minArgs: 1, maxArgs: 1},
		{name: "sinks resume", synopsis: "-config FILE NAME",
			summary: "deliver to a paused sink again: its backlog goes out in acceptance order",
			args:    "NAME  the sink to resume", minArgs: 1, maxArgs: 1},
		{name: "subscribe", synopsis: "-config FILE [-app NAME] -object OBJ -fields F1,F2 -callback URL [-include-values] [-waba ID [-override-callback]]",
			summary: "subscribe the app to an object's webhooks at Meta, after checking the callback answers", run: runSubscribe},
		{name: "subscriptions", synopsis: "-config FILE [-app NAME] [-waba ID] [-check]",
			summary: "list the app's webhook subscriptions at Meta and where they differ from the config", run: runSubscriptions},
		{name: "unsubscribe", synopsis: "-config FILE [-app NAME] -object OBJ [-fields F1,F2] | -waba ID",
			summary: "remove the app's subscription to an object (or some fields), or to a WhatsApp Business Account", run: runUnsubscribe},
		{name: "bench", synopsis: "[-scenario throughput|outage] [-json] [-svg FILE]",
			summary: "measure hubrelay against a bare net/http reference on loopback (see BENCHMARKS.md)", run: runBench},
		{name: "bench-reference", hidden: true, summary: "the bench's reference server (started by bench)", maxArgs: -1, run: runBenchReference},
		{name: "version", summary: "print the version and build info",
			run: func(_ context.Context, args []string, e env) error { return runVersion(args, e) }},
	}
}

// lookup returns the command named name (or one of its aliases), or nil.
func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name || slices.Contains(c.aliases, name) {
			return c
		}
	}
	return nil
}

// subcommands returns the commands of the group named group ("deadletter").
func subcommands(group string) []*command {
	var out []*command
	for _, c := range commands {
		if strings.HasPrefix(c.name, group+" ") {
			out = append(out, c)
		}
	}
	return out
}

// subcommand returns which command of the group named group ("deadletter") args[0] names. With
// none, with help asked for, or with a name none of the group's commands has, it writes what
// to do and returns errUsage or errHelp.
func subcommand(group string, args []string, e env) (string, error) {
	g := lookup(group)
	var names []string
	for _, c := range subcommands(group) {
		names = append(names, strings.TrimPrefix(c.name, group+" "))
	}
	if len(args) == 0 {
		fmt.Fprintln(e.stderr, "hubrelay "+group+": missing command: "+strings.Join(names, ", "))
		g.shortUsage(e.stderr)
		return "", errUsage
	}
	sub := args[0]
	switch sub {
	case "-h", "-help", "--help", "help":
		g.help(e.stdout, nil)
		return "", errHelp
	}
	if !slices.Contains(names, sub) {
		unknownCommand(e.stderr, "hubrelay "+group, sub, names)
		g.shortUsage(e.stderr)
		return "", errUsage
	}
	return sub, nil
}

// topUsage writes the program's usage: every visible top-level command with its summary.
func topUsage(w io.Writer) {
	fmt.Fprint(w, "hubrelay receives Meta webhooks and relays every change to your services.\n\nUsage:\n  hubrelay COMMAND [flags] [arguments]\n\nCommands:\n")
	for _, c := range commands {
		if c.hidden || strings.Contains(c.name, " ") {
			continue
		}
		fmt.Fprintf(w, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "\nRun 'hubrelay COMMAND -h' for a command's flags and arguments.\n")
}

// usageLine is "hubrelay NAME SYNOPSIS".
func (c *command) usageLine() string {
	return strings.TrimSpace("hubrelay " + c.name + " " + c.synopsis)
}

// help writes the command's full help: usage, summary, arguments, subcommands, flags.
func (c *command) help(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s.\n", c.usageLine(), upperFirst(c.summary))
	if subs := subcommands(c.name); len(subs) > 0 {
		fmt.Fprint(w, "\nCommands:\n")
		for _, s := range subs {
			fmt.Fprintf(w, "  %-8s %s\n", strings.TrimPrefix(s.name, c.name+" "), s.summary)
		}
		fmt.Fprintf(w, "\nRun 'hubrelay %s COMMAND -h' for a command's flags.\n", c.name)
	}
	if c.args != "" {
		fmt.Fprint(w, "\nArguments:\n")
		for l := range strings.SplitSeq(c.args, "\n") {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	if fs != nil && hasFlags(fs) {
		fmt.Fprint(w, "\nFlags:\n")
		out := fs.Output()
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(out)
	}
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// errHelp marks help that was asked for and printed (exit 0).
var errHelp = errors.New("help shown")

// newFlags returns the flag set of the command named name. Its errors, help and usage come
// from parseArgs.
func newFlags(name string, e env) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseArgs prints the errors, with hints
	fs.Usage = func() {}
	return fs
}

// parseArgs parses args with fs, the flag set of the command named fs.Name(). Flags may come
// before or after the positional arguments ("--" ends the flags). On -h it prints the
// command's help to standard output and returns errHelp. On a mistake (an unknown flag, a
// wrong number of arguments) it prints what is wrong with a hint and the usage line to
// standard error and returns errUsage. Otherwise it returns the positional arguments.
func parseArgs(fs *flag.FlagSet, args []string, e env) ([]string, error) {
	c := lookup(fs.Name())
	if c == nil { // not in commands (yet): no help text, any arguments
		c = &command{name: fs.Name(), maxArgs: -1}
	}
	var pos []string
	rest := args
	for len(rest) > 0 {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				c.help(e.stdout, fs)
				return nil, errHelp
			}
			fmt.Fprintf(e.stderr, "hubrelay %s: %v%s\n", c.name, err, flagHint(fs, err))
			c.shortUsage(e.stderr)
			return nil, errUsage
		}
		rest = fs.Args()
		if len(rest) == 0 {
			break
		}
		// fs.Parse stops at the first non-flag, or after "--": everything after "--" is
		// positional.
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		rest = rest[1:]
		args = rest
	}
	if len(pos) < c.minArgs || (c.maxArgs >= 0 && len(pos) > c.maxArgs) {
		c.argsMistake(e.stderr, fs, pos)
		return nil, errUsage
	}
	return pos, nil
}

// argsMistake explains a wrong number of positional arguments, with a hint where the
// mistake is a common one.
func (c *command) argsMistake(w io.Writer, fs *flag.FlagSet, pos []string) {
	switch {
	case len(pos) < c.minArgs:
		what := strings.Fields(c.args)
		name := "an argument"
		if len(what) > 0 {
			name = what[0]
		}
		fmt.Fprintf(w, "hubrelay %s: missing %s\n", c.name, name)
	default:
		extra := pos[c.maxArgs:]
		fmt.Fprintf(w, "hubrelay %s: unexpected argument %q", c.name, extra[0])
		if hint := argHint(fs, extra[0]); hint != "" {
			fmt.Fprintf(w, " (%s)", hint)
		} else if c.maxArgs == 0 {
			fmt.Fprint(w, " (it takes no arguments)")
		}
		fmt.Fprintln(w)
	}
	c.shortUsage(w)
}

// argHint guesses what a stray argument was meant to be: a config file given without
// -config, or a flag written without its dash.
func argHint(fs *flag.FlagSet, arg string) string {
	if (strings.HasSuffix(arg, ".yaml") || strings.HasSuffix(arg, ".yml")) && fs.Lookup("config") != nil {
		return "did you mean -config " + arg + "?"
	}
	name, _, _ := strings.Cut(arg, "=")
	if fs.Lookup(name) != nil {
		return "did you mean -" + arg + "?"
	}
	return ""
}

// flagHint returns " (did you mean -x?)" for an unknown flag near one of fs's flags.
func flagHint(fs *flag.FlagSet, err error) string {
	name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -")
	if !ok {
		return ""
	}
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if s := suggest(strings.TrimPrefix(name, "-"), names); s != "" {
		return " (did you mean -" + s + "?)"
	}
	return ""
}

// shortUsage writes the usage line and where to find more.
func (c *command) shortUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\nRun 'hubrelay %s -h' for help.\n", c.usageLine(), c.name)
}

// suggest returns the command name nearest to s when one is near enough to be a typo.
func suggest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		d := config.EditDistance(s, n)
		if strings.HasPrefix(n, s) && len(s) >= 3 {
			d = 1
		}
		if d < bestD || (d == bestD && best == "") {
			best, bestD = n, d
		}
	}
	if bestD > 2 || bestD > len(s)/2 {
		return ""
	}
	return best
}

// unknownCommand explains a command name that is none of names, with the nearest one.
func unknownCommand(w io.Writer, prefix, name string, names []string) {
	fmt.Fprintf(w, "%s: unknown command %q", prefix, name)
	if s := suggest(name, names); s != "" {
		fmt.Fprintf(w, " (did you mean %q?)", s)
	}
	fmt.Fprintln(w)
}

// visibleNames returns the names of the top-level commands shown in the usage.
func visibleNames() []string {
	var out []string
	for _, c := range commands {
		if !c.hidden && !strings.Contains(c.name, " ") {
			out = append(out, c.name)
		}
	}
	return out
}
