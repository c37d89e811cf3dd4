package drift

import (
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/telemetry"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

var now = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func yes() *bool { b := true; return &b }

// rules is the posture the tests declare: TLS 1.3 with the hybrid group,
// 1h SVIDs, confidential keys rotated every 30 days keeping 3 versions.
func rules() posture.Rules {
	return posture.Rules{
		FIPSRequired: yes(),
		TLS:          posture.TLS{MinVersion: "1.3", Groups: []string{"X25519MLKEM768"}},
		MTLSRequired: []string{"payments"},
		MaxSVIDTTL:   yamlconf.Duration(time.Hour),
		Rotation:     map[string]posture.Rotation{"confidential": {Period: yamlconf.Duration(30 * 24 * time.Hour), KeptVersions: 3}},
		Mesh:         posture.Mesh{Namespaces: []string{"shop"}, Services: []string{"payments"}},
	}
}

func proxyReport(mod func(*telemetry.Report)) telemetry.NodeReport {
	p := telemetry.Report{Kind: telemetry.KindProxy, Name: "spiffe://td/ns/shop/payments", FIPS: true,
		Listeners:   []telemetry.Listener{{Name: "in", Address: "10.0.0.1:8443", Direction: "inbound", Service: "payments", SPIFFEID: "spiffe://td/ns/shop/payments", MTLS: true, MinTLS: "1.3"}},
		TLSVersions: map[string]uint64{"1.3": 10}, Groups: map[string]uint64{"X25519MLKEM768": 10}, MTLS: 10,
		SVIDs: []telemetry.SVID{{SPIFFEID: "spiffe://td/ns/shop/payments", ExpiresAt: now.Add(30 * time.Minute)}}}
	if mod != nil {
		mod(&p)
	}
	return telemetry.NodeReport{Node: "spiffe://td/ward/agent/n1", Received: now.Add(-time.Second),
		Agent: telemetry.Report{Kind: telemetry.KindAgent, FIPS: true}, Processes: []telemetry.Report{p}}
}

// clean is a state with nothing to find.
func clean() posture.State {
	return posture.State{TrustDomain: "td", Now: now, AuthorityFIPS: true, PolicyVersion: 3,
		Keys:     []posture.Key{{Name: "k", Classification: "confidential", LastRotated: now.Add(-24 * time.Hour), Versions: 2}},
		Entries:  []posture.Entry{{ID: "e1", SPIFFEID: "spiffe://td/ns/shop/payments", TTL: time.Hour, EffectiveTTL: time.Hour}},
		Services: []posture.Service{{Name: "payments", PolicyCovered: true}},
		Bundles:  []posture.Bundle{{TrustDomain: "b.example", LastRefresh: now.Add(-time.Hour)}},
		Nodes:    []telemetry.NodeReport{proxyReport(nil)},
	}
}

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name   string
		rules  func(*posture.Rules)
		state  func(*posture.State)
		rule   string // "" = no finding
		object string
		fix    string // substring of the fix
		ev     string // substring of the evidence
	}{
		{name: "clean"},
		{name: "entry ttl above the limit", state: func(s *posture.State) {
			s.Entries = append(s.Entries, posture.Entry{ID: "e2", SPIFFEID: "spiffe://td/ns/shop/web", TTL: 24 * time.Hour, EffectiveTTL: 24 * time.Hour})
		}, rule: RuleSVIDMaxTTL, object: "entry/e2", fix: "ward entry update e2 --ttl 1h", ev: "valid 1d"},
		{name: "entry default ttl above the limit", state: func(s *posture.State) {
			s.Entries[0].TTL, s.Entries[0].EffectiveTTL = 0, 2*time.Hour
		}, rule: RuleSVIDMaxTTL, object: "entry/e1", ev: "default SVID TTL"},
		{name: "no ttl limit declared", rules: func(r *posture.Rules) { r.MaxSVIDTTL = 0 }, state: func(s *posture.State) {
			s.Entries[0].EffectiveTTL = 48 * time.Hour
		}},
		{name: "key overdue", state: func(s *posture.State) { s.Keys[0].LastRotated = now.Add(-31 * 24 * time.Hour) },
			rule: RuleRotationPeriod, object: "key/k", fix: "ward key rotate k", ev: "every 30d"},
		{name: "disabled key is not overdue", state: func(s *posture.State) {
			s.Keys[0].LastRotated, s.Keys[0].Disabled = now.Add(-31*24*time.Hour), true
		}},
		{name: "key of another classification", state: func(s *posture.State) {
			s.Keys[0].Classification, s.Keys[0].LastRotated = "public", now.Add(-365*24*time.Hour)
		}},
		{name: "too many versions", state: func(s *posture.State) { s.Keys[0].Versions = 5 },
			rule: RuleRotationKept, object: "key/k", fix: "ward key destroy k --version N for the 2 oldest"},
		{name: "service without policy", state: func(s *posture.State) { s.Services[0].PolicyCovered = false },
			rule: RulePolicyCoverage, object: "service/payments", fix: `Service::"payments"`},
		{name: "no policy at all", state: func(s *posture.State) { s.PolicyVersion, s.Services[0].PolicyCovered = 0, false },
			rule: RulePolicyCoverage, object: "service/payments", ev: "no policy is applied"},
		{name: "bundle stale", state: func(s *posture.State) {
			s.Bundles[0].LastRefresh, s.Bundles[0].Error = now.Add(-48*time.Hour), "connection refused"
		},
			rule: RuleBundleStale, object: "bundle/b.example", fix: "ward federation refresh b.example", ev: "connection refused"},
		{name: "bundle never fetched", state: func(s *posture.State) { s.Bundles[0].LastRefresh = time.Time{} },
			rule: RuleBundleStale, object: "bundle/b.example", ev: "never refreshed"},
		{name: "bundle max age declared", rules: func(r *posture.Rules) { r.BundleMaxAge = yamlconf.Duration(30 * time.Minute) },
			rule: RuleBundleStale, object: "bundle/b.example"},
		{name: "authority without fips", state: func(s *posture.State) { s.AuthorityFIPS = false },
			rule: RuleFIPS, object: "process/authority", fix: "GODEBUG=fips140=on"},
		{name: "agent without fips", state: func(s *posture.State) { s.Nodes[0].Agent.FIPS = false },
			rule: RuleFIPS, object: "node/spiffe://td/ward/agent/n1"},
		{name: "proxy without fips", state: func(s *posture.State) { s.Nodes[0].Processes[0].FIPS = false },
			rule: RuleFIPS, object: "process/spiffe://td/ward/agent/n1/proxy/spiffe://td/ns/shop/payments"},
		{name: "fips not required", rules: func(r *posture.Rules) { r.FIPSRequired = nil }, state: func(s *posture.State) { s.AuthorityFIPS = false }},
		{name: "listener below min tls", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.Listeners[0].MinTLS = "1.2" })}
		}, rule: RuleTLSMinVersion, object: "listener/spiffe://td/ward/agent/n1/in", fix: `tls.min_version: "1.3"`},
		{name: "negotiated tls 1.2", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.TLSVersions["1.2"] = 4 })}
		}, rule: RuleTLSMinVersion, ev: "4 connections at TLS 1.2"},
		{name: "negotiated classical group", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.Groups["X25519"] = 2 })}
		}, rule: RuleTLSGroups, ev: "X25519 (2)"},
		{name: "inbound without mtls", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.Listeners[0].MTLS = false })}
		}, rule: RuleMTLS, object: "listener/spiffe://td/ward/agent/n1/in"},
		{name: "svid expired", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.SVIDs[0].ExpiresAt = now.Add(-time.Minute) })}
		}, rule: RuleSVIDExpired},
		{name: "svid longer than the limit", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.SVIDs[0].ExpiresAt = now.Add(20 * time.Hour) })}
		}, rule: RuleSVIDMaxTTL, fix: "--ttl 1h"},
		{name: "service not in the mesh", state: func(s *posture.State) {
			s.Nodes = []telemetry.NodeReport{proxyReport(func(p *telemetry.Report) { p.Listeners[0].Service = "other" })}
		}, rule: RuleMeshService, object: "service/payments"},
		{name: "namespace without entries", rules: func(r *posture.Rules) { r.Mesh.Namespaces = []string{"billing"} },
			rule: RuleMeshNamespace, object: "namespace/billing", ev: "no registration entry"},
		{name: "namespace registered but not served", rules: func(r *posture.Rules) { r.Mesh.Services = nil }, state: func(s *posture.State) {
			s.Nodes = nil
		}, rule: RuleMeshNamespace, object: "namespace/shop", ev: "no reporting proxy"},
		{name: "node silent", state: func(s *posture.State) { s.Nodes[0].Received = now.Add(-time.Hour) },
			rule: RuleTelemetryStale, object: "node/spiffe://td/ward/agent/n1"},
		{name: "scan offers tls 1.2", state: func(s *posture.State) {
			s.Scans = []posture.Scan{{Target: "10.0.0.1:8443", Versions: []string{"1.2", "1.3"}, Groups: []string{"X25519MLKEM768"}, ClientCertRequired: true, Service: "payments"}}
		}, rule: RuleTLSMinVersion, object: "endpoint/10.0.0.1:8443", ev: "offers TLS 1.2"},
		{name: "scan without client cert", state: func(s *posture.State) {
			s.Scans = []posture.Scan{{Target: "10.0.0.1:8443", Versions: []string{"1.3"}, Groups: []string{"X25519MLKEM768"}, Service: "payments"}}
		}, rule: RuleMTLS, object: "endpoint/10.0.0.1:8443"},
		{name: "scan groups", state: func(s *posture.State) {
			s.Scans = []posture.Scan{{Target: "h:1", Versions: []string{"1.3"}, Groups: []string{"X25519MLKEM768", "CurveP256"}}}
		}, rule: RuleTLSGroups, ev: "CurveP256"},
		{name: "failed scan finds nothing", state: func(s *posture.State) {
			s.Scans = []posture.Scan{{Target: "h:1", Versions: []string{"1.0"}, Error: "refused"}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, st := rules(), clean()
			if tc.rules != nil {
				tc.rules(&r)
			}
			if tc.state != nil {
				tc.state(&st)
			}
			got := Evaluate(r, st)
			if tc.rule == "" {
				if len(got) != 0 {
					t.Fatalf("want no finding, got %+v", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("want one %s finding, got %d: %+v", tc.rule, len(got), got)
			}
			f := got[0]
			if f.Rule != tc.rule || (tc.object != "" && f.Object != tc.object) {
				t.Fatalf("got %s on %s, want %s on %s", f.Rule, f.Object, tc.rule, tc.object)
			}
			if f.Evidence == "" || f.Fix == "" || f.Severity == 0 || f.Source == "" {
				t.Fatalf("finding incomplete: %+v", f)
			}
			if !strings.Contains(f.Fix, tc.fix) || !strings.Contains(f.Evidence, tc.ev) {
				t.Fatalf("fix %q (want %q), evidence %q (want %q)", f.Fix, tc.fix, f.Evidence, tc.ev)
			}
		})
	}
}

func TestEvaluateSortsWorstFirst(t *testing.T) {
	st := clean()
	st.Keys[0].Versions = 9                        // medium
	st.Keys[0].LastRotated = now.AddDate(0, -2, 0) // high
	got := Evaluate(rules(), st)
	if len(got) != 2 || got[0].Severity != High || got[1].Severity != Medium {
		t.Fatalf("not sorted worst first: %+v", got)
	}
	if posture.Worst(got) != High {
		t.Fatal("Worst")
	}
}
