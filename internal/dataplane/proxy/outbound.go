package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/policy"
)

func (p *Proxy) startOutbound(out *Outbound) error {
	if out.Service != "" {
		ref, err := catalog.ParseRef(out.Service)
		if err != nil {
			return fmt.Errorf("outbound %s: %w", out.Name, err)
		}
		hold := time.Duration(out.FailoverHold)
		if hold == 0 {
			hold = DefaultFailoverHold
		}
		out.ref, out.down = ref, &downSet{at: map[string]time.Time{}, hold: hold}
		l, err := listen(out.Listen)
		if err != nil {
			return fmt.Errorf("outbound %s: %w", out.Name, err)
		}
		p.addListener(out.Name, l)
		go p.acceptLoop(l, out.Name, "outbound", false, func(c *connState, raw net.Conn) { p.serveOutbound(out, spiffeid.ID{}, "", c, raw) })
		return nil
	}
	id, err := spiffeid.FromString(out.ServerID)
	if err != nil {
		return fmt.Errorf("outbound %s: server_id: %w", out.Name, err)
	}
	sni, err := out.SNI()
	if err != nil {
		return fmt.Errorf("outbound %s: %w", out.Name, err)
	}
	l, err := listen(out.Listen)
	if err != nil {
		return fmt.Errorf("outbound %s: %w", out.Name, err)
	}
	p.addListener(out.Name, l)
	go p.acceptLoop(l, out.Name, "outbound", false, func(c *connState, raw net.Conn) { p.serveOutbound(out, id, sni, c, raw) })
	return nil
}

func (p *Proxy) serveOutbound(out *Outbound, id spiffeid.ID, sni string, c *connState, raw net.Conn) {
	defer p.logAccess(c)
	// keys: the CA key IDs of the server's verified chains (clientTLS
	// refuses a tainted one at the handshake; recheck closes the
	// connection when a later policy version taints one).
	var keys []string
	var tc *tls.Conn
	if out.Service != "" {
		// Bounded by the clusters tried, each by dial + handshake timeout.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(out.Failover)+1)*time.Duration(p.cfg.DialTimeout+p.cfg.HandshakeTimeout))
		conn, t, err := p.dialService(ctx, out, c, &keys)
		cancel()
		if err != nil {
			p.m.rejected.WithLabelValues(c.listener, "dial_remote").Inc()
			c.outcome, c.errText = "dial_failed", err.Error()
			return
		}
		tc = conn
		c.req.Principal = t.id.String()
	} else {
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
		tc = tls.Client(tcp, p.clientTLS(out.Name, id, sni, out.Remote, &keys))
		c.add(tc)
		if err := tc.HandshakeContext(ctx); err != nil {
			reason := handshakeReason(err)
			p.m.handshakeFail.WithLabelValues(c.listener, reason).Inc()
			c.outcome, c.errText = "handshake_failed", fmt.Sprintf("%s: remote %s: %v", reason, out.Remote, err)
			return
		}
		cancel()
	}
	cs := tc.ConnectionState()
	c.tlsVersion = tlsVersionName(cs.Version)
	c.req.CertSerial = policy.SerialHex(cs.PeerCertificates[0].SerialNumber)
	c.req.ChainKeyIDs = keys
	c.authorized.Store(true)
	// A policy version stored between the handshake's taint check and
	// authorized.Store had its re-check skip this connection: check the
	// current one again (re-checks after the Store see the connection).
	if d, tainted := p.serverKeyTainted(c); tainted {
		c.decision, c.decided = d, true
		c.outcome = "denied"
		return
	}
	p.m.tlsVersion.WithLabelValues(c.listener, c.tlsVersion, cs.CurveID.String()).Inc()
	if c.resumed = cs.DidResume; c.resumed {
		p.m.resumed.WithLabelValues(c.listener, "outbound").Inc()
	}
	c.outcome = "closed"
	vc := newVerdictConn(tc)
	if err := pipe(c, raw, vc, time.Duration(p.cfg.IdleTimeout)); err != nil {
		c.errText = err.Error()
	}
	if vc.refusal != "" {
		// The remote ward proxy said why (verdict.go).
		p.m.rejected.WithLabelValues(c.listener, "remote_refused").Inc()
		c.outcome, c.errText = "refused_by_remote", vc.refusal
	}
}
