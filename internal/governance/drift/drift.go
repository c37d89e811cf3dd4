// Package drift compares a declared posture (internal/shared/posture) with
// what is: the authority's records (keys, entries, policy, federation
// bundles), the telemetry its proxies, gateways and agents report, and
// scan results. Each finding names the object, the rule, the evidence and
// the fix (docs/governance.md lists the rules). Evaluate is pure: `ward
// drift` runs it on the state the authority sends plus its own scans, and
// the authority runs it continuously through the function the CLI wires
// into it (it never imports governance).
package drift

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// Finding is one drift finding (the type lives in internal/shared/posture
// so the authority can keep and serve findings).
type Finding = posture.Finding

// Severities of findings.
const (
	Low      = posture.Low
	Medium   = posture.Medium
	High     = posture.High
	Critical = posture.Critical
)

// Rule names (docs/governance.md, "Drift rules").
const (
	RuleFIPS            = "fips.required"
	RuleTLSMinVersion   = "tls.min_version"
	RuleTLSGroups       = "tls.groups"
	RuleMTLS            = "mtls.required"
	RuleSVIDMaxTTL      = "svid.max_ttl"
	RuleSVIDExpired     = "svid.expired"
	RuleRotationPeriod  = "rotation.period"
	RuleRotationKept    = "rotation.kept_versions"
	RulePolicyCoverage  = "policy.coverage"
	RuleMeshService     = "mesh.service"
	RuleMeshNamespace   = "mesh.namespace"
	RuleBundleStale     = "federation.bundle_stale"
	RuleTelemetryStale  = "telemetry.stale"
	defaultBundleMaxAge = 24 * time.Hour
	// DefaultTelemetryMaxAge is how old a node's last report may be.
	DefaultTelemetryMaxAge = 5 * time.Minute
)

// Rules lists every rule name, for docs and metrics.
var Rules = []string{RuleFIPS, RuleTLSMinVersion, RuleTLSGroups, RuleMTLS, RuleSVIDMaxTTL, RuleSVIDExpired,
	RuleRotationPeriod, RuleRotationKept, RulePolicyCoverage, RuleMeshService, RuleMeshNamespace, RuleBundleStale, RuleTelemetryStale}

// Evaluate returns the findings of state st against rules r, sorted by
// severity (worst first), then rule and object.
func Evaluate(r posture.Rules, st posture.State) []Finding {
	e := &eval{r: r, st: st, now: st.Now}
	if e.now.IsZero() {
		e.now = time.Now()
	}
	e.fips()
	e.entries()
	e.keys()
	e.services()
	e.bundles()
	e.nodes()
	e.mesh()
	e.scans()
	out := e.out
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Severity != out[j].Severity {
			return out[i].Severity > out[j].Severity
		}
		if out[i].Rule != out[j].Rule {
			return out[i].Rule < out[j].Rule
		}
		return out[i].Object < out[j].Object
	})
	return out
}

type eval struct {
	r   posture.Rules
	st  posture.State
	now time.Time
	out []Finding
}

func (e *eval) add(f Finding) { e.out = append(e.out, f) }

// processObject names a process of a node report.
func processObject(node string, p telemetry.Report) string {
	name := p.Name
	if name == "" {
		name = "unnamed"
	}
	return "process/" + node + "/" + p.Kind + "/" + name
}

// each calls fn for every process reported (agents included).
func (e *eval) each(fn func(node string, obj string, p telemetry.Report)) {
	for _, n := range e.st.Nodes {
		fn(n.Node, "node/"+n.Node, n.Agent)
		for _, p := range n.Processes {
			fn(n.Node, processObject(n.Node, p), p)
		}
	}
}

