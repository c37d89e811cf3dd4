package policy

import (
	"strings"
	"testing"
)

const crossPolicy = `permit(principal in TrustDomain::"a.example", action == Action::"connect", resource == Service::"api")
  when { context.source_trust_domain == "a.example" };
permit(principal == Workload::"spiffe://b.example/local", action == Action::"connect", resource == Service::"api");`

func crossReq(id, serial string, keys ...string) Request {
	return Request{Principal: id, CertSerial: serial, ChainKeyIDs: keys, Action: ActionConnect,
		Resource: Resource{Type: TypeService, Name: "api"}}
}

func TestRemoteDenyListRefusesOnlyItsOwnTrustDomain(t *testing.T) {
	key := strings.Repeat("ab", 20)
	set, err := CompileBundle(Bundle{Version: 3, Files: map[string][]byte{"p.cedar": []byte(crossPolicy)},
		RemoteDenyLists: map[string]DenyList{"a.example": {SPIFFEIDs: []string{"spiffe://a.example/x"}, Serials: []string{"0A"}, TaintedKeys: []string{key}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req    Request
		allow  bool
		reason string
	}{
		{crossReq("spiffe://a.example/y", "1"), true, ""},
		{crossReq("spiffe://a.example/x", "1"), false, "deny-list of a.example: SPIFFE ID"},
		{crossReq("spiffe://a.example/y", "a"), false, "deny-list of a.example: certificate serial"},
		{crossReq("spiffe://a.example/y", "1", key), false, "deny-list of a.example: tainted CA key " + key},
		// A's serials and keys mean nothing for B's peers.
		{crossReq("spiffe://b.example/local", "a", key), true, ""},
	} {
		d := set.Decide(c.req)
		if d.Allowed != c.allow || c.reason != "" && (len(d.Reasons) != 1 || d.Reasons[0] != c.reason) || d.Version != 3 {
			t.Errorf("%+v: %+v", c.req, d)
		}
	}
	if got := set.TaintedKeyOf("a.example", []string{key}); got != key {
		t.Errorf("TaintedKeyOf(a.example) = %q", got)
	}
	if got := set.TaintedKeyOf("b.example", []string{key}); got != "" {
		t.Errorf("TaintedKeyOf(b.example) = %q: A's key list taints B's chains", got)
	}
	if rl := set.RemoteDenyLists(); len(rl) != 1 || rl["a.example"].Serials[0] != "a" {
		t.Errorf("RemoteDenyLists = %+v", rl)
	}
	// The bundle round-trips through JSON with its remote section.
	b, err := MarshalBundle(Bundle{Version: 1, Files: map[string][]byte{"p.cedar": []byte(crossPolicy)},
		RemoteDenyLists: map[string]DenyList{"a.example": {SPIFFEIDs: []string{"spiffe://a.example/x"}}}})
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseBundle(b)
	if err != nil || len(back.RemoteDenyLists["a.example"].SPIFFEIDs) != 1 {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}

func TestRemoteDenyListNamingAnotherTrustDomainIsRefused(t *testing.T) {
	files := map[string][]byte{"p.cedar": []byte(crossPolicy)}
	for name, rl := range map[string]map[string]DenyList{
		"other domain's ID": {"a.example": {SPIFFEIDs: []string{"spiffe://b.example/local"}}},
		"bad section name":  {"A.example/x": {}},
		"bad serial":        {"a.example": {Serials: []string{"zz"}}},
	} {
		if _, err := CompileBundle(Bundle{Files: files, RemoteDenyLists: rl}); err == nil {
			t.Errorf("%s: compiled", name)
		} else if name == "other domain's ID" && !strings.Contains(err.Error(), "another trust domain") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestSourceTrustDomainAndForeignPrincipals(t *testing.T) {
	set, err := Compile(map[string][]byte{"p.cedar": []byte(crossPolicy + `
permit(principal == Workload::"spiffe://c.example/batch", action == Action::"connect", resource == Service::"api");`)})
	if err != nil {
		t.Fatal(err)
	}
	r := crossReq("spiffe://a.example/web", "")
	if d := set.Decide(r); !d.Allowed {
		t.Fatalf("A's workload: %+v", d)
	}
	r.Context.SourceTrustDomain = "b.example" // a source that does not match the policy's condition
	if d := set.Decide(r); d.Allowed {
		t.Fatalf("source_trust_domain b.example allowed: %+v", d)
	}
	if d := set.Decide(crossReq("spiffe://c.example/batch", "")); !d.Allowed {
		t.Fatalf("foreign principal named exactly: %+v", d)
	}
	if d := set.Decide(crossReq("spiffe://c.example/other", "")); d.Allowed {
		t.Fatalf("other principal of c.example: %+v", d)
	}
}

// TestCredentialRevoked: a JWT-SVID's jti (or a serial) is revoked by this
// trust domain's own deny-list, or by the remote deny-list of the token's
// own trust domain only: a federated peer cannot revoke another trust
// domain's tokens.
func TestCredentialRevoked(t *testing.T) {
	own, peer := strings.Repeat("a1", 16), strings.Repeat("b2", 16)
	set, err := CompileBundle(Bundle{Version: 1, Files: map[string][]byte{"p.cedar": []byte(crossPolicy)},
		DenyList:        DenyList{Serials: []string{own}},
		RemoteDenyLists: map[string]DenyList{"peer.example": {Serials: []string{peer}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		td, id string
		want   bool
	}{
		{"example.org", own, true},
		{"example.org", strings.ToUpper(own), true},
		{"peer.example", own, true}, // this trust domain's own list names it
		{"peer.example", peer, true},
		{"example.org", peer, false}, // peer.example's list revokes only its own
		{"third.example", peer, false},
		{"example.org", strings.Repeat("c3", 16), false},
		{"example.org", "not hex", false},
		{"example.org", "", false},
	} {
		if got := set.CredentialRevoked(tc.td, tc.id); got != tc.want {
			t.Errorf("CredentialRevoked(%s, %s) = %v, want %v", tc.td, tc.id, got, tc.want)
		}
	}
}
