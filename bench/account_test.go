package bench

import (
	"reflect"
	"testing"
	"time"
)

func TestAccount(t *testing.T) {
	acked := []string{"a", "b", "c", "d"}
	tests := []struct {
		name  string
		acked []string
		got   map[string]int
		want  Tally
	}{
		{
			name:  "all delivered once",
			acked: acked,
			got:   map[string]int{"a": 1, "b": 1, "c": 1, "d": 1},
			want:  Tally{Expected: 4, Delivered: 4},
		},
		{
			name:  "sink drops one change",
			acked: acked,
			got:   map[string]int{"a": 1, "b": 1, "d": 1},
			want:  Tally{Expected: 4, Delivered: 3, Lost: 1, LostIDs: []string{"c"}},
		},
		{
			name:  "one change received twice",
			acked: acked,
			got:   map[string]int{"a": 1, "b": 2, "c": 1, "d": 1},
			want:  Tally{Expected: 4, Delivered: 4, Duplicated: 1},
		},
		{
			name:  "one change received three times",
			acked: acked,
			got:   map[string]int{"a": 3, "b": 1, "c": 1, "d": 1},
			want:  Tally{Expected: 4, Delivered: 4, Duplicated: 2},
		},
		{
			name:  "unacknowledged change delivered is not lost nor expected",
			acked: acked,
			got:   map[string]int{"a": 1, "b": 1, "c": 1, "d": 1, "x": 1},
			want:  Tally{Expected: 4, Delivered: 4, Unacked: 1},
		},
		{
			name:  "unacknowledged change never delivered is not lost",
			acked: []string{"a"},
			got:   map[string]int{"a": 1},
			want:  Tally{Expected: 1, Delivered: 1},
		},
		{
			name:  "repeated acknowledged id counts once",
			acked: []string{"a", "a", "b"},
			got:   map[string]int{"a": 1},
			want:  Tally{Expected: 2, Delivered: 1, Lost: 1, LostIDs: []string{"b"}},
		},
		{
			name:  "nothing delivered",
			acked: acked,
			got:   map[string]int{},
			want:  Tally{Expected: 4, Lost: 4, LostIDs: []string{"a", "b", "c", "d"}},
		},
		{
			name: "nothing sent",
			got:  nil,
			want: Tally{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Account(tt.acked, tt.got); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Account = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAccount_ListsAtMostTenLostIDs(t *testing.T) {
	var acked []string
	for i := range 25 {
		acked = append(acked, string(rune('A'+i)))
	}
	got := Account(acked, nil)
	if got.Lost != 25 || len(got.LostIDs) != maxListedIDs {
		t.Fatalf("Lost %d, %d ids listed; want 25 and %d", got.Lost, len(got.LostIDs), maxListedIDs)
	}
}

func TestSummarize(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := summarize(d)
	want := Latency{N: 100, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (Latency{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
	if got := summarize([]time.Duration{3 * time.Millisecond}); got.P50 != 3 || got.P99 != 3 || got.Max != 3 {
		t.Errorf("summarize of one = %+v, want all 3", got)
	}
}

// TestAccountHeld: a change the sink never got but the relay still holds (spooled or
// dead-lettered when the bench stopped waiting) is pending, not lost.
func TestAccountHeld(t *testing.T) {
	acked := []string{"a", "b", "c", "d"}
	got := map[string]int{"a": 1}
	tl := AccountHeld(acked, got, map[string]bool{"b": true, "c": true})
	if tl.Delivered != 1 || tl.Pending != 2 || tl.Lost != 1 || len(tl.LostIDs) != 1 || tl.LostIDs[0] != "d" {
		t.Errorf("tally %+v, want 1 delivered, 2 pending, 1 lost (d)", tl)
	}
}
