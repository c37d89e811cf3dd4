package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/policy"
	"github.com/wardproject/ward/internal/policystream"
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
	// Proxies run as their own users: like the Workload API socket, any
	// local process may read the policy (it holds no secrets).
	if err := os.Chmod(a.cfg.PolicySocket, 0o666); err != nil {
		ln.Close()
		return nil, err
	}
	g := grpc.NewServer()
	wardv1.RegisterPolicyDistributionServer(g, relay)
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

// followPolicy waits for an agent SVID, then follows the authority's
// stream until ctx ends (the stream reconnects by itself, presenting the
// current agent SVID on every new connection).
func (a *Agent) followPolicy(ctx context.Context, relay *policystream.Relay) {
	for a.agentSVID.Load() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	conn, err := a.dial(true)
	if err != nil {
		a.log.Error("policy stream: cannot dial the authority", "err", err)
		return
	}
	defer conn.Close()
	src := policystream.NewSource(conn, a.log.With("component", "policy"))
	if v := relay.Latest(); v != nil {
		src.SetKnown(v.Version)
	}
	src.RunVersions(ctx, func(v *wardv1.PolicyVersion, _ *policy.Set) {
		if relay.Publish(v) {
			a.log.Info("policy version received", "version", v.Version)
			if err := a.savePolicy(v); err != nil {
				a.log.Warn("caching the policy version failed", "err", err)
			}
		}
	})
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
	tmp, err := writeTemp(a.cache.dir, ".policy-*", sealed)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(a.cache.dir, policyCacheFile)); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(a.cache.dir)
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