func (e *eval) fips() {
	if !e.r.FIPS() {
		return
	}
	fix := "run it with GODEBUG=fips140=on (or a binary built with GOFIPS140=latest) and restart it"
	if !e.st.AuthorityFIPS {
		e.add(Finding{Object: "process/authority", Rule: RuleFIPS, Severity: High, Source: posture.SourceState,
			Evidence: "the authority of " + e.st.TrustDomain + " runs without FIPS 140-3 mode; the posture requires it",
			Fix:      "restart `ward server` with GODEBUG=fips140=on (or a binary built with GOFIPS140=latest)"})
	}
	e.each(func(node, obj string, p telemetry.Report) {
		if !p.FIPS {
			e.add(Finding{Object: obj, Rule: RuleFIPS, Severity: High, Source: posture.SourceTelemetry,
				Evidence: fmt.Sprintf("the %s reports FIPS 140-3 mode off; the posture requires it", p.Kind),
				Fix:      "on node " + node + ": " + fix})
		}
	})
}

func (e *eval) entries() {
	limit := time.Duration(e.r.MaxSVIDTTL)
	if limit == 0 {
		return
	}
	for _, en := range e.st.Entries {
		ttl := en.EffectiveTTL
		if ttl == 0 {
			ttl = en.TTL
		}
		if ttl <= limit {
			continue
		}
		how := "asks for"
		if en.TTL == 0 {
			how = "gets the authority's default SVID TTL:"
		}
		e.add(Finding{Object: "entry/" + en.ID, Rule: RuleSVIDMaxTTL, Severity: Medium, Source: posture.SourceState,
			Evidence: fmt.Sprintf("entry %s (%s) %s X509-SVIDs valid %s; the posture allows at most %s", en.ID, en.SPIFFEID, how, fmtDur(ttl), fmtDur(limit)),
			Fix:      fmt.Sprintf("ward entry update %s --ttl %s", en.ID, flagDur(limit))})
	}
}

func (e *eval) keys() {
	for _, k := range e.st.Keys {
		rot, ok := e.r.Rotation[k.Classification]
		if !ok {
			continue
		}
		if p := time.Duration(rot.Period); p > 0 && !k.Disabled {
			age := e.now.Sub(k.LastRotated)
			if age > p {
				e.add(Finding{Object: "key/" + k.Name, Rule: RuleRotationPeriod, Severity: High, Source: posture.SourceState,
					Evidence: fmt.Sprintf("key %s (%s) was last rotated %s ago (%s); the posture rotates %s keys every %s",
						k.Name, k.Classification, fmtDur(age.Truncate(time.Minute)), k.LastRotated.UTC().Format(time.RFC3339), k.Classification, fmtDur(p)),
					Fix: fmt.Sprintf("ward key rotate %s (and give classification %s a rotation_period of at most %s in the server configuration)", k.Name, k.Classification, fmtDur(p))})
			}
		}
		if rot.KeptVersions > 0 && k.Versions > rot.KeptVersions {
			e.add(Finding{Object: "key/" + k.Name, Rule: RuleRotationKept, Severity: Medium, Source: posture.SourceState,
				Evidence: fmt.Sprintf("key %s (%s) keeps %d versions that are not destroyed; the posture keeps at most %d", k.Name, k.Classification, k.Versions, rot.KeptVersions),
				Fix:      fmt.Sprintf("rewrap what the oldest versions protect (ward kms rewrap, ward files rewrap), then ward key destroy %s --version N for the %d oldest", k.Name, k.Versions-rot.KeptVersions)})
		}
	}
}

func (e *eval) services() {
	for _, s := range e.st.Services {
		if s.PolicyCovered {
			continue
		}
		ev := fmt.Sprintf("no policy of version %d lets any identity connect to service %s", e.st.PolicyVersion, s.Name)
		if e.st.PolicyVersion == 0 {
			ev = "no policy is applied, so every connection to service " + s.Name + " is denied"
		}
		if s.Evidence != "" {
			ev += " (" + s.Evidence + ")"
		}
		e.add(Finding{Object: "service/" + s.Name, Rule: RulePolicyCoverage, Severity: Medium, Source: posture.SourceState,
			Evidence: ev,
			Fix:      fmt.Sprintf("ward policy apply a Cedar file with a permit for action == Action::\"connect\" on resource == Service::%q (ward policy test to check it)", s.Name)})
	}
}

