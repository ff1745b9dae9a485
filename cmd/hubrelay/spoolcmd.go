package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/hubrelay/hubrelay/relay/spool"
)

// runSpool checks and repairs the embedded spool in storage.dir.
func runSpool(args []string, e env) error {
	sub, err := subcommand("spool", args, e)
	if err != nil {
		return err
	}
	fs := newFlags("spool "+sub, e)
	cfgPath := fs.String("config", "hubrelay.yaml", "config `file`")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if _, err := parseArgs(fs, args[1:], e); err != nil {
		return err
	}
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		return err
	}
	path := filepath.Join(cfg.Storage.Dir, spoolFile)
	opt := spool.Options{DedupWindow: cfg.Storage.DedupWindow,
		Logger: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	var r *spool.Report
	if sub == "verify" {
		r, err = spool.Verify(path, opt)
	} else {
		r, err = spool.Recover(path, opt)
	}
	if errors.Is(err, spool.ErrLocked) {
		return fmt.Errorf("%s: the spool is in use: stop the relay first", path)
	}
	if r != nil {
		printReport(e, r, sub, *asJSON)
	}
	if err != nil {
		// Printed without the command's name: the spool's errors begin with "open spool" or
		// "verify spool", and "hubrelay spool: open spool: ..." would say it twice.
		fmt.Fprintf(e.stderr, "hubrelay: %v\n", err)
		return errReported
	}
	if sub == "verify" && !r.OK() {
		fmt.Fprintf(e.stderr, "the spool is damaged: run hubrelay spool recover -config %s\n", *cfgPath)
		return errReported
	}
	return nil
}

// printReport writes a Verify or Recover report.
func printReport(e env, r *spool.Report, sub string, asJSON bool) {
	if asJSON {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintf(e.stdout, "%s\n", b)
		return
	}
	fmt.Fprintf(e.stdout, "spool %s\n", r.Path)
	fmt.Fprintf(e.stdout, "journal: %d segment(s), %d intact frame(s), %d not yet applied (%d item(s)); the file has applied up to frame %d\n",
		r.Segments, r.Frames, r.Unapplied, r.UnappliedItems, r.AppliedLSN)
	for _, d := range r.Torn {
		fmt.Fprintf(e.stdout, "torn:    %s\n", d)
	}
	for _, d := range r.Damage {
		fmt.Fprintf(e.stdout, "damaged: %s\n", d)
	}
	for _, l := range r.Lost {
		fmt.Fprintf(e.stdout, "lost:    delivery %s (its data in the spool file was damaged)\n", l)
	}
	switch {
	case sub == "recover" && r.SetAside != "":
		fmt.Fprintf(e.stdout, "recovered: every intact frame and item kept; damaged files moved to %s (see NOTE.txt there)\n", r.SetAside)
	case sub == "recover":
		fmt.Fprintln(e.stdout, "recovered: nothing was damaged")
	case r.OK():
		fmt.Fprintln(e.stdout, "ok")
	}
}
