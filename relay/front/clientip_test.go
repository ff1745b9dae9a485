package front

import (
	"net"
	"net/netip"
	"testing"
)

// TestParseCIDRs_AsIPNet: the netip prefixes ParseCIDRs returns hold exactly the addresses
// the net.IPNet it used to return did, IPv4-mapped and zoned cases included.
func TestParseCIDRs_AsIPNet(t *testing.T) {
	cidrs := []string{"10.0.0.0/8", "10.1.2.3/8", "192.0.2.1/32", "0.0.0.0/0", "fd00::/8", "::/0",
		"::1/128", "::ffff:10.0.0.0/104", "::ffff:0:0/96", "::ffff:0:0/80", "2001:db8::/32"}
	addrs := []string{"10.1.2.3", "10.255.0.1", "11.0.0.1", "192.0.2.1", "192.0.2.2", "fd00::1",
		"fe80::1%eth0", "::1", "2001:db8::7", "::ffff:10.1.2.3", "0.0.0.0", "::"}
	for _, c := range cidrs {
		_, n, err := net.ParseCIDR(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseCIDRs([]string{c})
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		for _, s := range addrs {
			a := netip.MustParseAddr(s).Unmap() // as peerAddr and parseHop hand them on
			want := n.Contains(net.IP(a.AsSlice()))
			if in := ipIn(a, got); in != want {
				t.Errorf("%s in %s: %v, net.IPNet says %v", s, c, in, want)
			}
		}
	}
}
