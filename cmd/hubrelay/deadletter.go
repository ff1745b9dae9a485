package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
)

const deadLetterUsage = `usage:
  hubrelay deadletter list   -config FILE [-sink S] [-rule R] [-since DUR|TIME] [-json]
  hubrelay deadletter show   -config FILE ID
  hubrelay deadletter replay -config FILE [-sink S] [-rule R] [-since DUR|TIME] [-all] [ID ...]
`

// runDeadLetter inspects and replays dead letters. list and show read only the dead-letter
// directory, so they work while serve runs. replay queues the letters for the running relay;
// when no relay holds the spool it opens the spool and replays them itself.
func runDeadLetter(ctx context.Context, args []string, e env) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, deadLetterUsage)
		return errUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("deadletter "+sub, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	sink := fs.String("sink", "", "only letters of this `sink`")
	rule := fs.String("rule", "", "only letters of changes that matched this `rule`")
	since := fs.String("since", "", "only letters dead since this `duration` ago (24h) or RFC 3339 time")
	asJSON := fs.Bool("json", false, "list: print the letters as JSON lines")
	all := fs.Bool("all", false, "replay: every letter (when no ID or filter is given)")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		return err
	}
	dl, err := deadletter.Open(cfg.DeadLetter.Dir)
	if err != nil {
		return err
	}
	f := deadletter.Filter{Sink: *sink, Rule: *rule, IDs: fs.Args()}
	if *since != "" {
		if f.Since, err = parseSince(*since, time.Now()); err != nil {
			return err
		}
	}
	switch sub {
	case "list":
		letters, err := dl.List(f)
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			for _, l := range letters {
				enc.Encode(l)
			}
		} else {
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSINK\tDEAD AT\tATTEMPTS\tCHANGE\tREASON")
			for _, l := range letters {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", l.ID, l.Sink, l.DeadAt.Format(time.RFC3339), len(l.Attempts), l.ChangeID, l.Reason)
			}
			tw.Flush()
		}
		return err
	case "show":
		if fs.NArg() != 1 {
			fmt.Fprint(e.stderr, deadLetterUsage)
			return errUsage
		}
		l, err := dl.Get(fs.Arg(0))
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
		if fs.NArg() == 0 && f.Sink == "" && f.Rule == "" && f.Since.IsZero() && !*all {
			fmt.Fprintln(e.stderr, "replay: name letters by ID or filter, or pass -all")
			return errUsage
		}
		letters, err := dl.List(f)
		if err != nil && len(letters) == 0 {
			return err
		}
		n, mode, err := replay(ctx, dl, filepath.Join(cfg.Storage.Dir, spoolFile), letters)
		fmt.Fprintf(e.stdout, "%d dead letter(s) %s\n", n, mode)
		return err
	}
	fmt.Fprint(e.stderr, deadLetterUsage)
	return errUsage
}

// replay puts letters back on the delivery queue: straight into the spool when no relay holds
// it, else through the replay folder the running relay watches.
func replay(ctx context.Context, dl *deadletter.Dir, spoolPath string, letters []*deadletter.Letter) (int, string, error) {
	sp, err := spool.Open(spoolPath, spool.Options{OpenTimeout: 200 * time.Millisecond})
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
		return 0, "replayed", fmt.Errorf("open spool: %w", err)
	}
	defer sp.Close()
	n := 0
	for _, l := range letters {
		it, err := relay.ReplayItem(l)
		if err != nil {
			return n, "replayed", err
		}
		if _, err := sp.Accept(ctx, []spool.Item{it}, time.Now()); err != nil {
			return n, "replayed", fmt.Errorf("spool letter %s: %w", l.ID, err)
		}
		if err := dl.Remove(l.ID); err != nil {
			return n, "replayed", fmt.Errorf("remove letter %s: %w", l.ID, err)
		}
		n++
	}
	return n, "replayed into the spool (delivered when the relay next runs)", nil
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
