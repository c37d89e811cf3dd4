package scan_test

import (
	"context"
	"testing"

	"github.com/wardproject/ward/internal/governance/scan"
)

// BenchmarkScanEndpoint: one endpoint's full scan (every version × suite,
// groups, the chain handshake) on loopback. legacy-all is openssl
// s_server offering TLS 1.0 to 1.3 with every suite Debian's OpenSSL
// still has (104 suites: the largest matrix); modern is TLS 1.3 only;
// ward-proxy is ward's inbound mTLS listener. bench/scan/run.sh compares
// the same scan with sslscan and testssl.sh.
func BenchmarkScanEndpoint(b *testing.B) {
	s := startServers(b)
	w := startWardProxy(b)
	for _, tc := range []struct{ name, addr, sni string }{
		{"legacy-all", s.legacyAll, "legacy.test"},
		{"modern", s.modern, "modern.test"},
		{"ward-proxy", w.addr, ""},
	} {
		b.Run(tc.name, func(b *testing.B) {
			sc := scan.New(scan.Options{ServerName: tc.sni, Roots: s.ca.pool})
			probes := 0
			for b.Loop() {
				r := sc.Scan(context.Background(), tc.addr)
				if r.Error != "" {
					b.Fatal(r.Error)
				}
				probes = r.Probes
			}
			b.ReportMetric(float64(probes), "probes/op")
		})
	}
}
