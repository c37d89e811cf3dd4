package proxy

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLimitDefaultsAndValidation(t *testing.T) {
	for _, tc := range []struct {
		max, wantSrc, wantShakes int
	}{
		{0, 1000, 64}, // defaults: max_connections 10000
		{300, 64, 64},
		{1000, 100, 64},
		{20, 20, 20},
		{1, 1, 1},
	} {
		c, err := ParseConfig([]byte(goodConfig + "\nmax_connections: " + itoa(tc.max)))
		if err != nil {
			t.Fatal(err)
		}
		if c.MaxConnectionsPerSource != tc.wantSrc || c.MaxHandshakesPerSource != tc.wantShakes {
			t.Errorf("max_connections %d: per source %d, handshakes %d; want %d, %d", tc.max, c.MaxConnectionsPerSource, c.MaxHandshakesPerSource, tc.wantSrc, tc.wantShakes)
		}
		if time.Duration(c.HandshakeTimeout) != 5*time.Second {
			t.Errorf("default handshake_timeout %s, want 5s", time.Duration(c.HandshakeTimeout))
		}
	}
	for _, tc := range []struct{ edit, want string }{
		{"\nmax_connections: 100\nmax_connections_per_source: 101", "max_connections_per_source 101 must be between 1 and max_connections (100)"},
		{"\nmax_connections_per_source: -1", "max_connections_per_source -1"},
		{"\nmax_connections_per_source: 10\nmax_handshakes_per_source: 11", "max_handshakes_per_source 11 must be between 1 and max_connections_per_source (10)"},
		{"\nmax_handshakes_per_source: -2", "max_handshakes_per_source -2"},
		{"\nhandshake_timeout: 5m", "handshake_timeout 5m0s is longer than 1m0s"},
	} {
		_, err := ParseConfig([]byte(goodConfig + tc.edit))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.edit, err, tc.want)
		}
	}
	c, err := ParseConfig([]byte(goodConfig + "\nmax_connections_per_source: 10000\nmax_handshakes_per_source: 500\nhandshake_timeout: 2s"))
	if err != nil || c.MaxConnectionsPerSource != 10000 || c.MaxHandshakesPerSource != 500 || time.Duration(c.HandshakeTimeout) != 2*time.Second {
		t.Fatalf("explicit limits: %+v %v", c, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
