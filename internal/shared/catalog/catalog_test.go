package catalog

import (
	"fmt"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	ok := Service{Name: "payments", SPIFFEID: "spiffe://b.example/pay", Gateway: "gw.b.example:15443", Forward: "127.0.0.1:8443"}
	got, err := Check("b.example", []Service{ok, {Name: "api", SPIFFEID: "spiffe://b.example/api", Gateway: "10.0.0.1:1", Forward: "unix:///run/in.sock"}})
	if err != nil || got[0].Name != "api" {
		t.Fatalf("%v %+v", err, got)
	}
	many := make([]Service, MaxServices+1)
	for i := range many {
		many[i] = ok
		many[i].Name = fmt.Sprintf("s%d", i)
	}
	for name, tc := range map[string]struct {
		td   string
		svcs []Service
		want string
	}{
		"another trust domain's identity": {"b.example", []Service{{Name: "db", SPIFFEID: "spiffe://c.example/db", Gateway: "gw:1"}}, "an identity of trust domain c.example"},
		"no trust domain":                 {"", []Service{ok}, "not a trust domain"},
		"duplicate":                       {"b.example", []Service{ok, ok}, "listed twice"},
		"too many":                        {"b.example", many, "more than the limit"},
		"bad name":                        {"b.example", []Service{{Name: "Pay", SPIFFEID: "spiffe://b.example/p", Gateway: "gw:1"}}, "service name"},
		"bad gateway":                     {"b.example", []Service{{Name: "p", SPIFFEID: "spiffe://b.example/p", Gateway: "gw"}}, "gateway"},
		"port zero":                       {"b.example", []Service{{Name: "p", SPIFFEID: "spiffe://b.example/p", Gateway: "gw:0"}}, "1..65535"},
		"relative unix forward":           {"b.example", []Service{{Name: "p", SPIFFEID: "spiffe://b.example/p", Gateway: "gw:1", Forward: "unix://in.sock"}}, "absolute"},
	} {
		if _, err := Check(tc.td, tc.svcs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	if p := Public([]Service{ok}); p[0].Forward != "" || ok.Forward == "" {
		t.Fatalf("Public: %+v", p)
	}
}

func TestParseRef(t *testing.T) {
	r, err := ParseRef("payments@b.example")
	if err != nil || r.Name != "payments" || r.TrustDomain != "b.example" || r.String() != "payments@b.example" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, s := range []string{"payments", "@b.example", "payments@", "Pay@b.example", "p@B.example", "p@b.example@c"} {
		if _, err := ParseRef(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestGatewayAllow(t *testing.T) {
	a, err := ParseGatewayAllow([]string{"10.20.0.0/16", "gw.b.example:15443", "*.edge.b.example:15443", "lb.b.example:*", "[2001:db8::1]:443"})
	if err != nil {
		t.Fatal(err)
	}
	for gw, want := range map[string]bool{
		"10.20.3.4:15443":           true,
		"10.20.3.4:22":              true, // a prefix allows any port
		"10.21.0.1:15443":           false,
		"gw.b.example:15443":        true,
		"GW.B.example.:15443":       true,
		"gw.b.example:15444":        false,
		"x.edge.b.example:15443":    true,
		"a.x.edge.b.example:15443":  true,
		"edge.b.example:15443":      false,
		"evil-edge.b.example:15443": false,
		"lb.b.example:1":            true,
		"gw.c.example:15443":        false,
		"[2001:db8::1]:443":         true,
		"[2001:db8::2]:443":         false,
		"127.0.0.1:15443":           false,
		"[::ffff:10.20.0.1]:1":      true,
		"no-port":                   false,
	} {
		if got := a.Permits(gw); got != want {
			t.Errorf("Permits(%q) = %v, want %v", gw, got, want)
		}
	}
	for _, bad := range []string{"0.0.0.0/0", "::/0", "gw", "*:15443", "gw.*.example:1", "*.10.0.0.1:1", "gw:0", "gw:x", ":1"} {
		if _, err := ParseGatewayAllow([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if (GatewayAllow{}).Permits("gw.b.example:15443") || !(GatewayAllow{}).Empty() {
		t.Fatal("an empty allow list permits")
	}
}

// TestGatewayAllowEdgeForms runs the forms a peer can give its gateway to
// slip past allowed_gateways: a name that spells an allowed address (a
// trailing dot makes it a name to resolve), numeric forms some resolvers
// read as an address (octal, hex, one number), empty labels under a
// wildcard, brackets around a name, control bytes, a zone; and the forms
// that must still match (case, a trailing dot on a name, an IPv4-mapped
// IPv6 address of an allowed IPv4 one).
func TestGatewayAllowEdgeForms(t *testing.T) {
	a, err := ParseGatewayAllow([]string{"10.20.0.0/16", "192.0.2.7:15443", "*.gw.b.example:15443", "gw.b.example:*", "[2001:db8::1]:15443"})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{
		"192.0.2.7.:15443", "10.20.0.5.:15443", "0300.0.2.7:15443", "0xc0.0.2.7:15443", "3221226055:15443", "192.0.2.07:15443",
		".gw.b.example:15443", "x..gw.b.example:15443", "[x.gw.b.example]:15443", "[gw.b.example]:22", "-x.gw.b.example:15443",
		"evil.example\x00.gw.b.example:15443", "x\x1b[2J.gw.b.example:15443", "[2001:db8::1%eth0]:15443", "[192.0.2.7]:15443",
		"x.gw.b.example:015443", "gw.b.example.evil:22", "gw.b.example:0",
	} {
		if a.Permits(g) {
			t.Errorf("%q permitted", g)
		}
	}
	for _, g := range []string{"GW.B.Example:22", "gw.b.example.:22", "X.Gw.B.Example.:15443", "[::ffff:192.0.2.7]:15443", "[::ffff:10.20.3.4]:1", "[2001:DB8::1]:15443", "10.20.255.255:9"} {
		if !a.Permits(g) {
			t.Errorf("%q refused", g)
		}
	}
	for _, e := range []string{"*.0.2.7:15443", "gw..b.example:1", "-gw.b.example:1", "gw.b.example\x00:1", "[gw.b.example]:1"} {
		if _, err := ParseGatewayAllow([]string{e}); err == nil {
			t.Errorf("allowed_gateways %q accepted", e)
		}
	}
}
