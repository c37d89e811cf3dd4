package netrange

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckOverlay(t *testing.T) {
	for _, ok := range []string{"10.250.0.0/16", "10.0.0.0/8", "100.64.0.0/10", "192.168.7.0/24", "172.16.0.0/12", "fd00:77::/48", "fd00::/16", "10.1.2.3/32"} {
		if err := CheckOverlay(netip.MustParsePrefix(ok)); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"0.0.0.0/1":           "wider than /8",
		"128.0.0.0/1":         "wider than /8",
		"8.0.0.0/7":           "wider than /8",
		"::/0":                "wider than /16",
		"fc00::/7":            "wider than /16",
		"127.0.0.0/16":        "loopback",
		"127.0.0.1/32":        "loopback",
		"126.0.0.0/7":         "wider than /8",
		"127.128.0.0/9":       "loopback",
		"169.254.169.0/24":    "link-local",
		"169.0.0.0/8":         "link-local",
		"224.0.0.0/8":         "multicast",
		"239.1.1.0/24":        "multicast",
		"255.255.255.255/32":  "broadcast",
		"0.0.0.0/8":           "this network",
		"::1/128":             "loopback",
		"::/16":               "unspecified",
		"::ffff:10.0.0.0/104": "IPv4-mapped",
		"fe80::/16":           "link-local",
		"ff02::/16":           "multicast",
		// IPv4 inside IPv6: the mapped range above, and the ranges that
		// carry IPv4 traffic (an overlay there swallows it).
		"::a00:0/104":            "IPv4-compatible",
		"::7f00:1/128":           "IPv4-compatible",
		"64:ff9b::/96":           "NAT64",
		"64:ff9b::a9fe:a9fe/128": "NAT64",
		"64:ff9b::/16":           "NAT64",
		"64:ff9b:1:2::/64":       "NAT64",
		"2001::/32":              "Teredo",
		"2001:0:a00::/48":        "Teredo",
		"2002:7f00:1::/48":       "6to4",
		"2002::/16":              "6to4",
	} {
		err := CheckOverlay(netip.MustParsePrefix(bad))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %q", bad, err, want)
		}
	}
}

// TestCheckPrivate: an overlay range must lie in private or shared space,
// or inside a public range the operator allowed; the error names the
// range and the setting.
func TestCheckPrivate(t *testing.T) {
	allow := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:77::/48")}
	for _, c := range []struct {
		prefix string
		ok     bool
	}{
		{"10.250.0.0/16", true},
		{"10.0.0.0/8", true},
		{"172.16.0.0/12", true},
		{"172.31.255.0/24", true},
		{"192.168.7.0/24", true},
		{"100.64.0.0/10", true},
		{"100.127.1.1/32", true},
		{"198.18.0.0/15", true},
		{"fd00:77::/48", true},
		{"fc00::/8", true},
		{"203.0.113.0/24", true},   // allowed
		{"203.0.113.128/25", true}, // inside an allowed range
		{"2001:db8:77:1::/64", true},
		{"8.8.8.0/24", false},
		{"1.1.1.1/32", false},
		{"172.32.0.0/16", false},    // just outside 172.16.0.0/12
		{"172.0.0.0/8", false},      // contains private space, mostly public
		{"100.128.0.0/16", false},   // just outside 100.64.0.0/10
		{"192.169.0.0/16", false},   //
		{"203.0.112.0/23", false},   // wider than the allowed /24
		{"2001:4860::/32", false},   // public IPv6
		{"2001:db8:78::/48", false}, // beside the allowed /48
		{"fe00::/7", false},         // covers fc00::/7 and more
	} {
		err := CheckPrivate(netip.MustParsePrefix(c.prefix), allow)
		if c.ok != (err == nil) {
			t.Errorf("%s: %v, want ok=%v", c.prefix, err, c.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), netip.MustParsePrefix(c.prefix).Masked().String()) || !strings.Contains(err.Error(), AllowPublicSetting)) {
			t.Errorf("%s: the error names neither the range nor %s: %v", c.prefix, AllowPublicSetting, err)
		}
	}
	if err := CheckPrivate(netip.MustParsePrefix("203.0.113.0/24"), nil); err == nil {
		t.Error("a public range passed without an opt-in")
	}
}
