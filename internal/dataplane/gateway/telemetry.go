package gateway

import (
	"crypto/fips140"

	"github.com/wardproject/ward/internal/shared/telemetry"
)

// TelemetryReport is the gateway's summary for its agent
// (docs/governance.md): its listener; connections forwarded (counted as
// mTLS: a gateway routes only to inbound proxies, which require the
// caller's X509-SVID; it never terminates TLS itself, so it reports no
// TLS version or group), those refused for not being TLS (plain), every
// refusal (denials), and FIPS mode. Counters are totals since start.
func (g *Gateway) TelemetryReport() telemetry.Report {
	r := telemetry.Report{Kind: telemetry.KindGateway, Name: g.cfg.Listen, FIPS: fips140.Enabled()}
	addr := g.cfg.Listen
	if a := g.Addr("listen"); a != nil {
		addr = a.String()
	}
	r.Listeners = []telemetry.Listener{{Name: "listen", Address: addr, Direction: "gateway"}}
	fams, err := g.m.reg.Gather()
	if err != nil {
		return r
	}
	r.MTLS = telemetry.Counters(fams, "ward_gateway_connections_total", "", nil)[""]
	refused := telemetry.Counters(fams, "ward_gateway_refused_total", "reason", nil)
	r.Plain = refused["not_tls"]
	for _, n := range refused {
		r.Denials += n
	}
	return r
}
