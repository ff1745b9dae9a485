package postgres

import "testing"

// TestAcceptSlotsFor: the accepts never hold every connection of the main pool, so a
// heartbeat or a dead letter always finds one, and a large pool still runs acceptSlots.
func TestAcceptSlotsFor(t *testing.T) {
	for _, tc := range []struct{ conns, want int }{
		{1, 1}, {2, 1}, {3, 2}, {4, 3}, {5, 4}, {12, acceptSlots}, {100, acceptSlots},
	} {
		if got := acceptSlotsFor(tc.conns); got != tc.want {
			t.Errorf("acceptSlotsFor(%d) = %d, want %d", tc.conns, got, tc.want)
		}
	}
}
