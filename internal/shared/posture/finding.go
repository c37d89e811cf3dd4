package posture

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Severity grades a finding.
type Severity int

// Severities, lowest first.
const (
	Low Severity = iota + 1
	Medium
	High
	Critical
)

var severityNames = []string{"", "low", "medium", "high", "critical"}

func (s Severity) String() string {
	if s < Low || s > Critical {
		return fmt.Sprintf("severity(%d)", int(s))
	}
	return severityNames[s]
}

// ParseSeverity reads low, medium, high or critical.
func ParseSeverity(s string) (Severity, error) {
	for i, n := range severityNames {
		if i > 0 && strings.EqualFold(s, n) {
			return Severity(i), nil
		}
	}
	return 0, fmt.Errorf("severity %q: use low, medium, high or critical", s)
}

// MarshalText writes the severity's name.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a severity's name.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Where a finding's evidence comes from.
const (
	SourceState     = "state"     // the authority's own records (keys, entries, policy, bundles)
	SourceTelemetry = "telemetry" // what proxies, gateways and agents report
	SourceScan      = "scan"      // ward scan of a listener
)

// Finding is one difference between the declared posture and what is.
// Object, Rule, Evidence and Fix are always set.
type Finding struct {
	// Object is what drifted: "key/NAME", "entry/ID", "service/NAME",
	// "node/SPIFFE-ID", "listener/NODE/NAME", "bundle/TRUST-DOMAIN",
	// "namespace/NAME", "process/..." or "endpoint/HOST:PORT".
	Object string `json:"object"`
	// Rule is the posture rule (see Rules in docs/governance.md), e.g.
	// "svid.max_ttl".
	Rule     string   `json:"rule"`
	Severity Severity `json:"severity"`
	// Evidence says what was seen and where.
	Evidence string `json:"evidence"`
	// Fix says what to do (a command when there is one).
	Fix string `json:"fix"`
	// Source is SourceState, SourceTelemetry or SourceScan.
	Source string `json:"source"`
}

// ID identifies a finding across evaluations (rule and object): the same
// drift seen again is the same finding even if its evidence changed.
func (f Finding) ID() string { return f.Rule + " " + f.Object }

// Report is the outcome of one drift evaluation.
type Report struct {
	// PostureVersion is the posture version evaluated (0: none declared).
	PostureVersion uint64 `json:"posture_version"`
	// Scope is the cluster of the posture file that applied ("defaults"
	// when none names this trust domain).
	Scope       string    `json:"scope,omitempty"`
	TrustDomain string    `json:"trust_domain"`
	Evaluated   string    `json:"evaluated"` // RFC 3339
	Findings    []Finding `json:"findings"`
}

// Worst is the highest severity among fs (0 when none).
func Worst(fs []Finding) Severity {
	var w Severity
	for _, f := range fs {
		w = max(w, f.Severity)
	}
	return w
}

// MarshalFindings is the JSON form of fs (never null).
func MarshalFindings(fs []Finding) ([]byte, error) {
	if fs == nil {
		fs = []Finding{}
	}
	return json.Marshal(fs)
}
