package server

import (
	"context"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// services reports the services catalog (local and received) for every
// new policy version.
func (s *Server) services(st *unsealedState) func() map[string][]catalog.Service {
	return func() map[string][]catalog.Service {
		if m := st.fed.Load(); m != nil {
			return m.Services()
		}
		return nil
	}
}

// remoteCatalogEvery is how often a federated peer's catalog changes may
// publish a policy version: a hostile peer that changes its catalog on
// every poll would otherwise store a permanent version (and push a
// recompile to every agent and proxy) each second. Changes in between are
// published together at the end of the interval.
const remoteCatalogEvery = 30 * time.Second

// catalogPacer lets a trust domain publish at most once per interval; of
// the changes that arrive in between, the latest is published once at the
// end of the interval.
type catalogPacer struct {
	every time.Duration
	now   func() time.Time
	after func(time.Duration, func())

	mu      sync.Mutex
	last    map[string]time.Time
	pending map[string]func()
}

func newCatalogPacer(every time.Duration) *catalogPacer {
	return &catalogPacer{every: every, now: time.Now, after: func(d time.Duration, f func()) { time.AfterFunc(d, f) },
		last: map[string]time.Time{}, pending: map[string]func(){}}
}

// do runs publish now, or (replacing any publish still waiting) at the end
// of td's interval.
func (p *catalogPacer) do(td string, publish func()) {
	p.mu.Lock()
	now := p.now()
	if last, ok := p.last[td]; !ok || now.Sub(last) >= p.every {
		p.last[td] = now
		p.mu.Unlock()
		publish()
		return
	}
	_, waiting := p.pending[td]
	p.pending[td] = publish
	wait := p.last[td].Add(p.every).Sub(now)
	p.mu.Unlock()
	if waiting {
		return
	}
	p.after(wait, func() {
		p.mu.Lock()
		f := p.pending[td]
		delete(p.pending, td)
		p.last[td] = p.now()
		p.mu.Unlock()
		f()
	})
}

// onCatalog publishes a new policy version when the catalog changed; a
// federated peer's changes at most once per remoteCatalogEvery.
func (s *Server) onCatalog(st *unsealedState) func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string) {
	pacer := newCatalogPacer(remoteCatalogEvery)
	return func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string) {
		if td.Name() != s.cfg.TrustDomain {
			ctx = context.WithoutCancel(ctx)
			pacer.do(td.Name(), func() { s.publishCatalog(ctx, st, td, fields) })
			return
		}
		s.publishCatalog(ctx, st, td, fields)
	}
}

// publishCatalog makes the current policy version carry the catalog.
func (s *Server) publishCatalog(ctx context.Context, st *unsealedState, td spiffeid.TrustDomain, fields map[string]string) {
	actor := "system:catalog"
	if td.Name() != s.cfg.TrustDomain {
		actor = "system:federation/" + td.Name()
	}
	ctx = reqctx.With(context.WithoutCancel(ctx), reqctx.Caller{Actor: actor, RequestID: reqctx.NewRequestID()})
	if v, err := st.policy.RefreshServices(ctx, actor, fields); err != nil {
		s.log.Error("publishing the services catalog", "trust_domain", td.Name(), "err", err)
	} else if v != 0 {
		s.log.Info("services catalog published", "trust_domain", td.Name(), "policy_version", v)
	}
}

// declareServices makes the catalog's config-declared services match
// services.export, then makes the current policy version carry the
// catalog as loaded (only if it differs).
func (s *Server) declareServices(ctx context.Context, st *unsealedState, m *federation.Manager) error {
	ctx = reqctx.With(ctx, reqctx.Caller{Actor: "system:config", RequestID: reqctx.NewRequestID()})
	m.SetServiceDefaults(s.cfg.Services.Gateway, s.cfg.Services.ForwardHost)
	want := map[string]bool{}
	for _, e := range s.cfg.Services.Export {
		want[e.Name] = true
		if err := m.ExportService(ctx, s.cfg.Services.Service(e), federation.SourceConfig); err != nil {
			return err
		}
	}
	local, _ := m.LocalServices()
	for _, l := range local {
		if l.Source == federation.SourceConfig && !want[l.Name] {
			if err := m.UnexportService(ctx, l.Name, true); err != nil {
				return err
			}
		}
	}
	s.onCatalog(st)(ctx, m.TrustDomain(), map[string]string{"reason": "unseal"})
	return nil
}
