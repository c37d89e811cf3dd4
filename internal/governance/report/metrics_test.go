package report

import (
	"strings"
	"testing"
)

const proxyMetrics = `# HELP ward_proxy_tls_handshakes_total Completed TLS handshakes.
# TYPE ward_proxy_tls_handshakes_total counter
ward_proxy_tls_handshakes_total{group="X25519MLKEM768",listener="in",version="1.3"} 7
ward_proxy_tls_handshakes_total{group="X25519",listener="out",version="1.3"} 2
ward_proxy_tls_handshakes_total{group="P-256",listener="legacy",version="1.2"} 1
# TYPE ward_proxy_handshake_failures_total counter
ward_proxy_handshake_failures_total{listener="in",reason="bad_certificate"} 3
`

func TestProxyCoverage(t *testing.T) {
	c, err := ProxyCoverage("p1", strings.NewReader(proxyMetrics))
	if err != nil {
		t.Fatal(err)
	}
	if c.MTLS != 10 || c.TLS13 != 9 || c.PQ != 7 || c.Failed != 3 {
		t.Fatalf("coverage = %+v", c)
	}
	if _, err := ProxyCoverage("p2", strings.NewReader("go_goroutines 3\n")); err == nil {
		t.Fatal("metrics without the proxy's counters were accepted")
	}
	if _, err := ProxyCoverage("p3", strings.NewReader("{{{")); err == nil {
		t.Fatal("garbage was accepted")
	}
}

func FuzzProxyCoverage(f *testing.F) {
	f.Add(proxyMetrics)
	f.Add("ward_proxy_tls_handshakes_total -1\n")
	f.Add("ward_proxy_tls_handshakes_total NaN\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ProxyCoverage("fuzz", strings.NewReader(s))
		if err == nil && (c.TLS13 > c.MTLS || c.PQ > c.MTLS) {
			t.Fatalf("counted parts above the whole: %+v", c)
		}
	})
}
