package scan

import "time"

// Result is what a scan of one endpoint found. It is the JSON form of
// `ward scan --json` (one object per endpoint) and the input of the
// governance parts that build on scans (drift, report).
type Result struct {
	Target string `json:"target"`
	// Source says where the target came from when it was not named on the
	// command line (ward scan --reported: the node and listener reporting it).
	Source     string    `json:"source,omitempty"`
	ServerName string    `json:"server_name,omitempty"` // SNI sent and name checked
	Started    time.Time `json:"started"`
	DurationMS float64   `json:"duration_ms"`
	Probes     int       `json:"probes"` // connections made
	// Error: the endpoint could not be scanned (unreachable, not TLS).
	Error string `json:"error,omitempty"`

	Protocols   []Protocol  `json:"protocols"`
	PostQuantum PostQuantum `json:"post_quantum"`
	// Negotiated: what a modern client (Go's) gets.
	Negotiated *Negotiated `json:"negotiated,omitempty"`
	ClientAuth ClientAuth  `json:"client_auth"`
	Chain      *Chain      `json:"chain,omitempty"`

	Findings []Finding `json:"findings"`
}

// Protocol is one protocol version: offered or not, with its suites and
// key-exchange groups.
type Protocol struct {
	Version Version `json:"version"`
	Offered bool    `json:"offered"`
	Suites  []Suite `json:"suites,omitempty"`
	// ServerOrder: the server picks by its own preference (the same suite
	// whichever order the client offers them in); Preferred is its pick.
	ServerOrder bool   `json:"server_order"`
	Preferred   string `json:"preferred,omitempty"`
	// Groups: TLS 1.3 groups (by HelloRetryRequest), or the ECDHE curves of
	// the highest version below 1.3 with ECDHE suites.
	Groups []Group `json:"groups,omitempty"`
	// Note: why the version looked not offered when that was not a plain
	// refusal (a timeout, a malformed answer).
	Note string `json:"note,omitempty"`
}

// PostQuantum: is the hybrid X25519MLKEM768 offered and preferred?
type PostQuantum struct {
	Group   string `json:"group"`
	Offered bool   `json:"offered"`
	// SelectedWhenClientPrefers: offered first (as modern clients do),
	// the server picks it.
	SelectedWhenClientPrefers bool `json:"selected_when_client_prefers"`
	// Preferred: listed last after x25519, P-256, P-384 and P-521, the
	// server still picks it (its own preference).
	Preferred               bool   `json:"preferred"`
	ChosenWhenClientPrefers string `json:"chosen_when_client_prefers,omitempty"`
	ChosenWhenListedLast    string `json:"chosen_when_listed_last,omitempty"`
}

// Negotiated is the handshake Go's TLS client (offering everything it
// can) completed or attempted.
type Negotiated struct {
	Version Version `json:"version"`
	Suite   string  `json:"suite"`
	Group   string  `json:"group,omitempty"`
	Error   string  `json:"error,omitempty"`
}

// ClientAuth: does the server ask for, or insist on, a client certificate?
type ClientAuth struct {
	Requested bool `json:"requested"`
	// Required: the handshake fails without one. Known only when the
	// server asked; an optional request leaves it false.
	Required bool `json:"required"`
	// AcceptableCAs: the CA names the server listed (often none in mTLS
	// meshes, which verify against their own bundle).
	AcceptableCAs []string `json:"acceptable_cas,omitempty"`
	Evidence      string   `json:"evidence,omitempty"`
}

// Chain is the server's certificate chain and how it verified.
type Chain struct {
	Certificates []Certificate `json:"certificates"`
	// Trusted: the chain verifies to Bundle (the roots given).
	Trusted     bool   `json:"trusted"`
	Bundle      string `json:"bundle"`
	VerifyError string `json:"verify_error,omitempty"`

	// The name checks: the DNS name or IP (hostname) and the SPIFFE ID.
	Hostname      string `json:"hostname,omitempty"`
	HostnameMatch *bool  `json:"hostname_match,omitempty"`
	SPIFFEID      string `json:"spiffe_id,omitempty"` // the one expected
	SPIFFEIDMatch *bool  `json:"spiffe_id_match,omitempty"`

	OCSP *OCSP `json:"ocsp,omitempty"`
	// CRLs are the certificates checked against the CRLs they name
	// (Options.CheckCRLs).
	CRLs []CRL `json:"crls,omitempty"`
}

// Certificate describes one certificate of a chain.
type Certificate struct {
	Subject            string    `json:"subject"`
	Issuer             string    `json:"issuer"`
	Serial             string    `json:"serial"`
	SPIFFEID           string    `json:"spiffe_id,omitempty"`
	DNSNames           []string  `json:"dns_names,omitempty"`
	IPAddresses        []string  `json:"ip_addresses,omitempty"`
	NotBefore          time.Time `json:"not_before"`
	NotAfter           time.Time `json:"not_after"`
	KeyType            string    `json:"key_type"` // RSA, ECDSA, Ed25519, ...
	KeyBits            int       `json:"key_bits"`
	SignatureAlgorithm string    `json:"signature_algorithm"`
	IsCA               bool      `json:"is_ca,omitempty"`
	SelfSigned         bool      `json:"self_signed,omitempty"`
	SHA256             string    `json:"sha256"`
	OCSPServers        []string  `json:"ocsp_servers,omitempty"`
	CRLDistribution    []string  `json:"crl_distribution_points,omitempty"`
}

// OCSP is a stapled OCSP response.
type OCSP struct {
	Stapled    bool      `json:"stapled"`
	Status     string    `json:"status,omitempty"` // good, revoked, unknown
	ThisUpdate time.Time `json:"this_update,omitzero"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	Error      string    `json:"error,omitempty"` // unparsable or not signed by the issuer
}

// Offered reports whether the endpoint offers version v.
func (r *Result) Offered(v Version) bool {
	for _, p := range r.Protocols {
		if p.Version == v {
			return p.Offered
		}
	}
	return false
}
