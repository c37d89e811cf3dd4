// Package report builds ward's compliance report (`ward report`): what an
// auditor asks for, each number with the evidence it comes from. Its input
// is its own plain data (Input), filled by the CLI from the authority's
// admin API (keys, entries, agents, the CA, the audit log) and from the
// proxies' metrics; it never reaches into the authority. Build computes
// the Report; WriteHTML renders it as one self-contained page (inline CSS
// and SVG charts, no script, nothing fetched) and WriteJSON as JSON.
// Every string from the store (key names, SPIFFE IDs, actors) is escaped
// by html/template.
package report

import "time"

// Input is everything the report reads.
type Input struct {
	Generated   time.Time
	TrustDomain string
	Version     string // of the authority
	// RotationGrace: a key is overdue once its active version is older
	// than its rotation period plus this (the scheduler runs every
	// kms.rotation_check_interval).
	RotationGrace time.Duration

	Classifications []Classification
	Keys            []Key
	Entries         []Entry
	// DefaultSVIDTTL is the CA's default X509-SVID TTL (entries with TTL
	// 0 get it); 0 when unknown.
	DefaultSVIDTTL time.Duration
	CAKeys         []CAKey
	Agents         []Agent
	// Audit is the verification of the whole log the CLI ran.
	Audit Audit
	// Events are the audit events the report reads (rotations,
	// revocations, alerts), oldest first; the CLI passes the ones with
	// the operations in Operations.
	Events []Event
	// Coverage: what proxies and other reporters measured; nil means
	// nothing was measured (the report says so).
	Coverage []Coverage
	// Drift: nil means drift detection is not configured.
	Drift *Drift
	// Alerts are the anomaly alerts found in the audit log.
	Alerts []Alert
}

// Operations are the audit operations the report reads from the log.
var Operations = []string{"key.create", "key.rotate", "policy.revoke", "policy.unrevoke", "policy.remote_deny_list", "anomaly.alert"}

// Classification is one row of the authority's classification table.
type Classification struct {
	Name           string        `json:"name"`
	RotationPeriod time.Duration `json:"rotation_period"`
	KeepVersions   uint32        `json:"keep_versions"`
}

// Key is one KMS key as Keys.ListKeys returns it.
type Key struct {
	Name           string
	Classification string
	Created        time.Time
	RotationPeriod time.Duration // 0: manual rotation only
	NextRotation   time.Time
	LatestVersion  uint32
	Versions       []KeyVersion
}

// KeyVersion is one version of a key.
type KeyVersion struct {
	Version uint32
	State   string
	Created time.Time
}

// Entry is one registration entry.
type Entry struct {
	ID       string
	SPIFFEID string
	TTL      time.Duration // 0: the CA default
}

// CAKey is one root, intermediate or JWT key of the CA.
type CAKey struct {
	ID, Kind, State     string
	NotBefore, NotAfter time.Time
}

// Agent is one attested node.
type Agent struct {
	SPIFFEID string
	Serial   string
	Expires  time.Time
	Evicted  bool
}

// Audit is the verification of the audit log.
type Audit struct {
	// Checked is false when verification was skipped (--no-verify).
	Checked  bool     `json:"checked"`
	Verified bool     `json:"verified"`
	Problems []string `json:"problems,omitempty"`
	// The newest signed checkpoint.
	Origin string    `json:"origin"`
	Size   uint64    `json:"size"`
	Root   string    `json:"root"` // hex
	KeyID  string    `json:"key_id"`
	Time   time.Time `json:"time"`
	// RememberedSize is the checkpoint this verifier remembered from an
	// earlier run (0: none) that the log was proven to extend.
	RememberedSize uint64 `json:"remembered_size,omitempty"`
	// Witnesses: federated authorities that cosigned the log.
	Witnesses []Witness `json:"witnesses,omitempty"`
}

// Witness is one federated authority's newest cosignature on the log.
type Witness struct {
	TrustDomain string    `json:"trust_domain"`
	Size        uint64    `json:"size"`
	Time        time.Time `json:"time"`
}

// Event is one audit event.
type Event struct {
	Seq        uint64
	Time       time.Time
	Actor      string
	Operation  string
	Key        string
	KeyVersion uint32
	Result     string
	Fields     map[string]string
}

// Coverage is what one reporter measured of connections.
type Coverage struct {
	// Source names the reporter (a proxy's metrics URL, an agent).
	Source string `json:"source"`
	// MTLS: connections made or accepted with mutual TLS; TLS13 and PQ of
	// them with TLS 1.3 and with a post-quantum hybrid key exchange.
	MTLS  uint64 `json:"mtls"`
	TLS13 uint64 `json:"tls13"`
	PQ    uint64 `json:"pq_hybrid"`
	// Plaintext: connections the reporter saw without TLS (known only to
	// reporters that see them, such as the drift telemetry).
	Plaintext uint64 `json:"plaintext"`
	// Failed: handshakes that failed (nothing was sent in the clear).
	Failed   uint64 `json:"failed_handshakes"`
	Evidence string `json:"evidence"`
}

// Drift is what drift detection found.
type Drift struct {
	Source   string    `json:"source"`
	Findings []Finding `json:"findings"`
}

// Finding is one difference between the declared posture and reality.
type Finding struct {
	Severity string `json:"severity"`
	Object   string `json:"object"`
	Rule     string `json:"rule"`
	Evidence string `json:"evidence"`
	Fix      string `json:"fix"`
}

// Alert is one anomaly alert (an "anomaly.alert" audit event).
type Alert struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Caller string    `json:"caller"`
	Key    string    `json:"key,omitempty"`
	Detail string    `json:"detail"`
}
