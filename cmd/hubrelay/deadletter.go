package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
	"github.com/hubrelay/hubrelay/storage/embedded"
	"github.com/hubrelay/hubrelay/storage/postgres"
)

// runDeadLetter inspects and replays dead letters. list and show read only the dead-letter
// directory, so they work while serve runs. replay queues the letters for the running relay;
// when no relay holds the spool it opens the spool and replays them itself.
func runDeadLetter(ctx context.Context, args []string, e env) error {
	c, err := parseDeadLetter(args, e)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(c.cfgPath, e)
	if err != nil {
		return err
	}
	// In Postgres mode the letters live in the database; list, show and replay work there
	// while replicas run, and replay hands the change straight back to the shared queue.
	var dl letterStore
	var pgLetters *postgres.DeadLetters
	var dir *deadletter.Dir
	if cfg.Storage.Postgres != nil {
		pg, err := openPostgres(ctx, cfg, slog.New(slog.DiscardHandler), postgres.Open)
		if err != nil {
			return err
		}
		defer pg.Close()
		pgLetters = pg.DeadLetters()
		dl = pgLetters
	} else {
		if dir, err = deadletter.Open(cfg.DeadLetter.Dir); err != nil {
			return err
		}
		dl = dir
	}
	f := deadletter.Filter{IDs: c.ids, Sink: c.sink, Rule: c.rule}
	if c.since != "" {
		if f.Since, err = parseSince(c.since, time.Now()); err != nil {
			return err
		}
	}
	switch c.sub {
	case "list":
		return listLetters(e, dl, f, c.asJSON)
	case "show":
		l, err := dl.Get(c.ids[0])
		if err != nil {
			return err
		}
		out, err := json.MarshalIndent(l, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s\n", out)
		return nil
	case "replay":
		letters, err := dl.List(f)
		if err != nil && len(letters) == 0 {
			return err
		}
		var n int
		var mode string
		if pgLetters != nil {
			n, mode, err = replayPostgres(ctx, pgLetters, newRouter(cfg), letters)
		} else {
			n, mode, err = replay(ctx, dir, filepath.Join(cfg.Storage.Dir, spoolFile), newRouter(cfg), letters)
		}
		fmt.Fprintf(e.stdout, "%d dead letter(s) %s\n", n, mode)
		return err
	case "export":
		return exportLetters(e, dl, f, c.exportDir)
	}
	return nil
}

// deadLetterCommand is a parsed `hubrelay deadletter <sub>` command line.
type deadLetterCommand struct {
	sub, cfgPath string
	ids          []string // letter IDs named on the command line
	sink, rule   string   // filters; not for show
	since        string
	asJSON, all  bool   // list -json, replay -all
	exportDir    string // export -dir
}

// parseDeadLetter reads the subcommand, its flags and the letter IDs; help and usage errors
// are printed and returned as errHelp or errUsage.
func parseDeadLetter(args []string, e env) (*deadLetterCommand, error) {
	sub, err := subcommand("deadletter", args, e)
	if err != nil {
		return nil, err
	}
	fs := newFlags("deadletter "+sub, e)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	c := &deadLetterCommand{sub: sub}
	if sub != "show" {
		fs.StringVar(&c.sink, "sink", "", "only letters of this `sink`")
		fs.StringVar(&c.rule, "rule", "", "only letters of changes that matched this `rule`")
		fs.StringVar(&c.since, "since", "", "only letters dead since this `duration` ago (24h) or RFC 3339 time")
	}
	switch sub {
	case "list":
		fs.BoolVar(&c.asJSON, "json", false, "print the letters as JSON lines")
	case "replay":
		fs.BoolVar(&c.all, "all", false, "every letter (when no ID or filter is given)")
	case "export":
		fs.StringVar(&c.exportDir, "dir", "", "write the letters into this `directory` (created when missing)")
	}
	pos, err := parseArgs(fs, args[1:], e)
	if err != nil {
		return nil, err
	}
	c.cfgPath, c.ids = *cfgPath, pos
	if sub == "replay" && len(pos) == 0 && c.sink == "" && c.rule == "" && c.since == "" && !c.all {
		fmt.Fprintln(e.stderr, "hubrelay deadletter replay: name letters by ID, select them with -sink, -rule or -since, or pass -all")
		lookup("deadletter replay").shortUsage(e.stderr)
		return nil, errUsage
	}
	if sub == "export" && c.exportDir == "" {
		fmt.Fprintln(e.stderr, "hubrelay deadletter export: -dir is required")
		lookup("deadletter export").shortUsage(e.stderr)
		return nil, errUsage
	}
	return c, nil
}

// listLetters prints the letters f selects, as a table or as JSON lines.
func listLetters(e env, dl letterStore, f deadletter.Filter, asJSON bool) error {
	letters, err := dl.List(f)
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		for _, l := range letters {
			enc.Encode(l)
		}
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSINK\tDEAD AT\tATTEMPTS\tCHANGE\tREASON")
	for _, l := range letters {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", l.ID, l.Sink, l.DeadAt.Format(time.RFC3339), len(l.Attempts), l.ChangeID, l.Reason)
	}
	tw.Flush()
	return err
}

// exportLetters writes the letters f selects into the dead-letter directory dir.
func exportLetters(e env, dl letterStore, f deadletter.Filter, dir string) error {
	letters, lerr := dl.List(f)
	if lerr != nil && len(letters) == 0 {
		return lerr
	}
	out, err := deadletter.Open(dir)
	if err != nil {
		return err
	}
	for _, l := range letters {
		if err := out.Write(l); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	fmt.Fprintf(e.stdout, "%d dead letter(s) exported to %s\n", len(letters), out.Path())
	return lerr
}

// replay puts letters back on the delivery queue: straight into the spool when no relay holds
// it, else through the replay folder the running relay watches.
//
// Letters of changes a rule failed to evaluate for are routed again with router's rules (the
// config's current ones; see relay.ReplayItem).
func replay(ctx context.Context, dl *deadletter.Dir, spoolPath string, router *relay.Router, letters []*deadletter.Letter) (int, string, error) {
	sp, err := embedded.Open(spoolPath, spool.Options{OpenTimeout: 200 * time.Millisecond})
	if errors.Is(err, spool.ErrLocked) {
		ids := make([]string, len(letters))
		for i, l := range letters {
			ids[i] = l.ID
		}
		if err := dl.QueueReplay(ids...); err != nil {
			return 0, "queued", err
		}
		return len(ids), "queued for the running relay", nil
	}
	if err != nil {
		return 0, "replayed", err // it says "open spool PATH: ..."
	}
	defer sp.Close()
	n := 0
	for _, l := range letters {
		it, err := relay.ReplayItem(l, router)
		if err != nil {
			return n, "replayed", err
		}
		if _, err := sp.Accept(ctx, []relay.Item{it}, time.Now()); err != nil {
			return n, "replayed", fmt.Errorf("spool letter %s: %w", l.ID, err)
		}
		if err := dl.Remove(l.ID); err != nil {
			return n, "replayed", fmt.Errorf("remove letter %s: %w", l.ID, err)
		}
		n++
	}
	return n, "replayed into the spool (delivered when the relay next runs)", nil
}

// replayPostgres puts letters back on the shared queue, each in one transaction with the
// removal of its letter; any replica delivers them.
func replayPostgres(ctx context.Context, dl *postgres.DeadLetters, router *relay.Router, letters []*deadletter.Letter) (int, string, error) {
	n := 0
	for _, l := range letters {
		if err := dl.Replay(ctx, l, router); err != nil {
			return n, "replayed", err
		}
		n++
	}
	return n, "replayed into the database (delivered by the running replicas)", nil
}

// parseSince reads "24h" (ago) or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("-since %q: use a duration like 24h or an RFC 3339 time", s)
	}
	return t, nil
}
