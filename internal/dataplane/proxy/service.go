package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// DefaultFailoverHold is how long a cluster that failed is skipped.
const DefaultFailoverHold = 2 * time.Second

// checkService validates an outbound listener that names a service.
func (c *Config) checkService(out Outbound) error {
	if out.Remote != "" || out.ServerID != "" || out.ServerName != "" || out.GatewayService != "" {
		return fmt.Errorf("service %q excludes remote, server_id, server_name and gateway_service: the catalog gives the gateway, the SNI and the SPIFFE ID", out.Service)
	}
	if c.PolicySocket == "" {
		return fmt.Errorf("service %q needs policy_socket: the services catalog comes with the policy stream of the node agent", out.Service)
	}
	ref, err := catalog.ParseRef(out.Service)
	if err != nil {
		return err
	}
	seen := map[string]bool{ref.TrustDomain: true}
	for _, td := range out.Failover {
		if _, err := catalog.ParseRef(ref.Name + "@" + td); err != nil {
			return fmt.Errorf("failover %q: not a trust domain name", td)
		}
		if seen[td] {
			return fmt.Errorf("failover: %s is listed twice (service included)", td)
		}
		seen[td] = true
	}
	if out.FailoverHold < 0 {
		return fmt.Errorf("failover_hold must be positive")
	}
	return nil
}

// downSet remembers when each cluster of a service last failed.
type downSet struct {
	mu   sync.Mutex
	at   map[string]time.Time
	hold time.Duration
}

func (d *downSet) isDown(td string, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.at[td]
	return ok && now.Sub(t) < d.hold
}

func (d *downSet) mark(td string, failed bool, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if failed {
		d.at[td] = now
	} else {
		delete(d.at, td)
	}
}

// target is one cluster of a service, as the catalog names it.
type target struct {
	cluster string // trust domain
	gateway string
	sni     string
	id      spiffeid.ID
}

// serviceTargets resolves out's service in the current policy's catalog,
// in order of preference.
func (p *Proxy) serviceTargets(out *Outbound) ([]target, error) {
	set := p.engine.Current()
	if set == nil {
		return nil, fmt.Errorf("service %s: no policy (and so no services catalog) received yet", out.Service)
	}
	var ts []target
	var missing []string
	for _, td := range append([]string{out.ref.TrustDomain}, out.Failover...) {
		s, ok := set.Service(catalog.Ref{Name: out.ref.Name, TrustDomain: td})
		if !ok {
			missing = append(missing, td)
			continue
		}
		// The catalog was checked as the policy compiled (a section names
		// only identities of its own trust domain); checked again here.
		id, err := spiffeid.FromString(s.SPIFFEID)
		if err != nil || id.TrustDomain().Name() != td {
			missing = append(missing, td)
			continue
		}
		sni, err := s.SNI(td)
		if err != nil {
			missing = append(missing, td)
			continue
		}
		ts = append(ts, target{cluster: td, gateway: s.Gateway, sni: sni, id: id})
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("service %s: exported by none of %s in the services catalog of policy version %d (ward service list)",
			out.ref.Name, strings.Join(append([]string{out.ref.TrustDomain}, out.Failover...), ", "), set.Version())
	}
	return ts, nil
}

// dialService reaches out's service: the clusters in order of preference,
// skipping those down (unless all are), each through its gateway with the
// SNI and the SPIFFE ID the catalog names. It only ever returns a
// connection whose handshake verified the SPIFFE ID of the cluster
// reached; c.service and c.failovers say which.
func (p *Proxy) dialService(ctx context.Context, out *Outbound, c *connState, keys *[]string) (*tls.Conn, target, error) {
	ts, err := p.serviceTargets(out)
	if err != nil {
		return nil, target{}, err
	}
	now := time.Now()
	order := slices.Clone(ts)
	var up, down []target
	for _, t := range order {
		if out.down.isDown(t.cluster, now) {
			down = append(down, t)
			p.m.serviceDials.WithLabelValues(c.listener, t.cluster, "skipped_down").Inc()
		} else {
			up = append(up, t)
		}
	}
	order = append(up, down...)
	var errsSeen []string
	d := net.Dialer{Timeout: time.Duration(p.cfg.DialTimeout)}
	for i, t := range order {
		if ctx.Err() != nil {
			break
		}
		// Each attempt gets its own bound, so one black-holed cluster does
		// not use up the time of the next.
		actx, cancel := context.WithTimeout(ctx, time.Duration(p.cfg.DialTimeout+p.cfg.HandshakeTimeout))
		tcp, err := d.DialContext(actx, "tcp", t.gateway)
		if err != nil {
			cancel()
			out.down.mark(t.cluster, true, time.Now())
			p.m.serviceDials.WithLabelValues(c.listener, t.cluster, "dial_failed").Inc()
			errsSeen = append(errsSeen, fmt.Sprintf("%s: dial gateway %s: %v", t.cluster, t.gateway, err))
			continue
		}
		var k []string
		tc := tls.Client(tcp, p.clientTLS(out.Name, t.id, t.sni, t.gateway, &k))
		c.add(tc)
		err = tc.HandshakeContext(actx)
		cancel()
		if err != nil {
			_ = tc.Close()
			out.down.mark(t.cluster, true, time.Now())
			p.m.serviceDials.WithLabelValues(c.listener, t.cluster, "handshake_failed").Inc()
			p.m.handshakeFail.WithLabelValues(c.listener, handshakeReason(err)).Inc()
			errsSeen = append(errsSeen, fmt.Sprintf("%s: gateway %s (SNI %s, requiring %s): %v", t.cluster, t.gateway, t.sni, t.id, err))
			continue
		}
		out.down.mark(t.cluster, false, time.Now())
		p.m.serviceDials.WithLabelValues(c.listener, t.cluster, "ok").Inc()
		c.service, c.failovers = out.ref.Name+"@"+t.cluster, i
		*keys = k
		return tc, t, nil
	}
	return nil, target{}, fmt.Errorf("service %s: no cluster reachable: %s", out.ref.Name, strings.Join(errsSeen, "; "))
}
