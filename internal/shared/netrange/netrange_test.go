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
	} {
		err := CheckOverlay(netip.MustParsePrefix(bad))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %q", bad, err, want)
		}
	}
}
