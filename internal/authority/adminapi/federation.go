package adminapi

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/errs"
)

// --- Federation ---

type federationService struct {
	wardv1.UnimplementedFederationServer
	a *api
}

func (f *federationService) manager() (*federation.Manager, error) {
	sv, err := f.a.identity()
	if err != nil {
		return nil, err
	}
	if sv.Federation == nil {
		return nil, status.Error(codes.FailedPrecondition, "federation is not running on this authority")
	}
	return sv.Federation, nil
}

func trustDomainArg(name string) (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return td, status.Errorf(codes.InvalidArgument, "trust domain %q: %v", name, err)
	}
	return td, nil
}

func (f *federationService) AddFederation(ctx context.Context, r *wardv1.AddFederationRequest) (*wardv1.FederationRelationship, error) {
	m, err := f.manager()
	if err != nil {
		return nil, err
	}
	td, err := trustDomainArg(r.TrustDomain)
	if err != nil {
		return nil, err
	}
	rel := federation.Relationship{TrustDomain: td, EndpointURL: r.EndpointUrl, Profile: federation.Profile(r.Profile), Source: federation.SourceAPI,
		Network: r.Network, AllowedGateways: r.AllowedGateways, NetworkEndpoints: r.NetworkEndpointCidrs}
	if r.EndpointSpiffeId != "" {
		if rel.EndpointID, err = spiffeid.FromString(r.EndpointSpiffeId); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "endpoint SPIFFE ID %q: %v", r.EndpointSpiffeId, err)
		}
	}
	var boot *spiffebundle.Bundle
	if len(r.BundleSpiffeJson) > 0 {
		if boot, err = federation.ParseBundle(td, r.BundleSpiffeJson); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "bootstrap bundle: %v", err)
		}
	}
	st, err := m.Add(ctx, rel, boot)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return federationProto(st)
}

func (f *federationService) ListFederations(ctx context.Context, _ *wardv1.ListFederationsRequest) (*wardv1.ListFederationsResponse, error) {
	m, err := f.manager()
	if err != nil {
		return nil, err
	}
	out := &wardv1.ListFederationsResponse{}
	for _, st := range m.List() {
		p, err := federationProto(st)
		if err != nil {
			return nil, err
		}
		out.Relationships = append(out.Relationships, p)
	}
	return out, nil
}

func (f *federationService) ShowFederation(ctx context.Context, r *wardv1.ShowFederationRequest) (*wardv1.FederationRelationship, error) {
	m, err := f.manager()
	if err != nil {
		return nil, err
	}
	td, err := trustDomainArg(r.TrustDomain)
	if err != nil {
		return nil, err
	}
	st, err := m.Show(td)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return federationProto(st)
}

func (f *federationService) RefreshFederation(ctx context.Context, r *wardv1.RefreshFederationRequest) (*wardv1.FederationRelationship, error) {
	m, err := f.manager()
	if err != nil {
		return nil, err
	}
	td, err := trustDomainArg(r.TrustDomain)
	if err != nil {
		return nil, err
	}
	st, err := m.Refresh(ctx, td)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	if st.Profile == federation.ProfileSPIFFE {
		// Witness its audit log too; only an alert fails the refresh
		// (other witness errors are shown with the relationship).
		if _, werr := m.WitnessNow(ctx, td); federation.IsAlert(werr) {
			return nil, status.Error(codes.DataLoss, werr.Error())
		}
		if st, err = m.Show(td); err != nil {
			return nil, errs.ToStatus(err)
		}
	}
	return federationProto(st)
}

func (f *federationService) RemoveFederation(ctx context.Context, r *wardv1.RemoveFederationRequest) (*wardv1.RemoveFederationResponse, error) {
	m, err := f.manager()
	if err != nil {
		return nil, err
	}
	td, err := trustDomainArg(r.TrustDomain)
	if err != nil {
		return nil, err
	}
	if err := m.Remove(ctx, td); err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.RemoveFederationResponse{}, nil
}

func federationProto(st federation.Status) (*wardv1.FederationRelationship, error) {
	p := &wardv1.FederationRelationship{TrustDomain: st.TrustDomain.Name(), EndpointUrl: st.EndpointURL, Profile: string(st.Profile),
		Source: st.Source, Sequence: st.Sequence, HasSequence: st.HasSequence, RefreshHintSeconds: int64(st.RefreshHint / time.Second),
		Added: apiconv.Timestamp(st.AddedAt), LastRefresh: apiconv.Timestamp(st.LastRefresh), LastAttempt: apiconv.Timestamp(st.LastAttempt),
		NextRefresh: apiconv.Timestamp(st.NextRefresh), LastError: st.LastError, Failures: int32(st.Failures), Stale: st.Stale,
		RevocationsSequence: st.Revocations.Sequence, HasRevocations: st.Revocations.Has, RevocationError: st.Revocations.LastError,
		RevokedEntries: int32(st.Revocations.Entries), Network: st.Network, NetworkSequence: st.NetworkChannel.Sequence,
		NetworkTunnels: int32(st.NetworkChannel.Tunnels), NetworkError: st.NetworkChannel.LastError,
		AllowedGateways: st.AllowedGateways, NetworkEndpointCidrs: st.NetworkEndpoints}
	if st.Revocations.Has {
		p.RevocationsReceived = apiconv.Timestamp(st.Revocations.ReceivedAt)
	}
	w := st.Witness
	p.WitnessKeyId, p.WitnessError = w.KeyID, w.LastError
	if w.Checkpoint != nil {
		p.WitnessedSize, p.WitnessedRoot, p.Witnessed = w.Checkpoint.Size, w.Checkpoint.RootHash, apiconv.Timestamp(w.WitnessedAt)
	}
	p.WitnessAlert, p.OwnLogAlert = witnessAlertProto(w.Alert), witnessAlertProto(w.OwnLogAlert)
	if cs := w.CosignedByPeer; cs != nil {
		p.CosignedByPeerSize, p.CosignedByPeer = cs.Checkpoint.Size, apiconv.Timestamp(cs.Time)
	}
	if !st.EndpointID.IsZero() {
		p.EndpointSpiffeId = st.EndpointID.String()
	}
	if st.Bundle != nil {
		doc, err := st.Bundle.Marshal()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encoding the bundle of %s: %v", st.TrustDomain, err)
		}
		p.BundleSpiffeJson = doc
	}
	return p, nil
}

func witnessAlertProto(a *federation.WitnessAlert) *wardv1.WitnessAlert {
	if a == nil {
		return nil
	}
	pa := &wardv1.WitnessAlert{Reason: a.Reason, Error: a.Error, At: apiconv.Timestamp(a.At), Count: int32(a.Count)}
	pa.HeadCheckpoint, _ = checkpoint.Encode(a.Head)
	if a.Remembered != nil {
		pa.WitnessedCheckpoint, _ = checkpoint.Encode(*a.Remembered)
	}
	return pa
}
