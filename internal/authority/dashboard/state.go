// Package dashboard serves the authority's read-only dashboard: a few
// static pages and one script (served from this package, CSP 'self' only:
// no inline script or style), a JSON snapshot of the authority (State) and
// its live updates as Server-Sent Events. Every request needs the dashboard
// token, given once through the login form (which sets an HttpOnly,
// SameSite=Strict session cookie) or as "Authorization: Bearer"; anything
// else gets 401 and the static login form, nothing about the authority.
// The server fills State (internal/authority/server/dashboard.go); parts
// wired beside the authority (anomaly alerts, drift) add theirs through
// Extras.
package dashboard

import "time"

// State is one snapshot of the authority, as the pages show it.
type State struct {
	Generated   time.Time `json:"generated"`
	TrustDomain string    `json:"trust_domain"`
	Version     string    `json:"version"`
	Health      Health    `json:"health"`
	// The rest is empty while the authority is sealed.
	Federation []Federation `json:"federation"`
	CA         CA           `json:"ca"`
	Agents     []Agent      `json:"agents"`
	AgentCount int          `json:"agent_count"`
	Entries    int          `json:"entries"`
	Keys       []Key        `json:"keys"`
	KeyCount   int          `json:"key_count"`
	Overdue    int          `json:"keys_overdue"`
	Policy     Policy       `json:"policy"`
	Drift      Drift        `json:"drift"`
	Anomalies  []Alert      `json:"anomalies"`
	Recent     []Event      `json:"recent_events"`
	Errors     []string     `json:"errors,omitempty"`
}

// Health is the authority's lifecycle.
type Health struct {
	Sealed         bool     `json:"sealed"`
	Initialized    bool     `json:"initialized"`
	SealType       string   `json:"seal_type"`
	Storage        string   `json:"storage"`
	AuditSize      uint64   `json:"audit_size"`
	IdentityActive bool     `json:"identity_active"`
	Warnings       []string `json:"warnings"`
}

// Federation is one federated trust domain.
type Federation struct {
	TrustDomain  string    `json:"trust_domain"`
	Profile      string    `json:"profile"`
	Sequence     uint64    `json:"sequence"`
	LastRefresh  time.Time `json:"last_refresh"`
	NextRefresh  time.Time `json:"next_refresh"`
	Stale        bool      `json:"stale"`
	LastError    string    `json:"last_error,omitempty"`
	Revoked      int       `json:"revoked_entries"`
	WitnessSize  uint64    `json:"witnessed_size"`
	WitnessAlert string    `json:"witness_alert,omitempty"`
}

// CA is the trust domain's CA.
type CA struct {
	BundleSequence uint64  `json:"bundle_sequence"`
	Keys           []CAKey `json:"keys"`
}

// CAKey is one root, intermediate or JWT key.
type CAKey struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	State    string    `json:"state"`
	NotAfter time.Time `json:"not_after"`
	InBundle bool      `json:"in_bundle"`
}

// Agent is one attested node.
type Agent struct {
	SPIFFEID    string    `json:"spiffe_id"`
	Attestation string    `json:"attestation"`
	Expires     time.Time `json:"expires"`
	LastSeen    time.Time `json:"last_seen"`
	Evicted     bool      `json:"evicted"`
}

// Key is one KMS key.
type Key struct {
	Name           string    `json:"name"`
	Classification string    `json:"classification"`
	Version        uint32    `json:"version"`
	LastRotated    time.Time `json:"last_rotated"`
	NextRotation   time.Time `json:"next_rotation"`
	Overdue        bool      `json:"overdue"`
}

// Policy is the policy store and the decisions taken.
type Policy struct {
	Current   uint64          `json:"current"`
	Versions  []PolicyVersion `json:"versions"`
	DenyList  []string        `json:"deny_list"`
	Decisions []Decision      `json:"decisions"`
}

// PolicyVersion is one stored version.
type PolicyVersion struct {
	Version  uint64    `json:"version"`
	Created  time.Time `json:"created"`
	Actor    string    `json:"actor"`
	Comment  string    `json:"comment"`
	Policies int       `json:"policies"`
	DenyList int       `json:"deny_list"`
}

// Decision counts policy decisions of one kind (result: allow, deny,
// dry-run-deny) since the authority started.
type Decision struct {
	Source string `json:"source"`
	Action string `json:"action"`
	Result string `json:"result"`
	Count  uint64 `json:"count"`
}

// Drift is what drift detection found, or that it is not configured.
type Drift struct {
	Configured     bool      `json:"configured"`
	PostureVersion uint64    `json:"posture_version,omitempty"`
	Evaluated      string    `json:"evaluated,omitempty"`
	Findings       []Finding `json:"findings"`
	// Total counts every finding (Findings holds the worst 200).
	Total int `json:"total"`
}

// Finding is one drift finding.
type Finding struct {
	Severity string `json:"severity"`
	Object   string `json:"object"`
	Rule     string `json:"rule"`
	Evidence string `json:"evidence"`
	Fix      string `json:"fix"`
}

// Alert is one anomaly alert.
type Alert struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Caller string    `json:"caller"`
	Key    string    `json:"key"`
	Detail string    `json:"detail"`
}

// Event is one recent audit event (no context values, no fields).
type Event struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	Operation string    `json:"operation"`
	Key       string    `json:"key,omitempty"`
	Result    string    `json:"result"`
}

// Extras are filled by parts wired beside the authority.
type Extras struct {
	// Anomalies returns the newest anomaly alerts (nil: none).
	Anomalies func() []Alert
	// Drift returns the current drift findings; nil means drift is not
	// configured.
	Drift func() *Drift
	// Decisions adds policy decision counts measured elsewhere (proxies'
	// telemetry).
	Decisions func() []Decision
}
