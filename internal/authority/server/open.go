package server

import (
	"context"
	"fmt"
	"time"

	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/authority/store/etcdstore"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// OpenStore opens the configured storage backend.
func OpenStore(ctx context.Context, cfg *config.Server) (store.Store, error) {
	switch cfg.Storage.Backend {
	case "bbolt":
		st, err := boltstore.Open(cfg.Storage.Bbolt.Path, boltstore.WithJournal())
		if err != nil {
			return nil, fmt.Errorf("opening bbolt store %s: %w", cfg.Storage.Bbolt.Path, err)
		}
		return st, nil
	case "etcd":
		e := cfg.Storage.Etcd
		st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: e.Endpoints, Prefix: e.Prefix,
			CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile, DialTimeout: time.Duration(e.DialTimeout),
			RequestTimeout: time.Duration(e.RequestTimeout)})
		if err != nil {
			return nil, fmt.Errorf("opening etcd store %v: %w", e.Endpoints, err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("storage.backend %q is unknown: use bbolt or etcd", cfg.Storage.Backend)
}

// OpenSeal returns the configured seal.
func OpenSeal(cfg *config.Server) (seal.Seal, error) {
	switch cfg.Seal.Type {
	case "shamir":
		return seal.NewShamir(), nil
	case "keyfile":
		return seal.NewKeyFile(cfg.Seal.KeyFile), nil
	case "pkcs11":
		return openPKCS11Seal(cfg.Seal.PKCS11)
	}
	return nil, fmt.Errorf("seal.type %q is unknown: use shamir, keyfile or pkcs11", cfg.Seal.Type)
}

// DevInit initialises a fresh dev authority (auto seal) and unseals it.
// On an already initialised one it only makes sure it is unsealed.
func (s *Server) DevInit(ctx context.Context) error {
	if !s.auto {
		return fmt.Errorf("dev mode needs an auto seal (keyfile)")
	}
	// The caller in ctx (`ward server --dev` names the user who ran it)
	// is the actor of every event of the init; without one, system:dev.
	caller := reqctx.From(ctx)
	if caller.Actor == "" || caller.Actor == "unknown" {
		caller.Actor = "system:dev"
	}
	if caller.RequestID == "" {
		caller.RequestID = reqctx.NewRequestID()
	}
	st, err := s.seals.Status(ctx)
	if err != nil {
		return err
	}
	if !st.Initialized {
		if _, err := s.seals.Init(ctx, seal.InitOptions{}); err != nil {
			return err
		}
		s.recordSealed(s.event(caller, "operator.init", "ok", ""))
	}
	if !s.Sealed() {
		return nil
	}
	if _, err := s.seals.AutoUnseal(ctx); err != nil {
		return err
	}
	return s.afterUnseal(ctx, caller)
}
