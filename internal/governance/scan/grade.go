package scan

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Severity grades a finding (docs/scan.md, "Rubric").
type Severity int

const (
	Info Severity = iota
	Low
	Medium
	High
	Critical
)

var severityNames = []string{"info", "low", "medium", "high", "critical"}

func (s Severity) String() string {
	if s < Info || s > Critical {
		return fmt.Sprintf("severity(%d)", int(s))
	}
	return severityNames[s]
}

// MarshalText names the severity in JSON.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// ParseSeverity reads info, low, medium, high or critical.
func ParseSeverity(s string) (Severity, error) {
	if i := slices.Index(severityNames, strings.ToLower(s)); i >= 0 {
		return Severity(i), nil
	}
	return 0, fmt.Errorf("severity %q: use one of %s", s, strings.Join(severityNames, ", "))
}

// Finding is one graded observation about an endpoint.
type Finding struct {
	Rule     string   `json:"rule"`
	Severity Severity `json:"severity"`
	Title    string   `json:"title"`
	Evidence string   `json:"evidence"`
	Fix      string   `json:"fix,omitempty"`
}

// Rule is an entry of the rubric.
type Rule struct {
	ID       string
	Severity Severity
	Title    string
	Fix      string
}

// Rules is the rubric: every finding names one of these (docs/scan.md
// lists them with the reasons for their grades).
var Rules = []Rule{
	{"scan-error", High, "the endpoint could not be scanned", "check the address and that a TLS server listens there"},
	{"protocol-sslv3", Critical, "SSLv3 offered", "disable SSLv3 (POODLE; RFC 7568)"},
	{"protocol-tls10", High, "TLS 1.0 offered", "disable TLS 1.0 (RFC 8996)"},
	{"protocol-tls11", High, "TLS 1.1 offered", "disable TLS 1.1 (RFC 8996)"},
	{"protocol-no-tls13", Medium, "TLS 1.3 not offered", "enable TLS 1.3"},
	{"suite-null", Critical, "cipher suites without encryption (NULL)", "remove the NULL suites"},
	{"suite-anon", Critical, "anonymous cipher suites (no server authentication)", "remove the anonymous (aNULL) suites"},
	{"suite-export", Critical, "export-grade cipher suites", "remove the EXPORT suites"},
	{"suite-des", Critical, "single-DES cipher suites", "remove the DES suites"},
	{"suite-rc4", High, "RC4 cipher suites", "remove the RC4 suites (RFC 7465)"},
	{"suite-3des", High, "3DES cipher suites (64-bit blocks, Sweet32)", "remove the 3DES suites"},
	{"suite-md5", High, "cipher suites with an MD5 MAC", "remove the MD5 suites"},
	{"suite-legacy-cipher", Medium, "cipher suites with IDEA, SEED or RC2", "remove them"},
	{"suite-no-forward-secrecy", Medium, "cipher suites without forward secrecy (static RSA, DH or ECDH key exchange)", "offer only ECDHE (or DHE) suites"},
	{"suite-cbc", Low, "CBC-mode cipher suites", "prefer AEAD suites (AES-GCM, ChaCha20-Poly1305) only"},
	{"group-weak", Medium, "key-exchange groups below 112-bit security", "offer x25519, P-256 or stronger only"},
	{"pq-not-offered", Medium, "post-quantum hybrid X25519MLKEM768 not offered", "enable X25519MLKEM768 (Go 1.24+ and OpenSSL 3.5+ offer it by default)"},
	{"pq-not-preferred", Low, "post-quantum hybrid offered but not preferred by the server", "put X25519MLKEM768 first in the server's group list"},
	{"client-cert-required", Info, "client certificate required (mutual TLS)", ""},
	{"client-cert-optional", Info, "client certificate requested but not required", "require client certificates where only workloads connect"},
	{"client-cert-not-requested", Info, "no client certificate requested", "require client certificates where only workloads connect"},
	{"chain-missing", High, "no certificate could be read", "check the server's certificate configuration"},
	{"chain-untrusted", High, "certificate chain does not verify to the trust bundle", "serve a chain that verifies to the bundle (or scan with the right --bundle)"},
	{"chain-expired", Critical, "certificate expired", "renew the certificate"},
	{"chain-not-yet-valid", High, "certificate not yet valid", "check the issuer's and the server's clocks"},
	{"chain-expiring", Medium, "certificate expires soon", "renew or rotate it (an SVID that is not rotated at half its life points at the agent)"},
	{"key-weak", High, "weak certificate key", "use ECDSA P-256 or stronger, or RSA of 2048 bits or more"},
	{"signature-weak", High, "certificate signed with SHA-1 or MD5", "re-issue with SHA-256 or stronger"},
	{"hostname-mismatch", High, "certificate does not match the host name", "serve a certificate with that DNS or IP name, or scan with the right --server-name"},
	{"spiffe-id-mismatch", High, "certificate does not carry the expected SPIFFE ID", "check the workload's registration entry, or scan with the right --spiffe-id"},
	{"ocsp-revoked", Critical, "stapled OCSP response says the certificate is revoked", "replace the certificate"},
	{"ocsp-invalid", Medium, "stapled OCSP response unusable (malformed, wrongly signed or stale)", "fix the server's OCSP stapling"},
	{"ocsp-not-stapled", Info, "certificate names an OCSP responder but no response is stapled", "enable OCSP stapling"},
	{"crl-revoked", Critical, "certificate listed as revoked in the CRL it names", "replace the certificate (and find out why its issuer revoked it)"},
	{"crl-invalid", Medium, "CRL the certificate names is unusable (malformed, not signed by the issuer, or stale)", "publish a current CRL signed by the issuer at the URL the certificate names"},
	{"crl-unavailable", Low, "CRL the certificate names could not be fetched", "make the CRL distribution point reachable, or scan from where clients run"},
}