func (e *eval) bundles() {
	limit := time.Duration(e.r.BundleMaxAge)
	if limit == 0 {
		limit = defaultBundleMaxAge
	}
	for _, b := range e.st.Bundles {
		var ev string
		switch {
		case b.LastRefresh.IsZero():
			ev = "the bundle of " + b.TrustDomain + " was never refreshed from its endpoint"
		case e.now.Sub(b.LastRefresh) > limit:
			ev = fmt.Sprintf("the bundle of %s was last refreshed %s ago (%s); the posture allows %s", b.TrustDomain,
				fmtDur(e.now.Sub(b.LastRefresh).Truncate(time.Minute)), b.LastRefresh.UTC().Format(time.RFC3339), fmtDur(limit))
		default:
			continue
		}
		if b.Error != "" {
			ev += "; last error: " + b.Error
		}
		e.add(Finding{Object: "bundle/" + b.TrustDomain, Rule: RuleBundleStale, Severity: High, Source: posture.SourceState, Evidence: ev,
			Fix: fmt.Sprintf("make the bundle endpoint of %s reachable, then ward federation refresh %s (ward federation show %s names the endpoint)", b.TrustDomain, b.TrustDomain, b.TrustDomain)})
	}
}

func versionLess(a, b string) bool { return versionRank(a) < versionRank(b) }

func versionRank(v string) int {
	switch v {
	case "1.3":
		return 4
	case "1.2":
		return 3
	case "1.1":
		return 2
	case "1.0":
		return 1
	}
	return 0 // ssl3 and unknown
}

