package server

import (
	"context"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// ownRevocations publishes this trust domain's deny-list on the revocation
// channel (federation.RevocationSource): its sequence is the policy
// version, so it only ever grows and survives restarts.
//
// While this authority is cut off from the etcd it shares with others
// (available, the Node API's nodeAvailable) it answers no federated
// subscriber: its policy versions no longer follow the other authorities',
// so a long poll held here would wait out MaxRevocationWait for a
// revocation stored elsewhere, poll after poll. The subscriber gets 503 at
// once instead (and at once when the cut happens during its wait) and
// tries again, through another authority behind the endpoint's name.
type ownRevocations struct {
	ps        *policystore.Store
	td        spiffeid.TrustDomain
	available func() (<-chan struct{}, error)
}

var errGot = errors.New("got a version")

func (o ownRevocations) Revocations(ctx context.Context, after uint64) (federation.Revocations, error) {
	got, err := whileConnected(ctx, o.available, func(ctx context.Context) (*policystore.Version, error) {
		var got *policystore.Version
		err := o.ps.Watch(ctx, after, func(v policystore.Version) error { got = &v; return errGot })
		return got, err
	})
	if got == nil && o.available != nil {
		if _, aerr := o.available(); aerr != nil { // cut off before or during the wait
			return federation.Revocations{}, aerr
		}
	}
	if got == nil {
		if ctx.Err() == nil && err != nil {
			return federation.Revocations{}, err
		}
		// The wait ended with nothing newer: answer with the current one.
		cur, err := o.ps.Current(context.WithoutCancel(ctx))
		if err != nil {
			return federation.Revocations{}, err
		}
		if cur == 0 {
			return federation.Revocations{TrustDomain: o.td.Name()}, nil
		}
		v, err := o.ps.Get(context.WithoutCancel(ctx), cur)
		if err != nil {
			return federation.Revocations{}, err
		}
		got = &v
	}
	return federation.Revocations{TrustDomain: o.td.Name(), Sequence: got.Number,
		DenyList: federation.OwnOnly(o.td, policy.DenyList{SPIFFEIDs: got.Bundle.DenyList.SPIFFEIDs,
			Serials: got.Bundle.DenyList.Serials, TaintedKeys: got.Bundle.DenyList.TaintedKeys})}, nil
}

// remoteDenyLists reports the revocations received from federated trust
// domains, for every new policy version.
func (s *Server) remoteDenyLists(st *unsealedState) func() map[string]policy.DenyList {
	return func() map[string]policy.DenyList {
		if m := st.fed.Load(); m != nil {
			return m.RemoteDenyLists()
		}
		return nil
	}
}

// onRevocations publishes a new policy version when revocations received
// from td changed the remote deny-lists.
func (s *Server) onRevocations(st *unsealedState) func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string) {
	return func(ctx context.Context, td spiffeid.TrustDomain, fields map[string]string) {
		ctx = reqctx.With(ctx, reqctx.Caller{Actor: "system:federation/" + td.Name(), RequestID: reqctx.NewRequestID()})
		if v, err := st.policy.RefreshRemote(ctx, "system:federation/"+td.Name(), fields); err != nil {
			s.log.Error("publishing revocations received from a federated trust domain", "trust_domain", td.Name(), "err", err)
		} else if v != 0 {
			s.log.Info("revocations of a federated trust domain published", "trust_domain", td.Name(), "policy_version", v)
		}
	}
}

// whileConnected runs wait (a federated long poll) only while this
// authority is connected to the etcd it shares with others (available,
// the Node API's nodeAvailable), and fails it once the cut happens during
// the wait: the catalog and tunnel lists it holds in memory stop following
// the other authorities' when it is cut off (an evicted agent's tunnel
// deleted elsewhere stayed in the list it served), so a federated peer
// gets 503 and tries another authority, as on the revocation channel.
func whileConnected[T any](ctx context.Context, available func() (<-chan struct{}, error), wait func(context.Context) (T, error)) (T, error) {
	var zero T
	if available == nil {
		return wait(ctx)
	}
	lost, err := available()
	if err != nil {
		return zero, err
	}
	if lost != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-lost:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	v, err := wait(ctx)
	if _, aerr := available(); aerr != nil {
		return zero, aerr
	}
	return v, err
}

// cutOffNetwork is the network channel's source, refused while cut off.
type cutOffNetwork struct {
	federation.NetworkSource
	available func() (<-chan struct{}, error)
}

func (c cutOffNetwork) WaitNetwork(ctx context.Context, after uint64) (federation.NetworkList, error) {
	return whileConnected(ctx, c.available, func(ctx context.Context) (federation.NetworkList, error) {
		return c.NetworkSource.WaitNetwork(ctx, after)
	})
}

// cutOffCatalog is the catalog channel's source, refused while cut off.
type cutOffCatalog struct {
	federation.CatalogSource
	available func() (<-chan struct{}, error)
}

func (c cutOffCatalog) WaitCatalog(ctx context.Context, after uint64) (federation.Catalog, error) {
	return whileConnected(ctx, c.available, func(ctx context.Context) (federation.Catalog, error) {
		return c.CatalogSource.WaitCatalog(ctx, after)
	})
}
