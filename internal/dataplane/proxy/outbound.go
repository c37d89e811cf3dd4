package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/policy"
)

func (p *Proxy) startOutbound(out *Outbound) error {
	id, err := spiffeid.FromString(out.ServerID)
	if err != nil {
		return fmt.Errorf("outbound %s: server_id: %w", out.Name, err)
	}
	l, err := listen(out.Listen)
	if err != nil {
		return fmt.Errorf("outbound %s: %w", out.Name, err)
	}
	p.addListener(out.Name, l)
	cfg := p.clientTLS(id, out.ServerName)
	go p.acceptLoop(l, out.Name, "outbound", func(c *connState, raw net.Conn) { p.serveOutbound(out, cfg, c, raw) })
	return nil
}

func (p *Proxy) serveOutbound(out *Outbound, cfg *tls.Config, c *connState, raw net.Conn) {
	defer p.logAccess(c)
	c.req.Principal = out.ServerID
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(p.cfg.DialTimeout+p.cfg.HandshakeTimeout))
	defer cancel()
	d := net.Dialer{Timeout: time.Duration(p.cfg.DialTimeout)}
	tcp, err := d.DialContext(ctx, "tcp", out.Remote)
	if err != nil {
		p.m.rejected.WithLabelValues(c.listener, "dial_remote").Inc()
		c.outcome, c.errText = "dial_failed", fmt.Sprintf("dial remote %s: %v", out.Remote, err)
		return
	}
	tc := tls.Client(tcp, cfg)
	c.add(tc)
	if err := tc.HandshakeContext(ctx); err != nil {
		reason := handshakeReason(err)
		p.m.handshakeFail.WithLabelValues(c.listener, reason).Inc()
		c.outcome, c.errText = "handshake_failed", fmt.Sprintf("%s: remote %s: %v", reason, out.Remote, err)
		return
	}
	cancel()
	cs := tc.ConnectionState()
	c.tlsVersion = tlsVersionName(cs.Version)
	c.req.CertSerial = policy.SerialHex(cs.PeerCertificates[0].SerialNumber)
	p.m.tlsVersion.WithLabelValues(c.listener, c.tlsVersion, cs.CurveID.String()).Inc()
	c.outcome = "closed"
	if err := pipe(c, raw, tc, time.Duration(p.cfg.IdleTimeout)); err != nil {
		c.errText = err.Error()
	}
}
