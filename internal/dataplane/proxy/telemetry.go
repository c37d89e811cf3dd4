package proxy

import (
	"context"
	"crypto/fips140"
	"strings"

	"google.golang.org/grpc"

	"github.com/wardproject/ward/internal/shared/telemetry"
)

// runTelemetry reports the proxy's telemetry to its node agent over conn
// (the policy socket) until ctx ends (docs/governance.md).
func (p *Proxy) runTelemetry(ctx context.Context, conn grpc.ClientConnInterface) {
	telemetry.Send(ctx, conn, telemetry.DefaultInterval, p.log, p.TelemetryReport)
}

// TelemetryReport is the proxy's summary for its agent: its listeners,
// the TLS versions and groups of completed handshakes, connections with
// mTLS (every completed handshake: both sides present an X509-SVID) and
// without (inbound peers that presented no client certificate), policy
// denials, its SVID's expiry and FIPS mode. Counters come from its
// Prometheus registry (totals since start).
func (p *Proxy) TelemetryReport() telemetry.Report {
	r := telemetry.Report{Kind: telemetry.KindProxy, FIPS: fips140.Enabled()}
	if p.srcReady.Load() {
		if s, err := p.src.GetX509SVID(); err == nil && len(s.Certificates) > 0 {
			r.Name = s.ID.String()
			r.SVIDs = []telemetry.SVID{{SPIFFEID: s.ID.String(), ExpiresAt: s.Certificates[0].NotAfter.UTC()}}
		}
	}
	minTLS := p.cfg.TLS.MinVersion
	if minTLS == "" {
		minTLS = "1.3"
	}
	for _, in := range p.cfg.Inbound {
		if len(r.Listeners) == telemetry.MaxListeners {
			break
		}
		r.Listeners = append(r.Listeners, telemetry.Listener{Name: in.Name, Address: p.listenAddr(in.Name, in.Listen), Direction: "inbound",
			Service: in.Service.Name, SPIFFEID: r.Name, MTLS: true, MinTLS: minTLS})
	}
	for _, out := range p.cfg.Outbound {
		if len(r.Listeners) == telemetry.MaxListeners {
			break
		}
		// The app's side is plaintext on loopback or a unix socket; the
		// remote side is mTLS at min_tls.
		r.Listeners = append(r.Listeners, telemetry.Listener{Name: out.Name, Address: p.listenAddr(out.Name, out.Listen), Direction: "outbound",
			SPIFFEID: r.Name, MinTLS: minTLS})
	}
	fams, err := p.m.reg.Gather()
	if err != nil {
		return r
	}
	r.TLSVersions = bounded(telemetry.Counters(fams, "ward_proxy_tls_handshakes_total", "version", nil))
	r.Groups = bounded(telemetry.Counters(fams, "ward_proxy_tls_handshakes_total", "group", nil))
	for _, n := range r.TLSVersions {
		r.MTLS += n
	}
	r.Plain = telemetry.Counters(fams, "ward_proxy_handshake_failures_total", "", map[string]string{"reason": "no_client_certificate"})[""]
	r.Denials = telemetry.Counters(fams, "ward_proxy_decisions_total", "", map[string]string{"result": "deny"})[""]
	return r
}

// listenAddr is the address a listener is bound to (its configured one
// until it is).
func (p *Proxy) listenAddr(name, configured string) string {
	p.mu.Lock()
	a, ok := p.addrs[name]
	p.mu.Unlock()
	if ok && a != nil {
		if a.Network() == "unix" {
			return "unix://" + a.String()
		}
		return a.String()
	}
	return configured
}

// bounded keeps at most telemetry.MaxCounters entries (the largest).
func bounded(m map[string]uint64) map[string]uint64 {
	for len(m) > telemetry.MaxCounters {
		min := ""
		for k, v := range m {
			if min == "" || v < m[min] || v == m[min] && strings.Compare(k, min) > 0 {
				min = k
			}
		}
		delete(m, min)
	}
	return m
}