func (e *eval) nodes() {
	maxAge := time.Duration(e.r.TelemetryMaxAge)
	if maxAge == 0 {
		maxAge = DefaultTelemetryMaxAge
	}
	for _, n := range e.st.Nodes {
		if !n.Received.IsZero() && e.now.Sub(n.Received) > maxAge {
			e.add(Finding{Object: "node/" + n.Node, Rule: RuleTelemetryStale, Severity: Medium, Source: posture.SourceTelemetry,
				Evidence: fmt.Sprintf("the last telemetry of node %s arrived %s ago (%s): what it covers is not measured", n.Node,
					fmtDur(e.now.Sub(n.Received).Truncate(time.Second)), n.Received.UTC().Format(time.RFC3339)),
				Fix: "check that ward agent runs on the node and reaches the authority (ward agent list shows its last sync)"})
		}
	}
	min := e.r.TLS.MinVersion
	limit := time.Duration(e.r.MaxSVIDTTL)
	e.each(func(node, obj string, p telemetry.Report) {
		for _, l := range p.Listeners {
			lobj := "listener/" + node + "/" + l.Name
			if min != "" && l.MinTLS != "" && versionLess(l.MinTLS, min) {
				e.add(Finding{Object: lobj, Rule: RuleTLSMinVersion, Severity: High, Source: posture.SourceTelemetry,
					Evidence: fmt.Sprintf("%s listener %s (%s) accepts TLS %s; the posture's minimum is TLS %s", p.Kind, l.Name, l.Address, l.MinTLS, min),
					Fix:      fmt.Sprintf("set tls.min_version: %q in the %s's configuration on node %s and restart it", min, p.Kind, node)})
			}
			if l.Direction == "inbound" && l.Service != "" && e.r.RequiresMTLS(l.Service) && !l.MTLS {
				e.add(Finding{Object: lobj, Rule: RuleMTLS, Severity: High, Source: posture.SourceTelemetry,
					Evidence: fmt.Sprintf("inbound listener %s (%s) of service %s does not require a client certificate; the posture requires mTLS for it", l.Name, l.Address, l.Service),
					Fix:      "serve service " + l.Service + " only through a ward proxy inbound listener (it always requires the client's X509-SVID)"})
			}
		}
		if min != "" {
			for _, v := range sortedKeys(p.TLSVersions) {
				if p.TLSVersions[v] > 0 && versionLess(v, min) {
					e.add(Finding{Object: obj, Rule: RuleTLSMinVersion, Severity: High, Source: posture.SourceTelemetry,
						Evidence: fmt.Sprintf("the %s negotiated %d connections at TLS %s; the posture's minimum is TLS %s", p.Kind, p.TLSVersions[v], v, min),
						Fix:      fmt.Sprintf("set tls.min_version: %q in the %s's configuration on node %s and restart it", min, p.Kind, node)})
				}
			}
		}
		if len(e.r.TLS.Groups) > 0 {
			var bad []string
			for _, g := range sortedKeys(p.Groups) {
				if p.Groups[g] > 0 && !slices.Contains(e.r.TLS.Groups, g) {
					bad = append(bad, fmt.Sprintf("%s (%d)", g, p.Groups[g]))
				}
			}
			if len(bad) > 0 {
				e.add(Finding{Object: obj, Rule: RuleTLSGroups, Severity: Medium, Source: posture.SourceTelemetry,
					Evidence: fmt.Sprintf("the %s negotiated key-exchange groups outside the posture's %s: %s", p.Kind, strings.Join(e.r.TLS.Groups, ", "), strings.Join(bad, ", ")),
					Fix:      "find the peers that do not offer " + e.r.TLS.Groups[0] + " (their TLS stack or configuration) and upgrade them, or allow the group in the posture"})
			}
		}
		for _, s := range p.SVIDs {
			if s.ExpiresAt.IsZero() {
				continue
			}
			if s.ExpiresAt.Before(e.now) {
				e.add(Finding{Object: obj, Rule: RuleSVIDExpired, Severity: High, Source: posture.SourceTelemetry,
					Evidence: fmt.Sprintf("the %s holds an X509-SVID for %s that expired at %s", p.Kind, s.SPIFFEID, s.ExpiresAt.UTC().Format(time.RFC3339)),
					Fix:      "check the agent on node " + node + " (its Workload API, its sync with the authority) and that the " + p.Kind + " follows SVID rotation"})
			} else if limit > 0 && s.ExpiresAt.Sub(e.now) > limit+time.Minute {
				e.add(Finding{Object: obj, Rule: RuleSVIDMaxTTL, Severity: Medium, Source: posture.SourceTelemetry,
					Evidence: fmt.Sprintf("the %s holds an X509-SVID for %s valid until %s, %s from now; the posture allows at most %s", p.Kind, s.SPIFFEID,
						s.ExpiresAt.UTC().Format(time.RFC3339), fmtDur(s.ExpiresAt.Sub(e.now).Truncate(time.Minute)), fmtDur(limit)),
					Fix: fmt.Sprintf("lower the TTL of the entry for %s (ward entry update ID --ttl %s); the workload gets a shorter SVID at its next rotation", s.SPIFFEID, flagDur(limit))})
			}
		}
	})
}

