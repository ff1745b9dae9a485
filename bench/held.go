package bench

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/hubrelay/hubrelay/relay"
	"github.com/hubrelay/hubrelay/relay/deadletter"
	"github.com/hubrelay/hubrelay/relay/spool"
)

// reconcile runs after the relay of a phase has stopped. A change a sink had not received when
// the bench stopped waiting is lost only if the relay no longer holds it: one still pending in
// its spool, or dead-lettered, is late, and counts as Pending.
func reconcile(t *running, dir string, acked []string, p *Phase) {
	missing := false
	for _, s := range p.Sinks {
		missing = missing || s.Lost > 0
	}
	if !missing {
		return
	}
	held, err := heldChanges(filepath.Join(dir, "data"))
	if err != nil {
		p.Problems = append(p.Problems, fmt.Sprintf("read what the relay still holds: %v (undelivered changes counted as lost)", err))
		return
	}
	for i := range p.Sinks {
		s := &p.Sinks[i]
		for _, rc := range t.recvs {
			if rc.name == s.Name {
				s.Tally = AccountHeld(acked, rc.snapshot(false).counts, held[s.Name])
			}
		}
	}
}

// heldChanges lists, per sink, the change ids a stopped relay still holds: every delivery in
// its spool (scheduled ones included) and every dead letter.
func heldChanges(dataDir string) (map[string]map[string]bool, error) {
	held := map[string]map[string]bool{}
	add := func(sink, id string) {
		if held[sink] == nil {
			held[sink] = map[string]bool{}
		}
		held[sink][id] = true
	}
	sp, err := spool.Open(filepath.Join(dataDir, "spool.db"), spool.Options{OpenTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer sp.Close()
	for { // make every scheduled delivery readable (the bench's copy of the data, thrown away after)
		m, err := sp.Promote(time.Now().Add(100 * 365 * 24 * time.Hour))
		if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			break
		}
	}
	sinks, err := sp.Sinks()
	if err != nil {
		return nil, err
	}
	for _, sink := range sinks {
		var after uint64
		for {
			ds, err := sp.Ready(sink, after, 1000)
			if err != nil {
				return nil, err
			}
			if len(ds) == 0 {
				break
			}
			for _, d := range ds {
				var ev relay.Event
				if err := relay.UnmarshalBinary(d.Data, &ev); err == nil {
					add(sink, ev.ID)
				}
				after = d.Seq
			}
		}
	}
	dl, err := deadletter.Open(filepath.Join(dataDir, "dead-letter"))
	if err != nil {
		return nil, err
	}
	letters, err := dl.List(deadletter.Filter{})
	for _, l := range letters {
		add(l.Sink, l.ChangeID)
	}
	return held, err
}
