package apply

import (
	"context"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/policy"
)

// State is what the authority holds of what documents describe.
type State struct {
	Keys            map[string]*KeySpec
	KeyLatest       map[string]uint32 // latest version per key, for checks
	Classifications []string
	Entries         []*StoredEntry
	// Policy is the current policy set's files; PolicyVersion 0 means
	// none has been applied yet.
	Policy        map[string][]byte
	PolicyVersion uint64
	// MaxBatch is the most entry changes one BatchEntries call takes.
	MaxBatch int
	// Federations are the relationships by trust domain; NoFederation
	// says why there are none to manage (federation not running).
	Federations  map[string]*StoredFederation
	NoFederation string
	// Posture is the current posture file (nil: none declared).
	Posture []byte
}

// StoredFederation is a relationship as the authority holds it.
type StoredFederation struct {
	FederationSpec
	// Source is "api" (ward federation add, ward apply) or "config"
	// (the server's configuration, which apply leaves alone).
	Source string
}

// StoredEntry is an entry as stored, with its ID and revision.
type StoredEntry struct {
	EntrySpec
	Revision int64
}

// Fetch reads the state from the authority: keys, classifications,
// entries and the current policy set. Identity or policy that is not
// running there reads as empty only when nothing needs it (the plan
// says so).
func Fetch(ctx context.Context, c *client.Client) (*State, error) {
	s := &State{Keys: map[string]*KeySpec{}, KeyLatest: map[string]uint32{}, Policy: map[string][]byte{}, Federations: map[string]*StoredFederation{}}
	kl, err := c.Keys.ListKeys(ctx, &wardv1.ListKeysRequest{})
	if err != nil {
		return nil, err
	}
	for _, k := range kl.Keys {
		s.Keys[k.Name] = &KeySpec{Name: k.Name, Classification: k.Classification, Purpose: k.Purpose, MinDecryptVersion: k.MinDecryptVersion}
		s.KeyLatest[k.Name] = k.LatestVersion
	}
	cl, err := c.Keys.ListClassifications(ctx, &wardv1.ListClassificationsRequest{})
	if err != nil {
		return nil, err
	}
	for _, x := range cl.Classifications {
		s.Classifications = append(s.Classifications, x.Name)
	}
	el, err := c.Entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	switch {
	case status.Code(err) == codes.FailedPrecondition:
		// Workload identity is not running: no entries; a document
		// with entries fails at apply with the authority's message.
	case err != nil:
		return nil, err
	default:
		for _, p := range el.Entries {
			s.Entries = append(s.Entries, storedEntry(p))
		}
		s.MaxBatch = int(el.MaxBatchEntries)
	}
	fl, err := c.Federation.ListFederations(ctx, &wardv1.ListFederationsRequest{})
	switch code := status.Code(err); {
	case code == codes.FailedPrecondition || code == codes.Unimplemented:
		s.NoFederation = status.Convert(err).Message()
	case err != nil:
		return nil, err
	default:
		for _, r := range fl.Relationships {
			s.Federations[r.TrustDomain] = &StoredFederation{Source: r.Source, FederationSpec: FederationSpec{
				TrustDomain: r.TrustDomain, EndpointURL: r.EndpointUrl, Profile: r.Profile, EndpointSPIFFEID: r.EndpointSpiffeId,
				AllowedGateways: r.AllowedGateways, Network: r.Network, NetworkEndpoints: r.NetworkEndpointCidrs}}
		}
	}
	pst, err := c.Posture.GetPosture(ctx, &wardv1.GetPostureRequest{})
	switch code := status.Code(err); {
	case code == codes.NotFound || code == codes.Unimplemented || code == codes.FailedPrecondition:
	case err != nil:
		return nil, err
	default:
		s.Posture = pst.File
	}
	pv, err := c.Policy.GetPolicy(ctx, &wardv1.GetPolicyRequest{})
	switch {
	case status.Code(err) == codes.NotFound:
	case err != nil:
		return nil, err
	default:
		b, err := policy.ParseBundle(pv.BundleJson)
		if err != nil {
			return nil, err
		}
		s.Policy, s.PolicyVersion = b.Files, pv.Version
	}
	return s, nil
}

func storedEntry(p *wardv1.Entry) *StoredEntry {
	e := &StoredEntry{Revision: p.Revision, EntrySpec: EntrySpec{ID: p.Id, SPIFFEID: p.SpiffeId, ParentID: p.ParentId,
		TTL: time.Duration(p.TtlSeconds) * time.Second, DNSNames: p.DnsNames, Hint: p.Hint, FederatesWith: p.FederatesWith}}
	for _, s := range p.Selectors {
		e.Selectors = append(e.Selectors, attest.Selector{Type: s.Type, Value: s.Value})
	}
	e.Selectors = attest.Normalize(e.Selectors)
	if len(p.Labels) > 0 {
		e.Labels = p.Labels
	}
	return e
}

func entryProto(e *EntrySpec, revision int64) *wardv1.Entry {
	p := &wardv1.Entry{Id: e.ID, SpiffeId: e.SPIFFEID, ParentId: e.ParentID, TtlSeconds: int64(e.TTL / time.Second),
		DnsNames: e.DNSNames, Hint: e.Hint, FederatesWith: e.FederatesWith, Labels: e.Labels, Revision: revision}
	for _, s := range e.Selectors {
		p.Selectors = append(p.Selectors, &wardv1.Selector{Type: s.Type, Value: s.Value})
	}
	return p
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
