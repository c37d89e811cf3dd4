// Package apiconv holds the wire forms both of the authority's gRPC APIs
// (the admin API on the unix socket, the Node API over mTLS) speak: the
// protobuf forms of entries, agents, keys and policy versions, and the KMS
// service itself, which turns a request into a kms.Manager call and the
// result back. Errors become gRPC statuses through the one mapper,
// errs.ToStatus.
package apiconv

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
)

// Timestamp is t on the wire; the zero time is nil (absent).
func Timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// SelectorsProto converts selectors to their wire form.
func SelectorsProto(ss []attest.Selector) []*wardv1.Selector {
	out := make([]*wardv1.Selector, len(ss))
	for i, s := range ss {
		out[i] = &wardv1.Selector{Type: s.Type, Value: s.Value}
	}
	return out
}

// EntryProto converts a registry entry to its wire form.
func EntryProto(e registry.Entry) *wardv1.Entry {
	return &wardv1.Entry{
		Id: e.ID, SpiffeId: e.SPIFFEID, ParentId: e.ParentID, Selectors: SelectorsProto(e.Selectors),
		TtlSeconds: int64(e.TTL / time.Second), DnsNames: e.DNSNames, Hint: e.Hint, FederatesWith: e.FederatesWith,
		Labels: e.Labels, Revision: e.Revision, Created: Timestamp(e.Created), Updated: Timestamp(e.Updated),
	}
}

// EntryFromProto converts the writable fields of a wire entry; the
// registry validates them.
func EntryFromProto(p *wardv1.Entry) registry.Entry {
	if p == nil {
		return registry.Entry{}
	}
	e := registry.Entry{ID: p.Id, SPIFFEID: p.SpiffeId, ParentID: p.ParentId, DNSNames: append([]string(nil), p.DnsNames...),
		Hint: p.Hint, FederatesWith: append([]string(nil), p.FederatesWith...), TTL: time.Duration(p.TtlSeconds) * time.Second}
	if p.TtlSeconds < 0 || p.TtlSeconds > int64(1<<62/time.Second) {
		e.TTL = -1
	}
	for _, s := range p.Selectors {
		e.Selectors = append(e.Selectors, attest.Selector{Type: s.GetType(), Value: s.GetValue()})
	}
	if len(p.Labels) > 0 {
		e.Labels = make(map[string]string, len(p.Labels))
		for k, v := range p.Labels {
			e.Labels[k] = v
		}
	}
	return e
}

// AgentProto converts an agent record to its wire form.
func AgentProto(a registry.Agent) *wardv1.Agent {
	return &wardv1.Agent{SpiffeId: a.SPIFFEID, AttestationType: a.AttestationType, Selectors: SelectorsProto(a.Selectors),
		Serial: a.Serial, Expires: Timestamp(a.Expires), Attested: Timestamp(a.Attested), LastSeen: Timestamp(a.LastSeen), Evicted: a.Evicted,
		EvictPending: a.EvictPending}
}