// mesh checks the declared coverage: every namespace has a registered
// workload whose identity a reporting inbound listener presents, every
// service a reporting inbound listener.
func (e *eval) mesh() {
	if len(e.r.Mesh.Services) == 0 && len(e.r.Mesh.Namespaces) == 0 {
		return
	}
	served := map[string]bool{}
	var ids []string
	e.each(func(_, _ string, p telemetry.Report) {
		for _, l := range p.Listeners {
			if l.Direction == "inbound" {
				served[l.Service] = true
				ids = append(ids, l.SPIFFEID)
			}
		}
	})
	reporting := len(e.st.Nodes)
	for _, s := range e.r.Mesh.Services {
		if served[s] {
			continue
		}
		e.add(Finding{Object: "service/" + s, Rule: RuleMeshService, Severity: High, Source: posture.SourceTelemetry,
			Evidence: fmt.Sprintf("no proxy reports an inbound listener for service %s (%d nodes report telemetry)", s, reporting),
			Fix:      fmt.Sprintf("put service %s behind a ward proxy (an inbound listener with service.name: %s) whose policy_socket is its node agent's, so it reports", s, s)})
	}
	for _, ns := range e.r.Mesh.Namespaces {
		prefix := "/ns/" + ns + "/"
		registered := 0
		for _, en := range e.st.Entries {
			if strings.Contains(en.SPIFFEID, prefix) {
				registered++
			}
		}
		covered := false
		for _, id := range ids {
			if strings.Contains(id, prefix) {
				covered = true
				break
			}
		}
		switch {
		case registered == 0:
			e.add(Finding{Object: "namespace/" + ns, Rule: RuleMeshNamespace, Severity: High, Source: posture.SourceState,
				Evidence: fmt.Sprintf("no registration entry has a SPIFFE ID under spiffe://%s%s: no workload of namespace %s has an identity", e.st.TrustDomain, prefix, ns),
				Fix:      fmt.Sprintf("register its workloads: ward entry create --spiffe-id spiffe://%s%sNAME --parent AGENT-ID --selector ...", e.st.TrustDomain, prefix)})
		case !covered:
			e.add(Finding{Object: "namespace/" + ns, Rule: RuleMeshNamespace, Severity: High, Source: posture.SourceTelemetry,
				Evidence: fmt.Sprintf("%d entries under spiffe://%s%s are registered, but no reporting proxy presents one of them on an inbound listener", registered, e.st.TrustDomain, prefix),
				Fix:      "run the namespace's services behind ward proxies (inbound listeners) with policy_socket set, so their traffic is mTLS and reported"})
		}
	}
}

func (e *eval) scans() {
	min := e.r.TLS.MinVersion
	for _, s := range e.st.Scans {
		obj := "endpoint/" + s.Target
		if s.Error != "" {
			continue
		}
		if min != "" {
			var low []string
			for _, v := range s.Versions {
				if versionLess(v, min) {
					low = append(low, v)
				}
			}
			if len(low) > 0 {
				e.add(Finding{Object: obj, Rule: RuleTLSMinVersion, Severity: High, Source: posture.SourceScan,
					Evidence: fmt.Sprintf("%s offers TLS %s; the posture's minimum is TLS %s", s.Target, strings.Join(low, ", "), min),
					Fix:      fmt.Sprintf("set the endpoint's minimum TLS version to %s (for ward proxies and gateways: tls.min_version: %q) and restart it", min, min)})
			}
		}
		if len(e.r.TLS.Groups) > 0 {
			var bad []string
			for _, g := range s.Groups {
				if !slices.Contains(e.r.TLS.Groups, g) {
					bad = append(bad, g)
				}
			}
			if len(bad) > 0 {
				e.add(Finding{Object: obj, Rule: RuleTLSGroups, Severity: Medium, Source: posture.SourceScan,
					Evidence: fmt.Sprintf("%s accepts key-exchange groups outside the posture's %s: %s", s.Target, strings.Join(e.r.TLS.Groups, ", "), strings.Join(bad, ", ")),
					Fix:      "restrict the endpoint's groups (curve preferences) to " + strings.Join(e.r.TLS.Groups, ", ")})
			}
		}
		if s.Service != "" && e.r.RequiresMTLS(s.Service) && !s.ClientCertRequired {
			e.add(Finding{Object: obj, Rule: RuleMTLS, Severity: High, Source: posture.SourceScan,
				Evidence: fmt.Sprintf("%s (service %s) completes handshakes without a client certificate; the posture requires mTLS for it", s.Target, s.Service),
				Fix:      "serve service " + s.Service + " only through a ward proxy inbound listener (it always requires the client's X509-SVID)"})
		}
	}
}

func sortedKeys(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// fmtDur writes whole hours and days the way the posture file does (1h,
// 24h, 30d) and other durations as Go does.
func fmtDur(d time.Duration) string {
	switch {
	case d >= 24*time.Hour && d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

// flagDur writes d as a Go duration flag takes it (no days).
func flagDur(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}