// RuleByID returns the rubric entry id.
func RuleByID(id string) (Rule, bool) {
	for _, r := range Rules {
		if r.ID == id {
			return r, true
		}
	}
	return Rule{}, false
}

// Worst is the highest severity among findings (Info when none).
func Worst(fs []Finding) Severity {
	w := Info
	for _, f := range fs {
		w = max(w, f.Severity)
	}
	return w
}

// grade applies the rubric to a result: findings worst first, in the
// rubric's order within a severity.
func grade(r *Result, opts Options) []Finding {
	out := gradeAll(r, opts)
	slices.SortStableFunc(out, func(a, b Finding) int { return int(b.Severity) - int(a.Severity) })
	return out
}

func gradeAll(r *Result, opts Options) []Finding {
	var out []Finding
	add := func(id, evidence string) {
		rule, _ := RuleByID(id)
		out = append(out, Finding{Rule: id, Severity: rule.Severity, Title: rule.Title, Evidence: evidence, Fix: rule.Fix})
	}
	if r.Error != "" {
		add("scan-error", r.Error)
		return out
	}
	for _, p := range []struct {
		v  Version
		id string
	}{{SSL30, "protocol-sslv3"}, {TLS10, "protocol-tls10"}, {TLS11, "protocol-tls11"}} {
		if r.Offered(p.v) {
			add(p.id, p.v.String()+" accepted by the server")
		}
	}
	anyOffered := false
	for _, p := range r.Protocols {
		anyOffered = anyOffered || p.Offered
	}
	if anyOffered && !r.Offered(TLS13) {
		add("protocol-no-tls13", "a TLS 1.3 ClientHello was refused")
	}

	// Suites: one finding per rule, naming each suite with its versions.
	bad := map[string]map[string][]string{} // rule -> suite -> versions
	note := func(rule string, s Suite, v Version) {
		if bad[rule] == nil {
			bad[rule] = map[string][]string{}
		}
		bad[rule][s.Name] = append(bad[rule][s.Name], v.String())
	}
	for _, p := range r.Protocols {
		for _, s := range p.Suites {
			switch {
			case s.Cipher == "NULL":
				note("suite-null", s, p.Version)
			case s.Auth == "anon":
				note("suite-anon", s, p.Version)
			}
			if s.Export {
				note("suite-export", s, p.Version)
			}
			switch {
			case strings.HasPrefix(s.Cipher, "DES") && !s.Export:
				note("suite-des", s, p.Version)
			case strings.HasPrefix(s.Cipher, "RC4"):
				note("suite-rc4", s, p.Version)
			case strings.HasPrefix(s.Cipher, "3DES"):
				note("suite-3des", s, p.Version)
			case strings.HasPrefix(s.Cipher, "IDEA"), strings.HasPrefix(s.Cipher, "SEED"), strings.HasPrefix(s.Cipher, "RC2"):
				note("suite-legacy-cipher", s, p.Version)
			}
			if s.MAC == "MD5" {
				note("suite-md5", s, p.Version)
			}
			if !s.Forward && s.Auth != "anon" && s.KeyExchange != "any" && !strings.Contains(s.KeyExchange, "PSK") && s.KeyExchange != "SRP" {
				note("suite-no-forward-secrecy", s, p.Version)
			}
			if strings.HasSuffix(s.Cipher, "_CBC") && s.Cipher != "NULL" {
				note("suite-cbc", s, p.Version)
			}
		}
		for _, g := range p.Groups {
			if g.Bits < 112 && !g.Hybrid {
				bad["group-weak"] = mergeNote(bad["group-weak"], g.Name, p.Version)
			}
		}
	}
	for _, rule := range Rules {
		m := bad[rule.ID]
		if len(m) == 0 {
			continue
		}
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		slices.Sort(names)
		var ev []string
		for _, n := range names {
			ev = append(ev, fmt.Sprintf("%s (%s)", n, strings.Join(m[n], ", ")))
		}
		add(rule.ID, strings.Join(ev, "; "))
	}

	if r.Offered(TLS13) {
		pq := r.PostQuantum
		switch {
		case !pq.Offered:
			add("pq-not-offered", "X25519MLKEM768 alone in a TLS 1.3 ClientHello was refused")
		case !pq.Preferred:
			add("pq-not-preferred", fmt.Sprintf("listed after x25519, P-256, P-384 and P-521, the server chose %s", orNone(pq.ChosenWhenListedLast)))
		}
	}

	ca := r.ClientAuth
	switch {
	case ca.Required:
		add("client-cert-required", ca.Evidence)
	case ca.Requested:
		add("client-cert-optional", ca.Evidence)
	case r.Chain != nil:
		add("client-cert-not-requested", "no CertificateRequest in the handshake")
	}

	ch := r.Chain
	if ch == nil {
		if anyOffered {
			add("chain-missing", "no handshake reached the server's Certificate message")
		}
		return out
	}
	if !ch.Trusted {
		add("chain-untrusted", fmt.Sprintf("against %s: %s", ch.Bundle, ch.VerifyError))
	}
	now := opts.Now()
	for i, c := range ch.Certificates {
		what := "leaf"
		if i > 0 {
			what = fmt.Sprintf("chain[%d]", i)
		}
		who := fmt.Sprintf("%s %q", what, certName(c))
		life := c.NotAfter.Sub(c.NotBefore)
		left := c.NotAfter.Sub(now)
		switch {
		case left <= 0:
			add("chain-expired", fmt.Sprintf("%s expired %s (%s ago)", who, c.NotAfter.Format(time.RFC3339), roundDur(-left)))
		case now.Before(c.NotBefore):
			add("chain-not-yet-valid", fmt.Sprintf("%s valid from %s", who, c.NotBefore.Format(time.RFC3339)))
		case left < expiringThreshold(life):
			add("chain-expiring", fmt.Sprintf("%s expires %s (in %s, %d%% of its %s lifetime left)", who,
				c.NotAfter.Format(time.RFC3339), roundDur(left), int(100*left/max(life, 1)), roundDur(life)))
		}
		switch {
		case strings.HasPrefix(c.KeyType, "RSA") && c.KeyBits < 2048,
			strings.HasPrefix(c.KeyType, "ECDSA") && c.KeyBits < 256,
			c.KeyType == "DSA":
			add("key-weak", fmt.Sprintf("%s has a %s key of %d bits", who, c.KeyType, c.KeyBits))
		}
		sig := strings.ToUpper(c.SignatureAlgorithm)
		if !c.SelfSigned && (strings.Contains(sig, "SHA1") || strings.Contains(sig, "MD5") || strings.Contains(sig, "MD2")) {
			add("signature-weak", fmt.Sprintf("%s is signed with %s", who, c.SignatureAlgorithm))
		}
	}
	leaf := ch.Certificates[0]
	if ch.HostnameMatch != nil && !*ch.HostnameMatch {
		add("hostname-mismatch", fmt.Sprintf("%q is not among the leaf's names (DNS %v, IP %v)", ch.Hostname, leaf.DNSNames, leaf.IPAddresses))
	}
	if ch.SPIFFEIDMatch != nil && !*ch.SPIFFEIDMatch {
		add("spiffe-id-mismatch", fmt.Sprintf("expected %s, the leaf has %s", ch.SPIFFEID, orNone(leaf.SPIFFEID)))
	}
	switch o := ch.OCSP; {
	case o != nil && o.Error != "":
		add("ocsp-invalid", o.Error)
	case o != nil && o.Status == "revoked":
		add("ocsp-revoked", "revoked at "+o.RevokedAt.Format(time.RFC3339))
	case o != nil && !o.NextUpdate.IsZero() && now.After(o.NextUpdate):
		add("ocsp-invalid", "stale: next update was due "+o.NextUpdate.Format(time.RFC3339))
	case o == nil && len(leaf.OCSPServers) > 0:
		add("ocsp-not-stapled", "the leaf names "+strings.Join(leaf.OCSPServers, ", "))
	}
	for _, c := range ch.CRLs {
		who := "the leaf"
		if c.Certificate > 0 {
			who = fmt.Sprintf("certificate %d of the chain", c.Certificate)
		}
		if c.Certificate < len(ch.Certificates) {
			who += " (" + ch.Certificates[c.Certificate].Subject + ", serial " + ch.Certificates[c.Certificate].Serial + ")"
		}
		switch {
		case c.Status == "revoked":
			add("crl-revoked", fmt.Sprintf("%s is listed in %s, revoked at %s", who, c.URL, c.RevokedAt.Format(time.RFC3339)))
		case c.Unavailable:
			add("crl-unavailable", fmt.Sprintf("%s names %s: %s", who, c.URL, c.Error))
		case c.Error != "":
			add("crl-invalid", fmt.Sprintf("%s names %s: %s", who, c.URL, c.Error))
		}
	}
	return out
}

func mergeNote(m map[string][]string, name string, v Version) map[string][]string {
	if m == nil {
		m = map[string][]string{}
	}
	m[name] = append(m[name], v.String())
	return m
}

// expiringThreshold: a certificate "expires soon" when less than a fifth
// of its lifetime is left, and never more than 30 days ahead (an SVID of
// one hour: 12 minutes; a 90-day certificate: 18 days; a year: 30 days).
func expiringThreshold(life time.Duration) time.Duration {
	return min(life/5, 30*24*time.Hour)
}

func certName(c Certificate) string {
	switch {
	case c.SPIFFEID != "":
		return c.SPIFFEID
	case c.Subject != "":
		return c.Subject
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	}
	return c.Serial
}

func roundDur(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Second).String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
