package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/policystream"
)

const policyCacheFile = "policy.cache"

// servePolicy relays the authority's policy versions to local proxies on
// cfg.PolicySocket: it serves the cached version at once (so proxies get
// policy while the authority is down), follows the authority's stream over
// the Node API, caches every new version encrypted, and pushes it on.
func (a *Agent) servePolicy(ctx context.Context) (stop func(), err error) {
	relay := policystream.NewRelay()
	if v := a.loadPolicy(); v != nil {
		relay.Publish(v)
		a.setPolicy(v, nil)
		a.log.Info("serving cached policy version until the authority is reachable", "version", v.Version)
	}
	if err := os.MkdirAll(filepath.Dir(a.cfg.PolicySocket), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(a.cfg.PolicySocket); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(a.cfg.PolicySocket) // stale socket from an earlier run
	}
	ln, err := net.Listen("unix", a.cfg.PolicySocket)
	if err != nil {
		return nil, err
	}
	// Proxies run as their own users, so every local user may connect;
	// what guards the policy set and the principals' labels is the check
	// on every call (authorizePolicyCaller), not the socket's mode.
	if err := os.Chmod(a.cfg.PolicySocket, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	g := grpc.NewServer(grpc.Creds(peercred.Credentials()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := a.authorizePolicyCaller(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := a.authorizePolicyCaller(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}))
	wardv1.RegisterPolicyDistributionServer(g, relay)
	wardv1.RegisterTelemetryServer(g, telemetryServer{a: a})
	go g.Serve(ln)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.followPolicy(ctx, relay)
	}()
	a.log.Info("serving policy to proxies", "socket", a.cfg.PolicySocket)
	return func() { cancel(); g.Stop(); <-done }, nil
}

// authorizePolicyCaller lets a policy-socket caller in when its uid or
// primary gid (SO_PEERCRED) is in policy_socket_allowed_uids/gids, or when
// the workload attestor's selectors for it match at least one of this
// agent's registration entries (as the Workload API finds identities).
// Everyone else is refused with PermissionDenied: the policy set and every
// registered label are not for any local user.
func (a *Agent) authorizePolicyCaller(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.Internal, "policy socket: caller has no peer credentials")
	}
	ai, ok := p.AuthInfo.(peercred.AuthInfo)
	if !ok {
		return status.Error(codes.Internal, "policy socket: caller has no peer credentials")
	}
	c := ai.Caller
	if slices.Contains(a.cfg.PolicySocketAllowedUIDs, c.UID) || slices.Contains(a.cfg.PolicySocketAllowedGIDs, c.GID) {
		return nil
	}
	sel, err := a.att.Attest(ctx, c)
	if err == nil && len(a.Identities(attest.Normalize(sel))) > 0 {
		return nil
	}
	a.log.Warn("policy socket: caller refused", "pid", c.PID, "uid", c.UID, "gid", c.GID, "attest_error", err)
	return status.Errorf(codes.PermissionDenied,
		"policy socket: caller (pid %d, uid %d, gid %d) matches no registration entry of this agent and is not in policy_socket_allowed_uids/gids: "+
			"register an entry for the proxy's workload (e.g. selector unix:uid:%d) or add its uid to policy_socket_allowed_uids in the agent config",
		c.PID, c.UID, c.GID, c.UID)
}

// followPolicy waits for an agent SVID, then follows the authority's
// stream until ctx ends. The stream rides on the agent's current Node API
// connection (agentConn): a renewed agent SVID replaces that connection, the
// authority ends streams of superseded or tainted SVIDs, and the stream
// reconnects at once with the new identity.
func (a *Agent) followPolicy(ctx context.Context, relay *policystream.Relay) {
	for a.agentSVID.Load() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	conn := agentConn{a}
	src := policystream.NewSource(conn, a.log.With("component", "policy"))
	if v := relay.Latest(); v != nil {
		src.SetKnown(v.Version)
	}
	src.RunVersions(ctx, func(v *wardv1.PolicyVersion, set *policy.Set) {
		if relay.Publish(v) {
			a.setPolicy(v, set)
			a.log.Info("policy version received", "version", v.Version)
			if err := a.savePolicy(v); err != nil {
				a.log.Warn("caching the policy version failed", "err", err)
			}
		}
	})
}

// followPolicyOnly follows the authority's policy versions without
// serving them (policy_socket: none), for the deny-list JWTRevoked reads;
// stop ends it.
func (a *Agent) followPolicyOnly(ctx context.Context) (stop func()) {
	relay := policystream.NewRelay()
	if v := a.loadPolicy(); v != nil {
		relay.Publish(v)
		a.setPolicy(v, nil)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.followPolicy(ctx, relay)
	}()
	return func() { cancel(); <-done }
}

// setPolicy makes v (compiled: set, or compiled here when nil) the
// version whose deny-list JWTRevoked reads, unless a newer one is there.
func (a *Agent) setPolicy(v *wardv1.PolicyVersion, set *policy.Set) {
	if set == nil {
		var err error
		if set, err = policystream.Verify(v); err != nil {
			return
		}
	}
	for {
		cur := a.policySet.Load()
		if cur != nil && cur.Version() >= set.Version() {
			return
		}
		if a.policySet.CompareAndSwap(cur, set) {
			return
		}
	}
}

// JWTRevoked implements workloadapi.RevocationSource: whether the latest
// policy version's deny-list names jti, the jti of a JWT-SVID of trust
// domain td (`ward agent evict` puts those minted through the evicted
// agent there, until their exp; federated trust domains' reach this
// agent as their remote deny-lists). Before any policy version arrived
// nothing is known to be revoked.
func (a *Agent) JWTRevoked(td spiffeid.TrustDomain, jti string) bool {
	set := a.policySet.Load()
	return set != nil && set.CredentialRevoked(td.Name(), jti)
}

func (a *Agent) savePolicy(v *wardv1.PolicyVersion) error {
	b, err := proto.Marshal(v)
	if err != nil {
		return err
	}
	sealed, err := a.cache.seal(b)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(a.cache.dir, policyCacheFile), sealed, 0o600)
}

// loadPolicy returns the cached version if it is intact and compiles.
func (a *Agent) loadPolicy() *wardv1.PolicyVersion {
	b, err := os.ReadFile(filepath.Join(a.cache.dir, policyCacheFile))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			a.log.Warn("reading the policy cache", "err", err)
		}
		return nil
	}
	pt, err := a.cache.open(b)
	if err != nil {
		a.log.Warn("policy cache unusable; waiting for the authority", "err", err)
		return nil
	}
	var v wardv1.PolicyVersion
	if err := proto.Unmarshal(pt, &v); err != nil {
		return nil
	}
	if _, err := policystream.Verify(&v); err != nil {
		a.log.Warn("cached policy version rejected", "err", err)
		return nil
	}
	return &v
}

// agentConn is a gRPC client connection that is always the agent's current
// mTLS connection to the authority (installAgentSVID replaces it).
type agentConn struct{ a *Agent }

func (c agentConn) current() (*grpc.ClientConn, error) {
	c.a.connMu.Lock()
	defer c.a.connMu.Unlock()
	if c.a.conn == nil {
		return nil, status.Error(codes.Unavailable, "no connection to the authority yet")
	}
	return c.a.conn, nil
}

func (c agentConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	cc, err := c.current()
	if err != nil {
		return err
	}
	return cc.Invoke(ctx, method, args, reply, opts...)
}

func (c agentConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cc, err := c.current()
	if err != nil {
		return nil, err
	}
	return cc.NewStream(ctx, desc, method, opts...)
}
