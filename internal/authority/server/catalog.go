package server

import (
	"context"

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

// onCatalog publishes a new policy version when the catalog changed.
func (s *Server) onCatalog(st *unsealedState) func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string) {
	return func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string) {
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
