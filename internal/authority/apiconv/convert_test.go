package apiconv

import (
	"testing"

	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/registry"
)

func TestEntryProtoRoundTrip(t *testing.T) {
	p := &wardv1.Entry{Id: "0123456789abcdef0123456789abcdef", SpiffeId: "spiffe://x.org/a", ParentId: "spiffe://x.org/ward/agent/n",
		Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1"}}, TtlSeconds: 600, DnsNames: []string{"a.x.org"}, Hint: "h",
		FederatesWith: []string{"y.org"}, Labels: map[string]string{"app": "a"}}
	back := EntryProto(EntryFromProto(p))
	if !proto.Equal(p, back) {
		t.Fatalf("round trip:\n%v\n%v", p, back)
	}
	if e := EntryFromProto(&wardv1.Entry{TtlSeconds: -1}); e.TTL >= 0 {
		t.Fatal("negative TTL not kept negative (it must fail validation)")
	}
	if e := EntryFromProto(&wardv1.Entry{TtlSeconds: 1 << 62}); e.TTL >= 0 {
		t.Fatal("overflowing TTL wrapped instead of failing validation")
	}
}

// TestAgentProtoEvictPending: an eviction that has not revoked yet reaches
// the wire (`ward agent list` shows it).
func TestAgentProtoEvictPending(t *testing.T) {
	for _, a := range []registry.Agent{
		{SPIFFEID: "spiffe://x.org/ward/agent/n", Evicted: true, EvictPending: true},
		{SPIFFEID: "spiffe://x.org/ward/agent/n", Evicted: true},
		{SPIFFEID: "spiffe://x.org/ward/agent/n"},
	} {
		p := AgentProto(a)
		if p.EvictPending != a.EvictPending || p.Evicted != a.Evicted {
			t.Fatalf("%+v -> %v", a, p)
		}
	}
}
