package gateway_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/dataplane/gateway"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// The gateway's telemetry: its bound listener, no TLS of its own, and a
// plaintext caller counted as plain and as a refusal.
func TestTelemetryReport(t *testing.T) {
	s := newSink(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g, _ := startGateway(t, ctx, &gateway.Config{Listen: "127.0.0.1:0", TrustDomain: tdName, AdminAddress: "127.0.0.1:0",
		Routes: []gateway.Route{{Service: "api", Forward: s.l.Addr().String()}}})
	c, err := net.Dial("tcp", g.Addr("listen").String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	c.Read(make([]byte, 1))
	c.Close()
	waitFor(t, "not_tls counted", func() bool { return metric(t, g, "ward_gateway_refused_total", `reason="not_tls"`) == 1 })
	r := g.TelemetryReport()
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	if r.Kind != telemetry.KindGateway || len(r.Listeners) != 1 || r.Listeners[0].Address != g.Addr("listen").String() || r.Listeners[0].Direction != "gateway" {
		t.Fatalf("listeners: %+v", r)
	}
	if r.Plain != 1 || r.Denials != 1 || r.MTLS != 0 || len(r.TLSVersions) != 0 {
		t.Fatalf("counters: %+v", r)
	}
}
