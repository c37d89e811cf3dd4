package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"
	"strings"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// DenyList refuses identities before any policy is evaluated. It travels
// with the policy (Bundle) so revocation reaches every proxy over the same
// channel.
type DenyList struct {
	// SPIFFEIDs are refused exactly (spiffe://trust-domain/path).
	SPIFFEIDs []string `json:"spiffe_ids,omitempty"`
	// Serials are X.509 certificate serial numbers in hex (case, colons and
	// leading zeros do not matter: "0A:1b" == "a1b").
	Serials []string `json:"serials,omitempty"`
	// TaintedKeys are IDs of compromised CA keys (keyutil.CAKeyID: hex of the
	// first 20 bytes of the SHA-256 of the PKIX public key, which is also
	// the subject key identifier of ward's CA certificates). A peer whose
	// verified chain holds a certificate with one of these public keys is
	// refused, whatever its serial or SPIFFE ID (`ward ca taint` adds
	// them; case does not matter).
	TaintedKeys []string `json:"tainted_keys,omitempty"`
}

// denySet is a DenyList prepared for lookups.
type denySet struct {
	ids     map[string]struct{}
	serials map[string]struct{}
	keys    map[string]struct{}
}

// KeyIDLen is the length in hex digits of a CA key ID (20 bytes).
const KeyIDLen = 40

// NormalizeKeyID returns the canonical form (lower-case hex, 40 digits) of
// a CA key ID, or an error when s is not one.
func NormalizeKeyID(s string) (string, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if len(t) != KeyIDLen {
		return "", fmt.Errorf("tainted CA key ID %q has %d characters, want %d hex digits (see `ward ca show`)", s, len(t), KeyIDLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("tainted CA key ID %q is not hex (byte %d is %q); copy it from `ward ca show`", s, i, c)
		}
	}
	return t, nil
}

// NormalizeSerial returns the canonical form of a hex certificate serial
// (lower case, no colons, no leading zeros) or an error when s is not hex.
func NormalizeSerial(s string) (string, error) {
	t := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	t = strings.TrimPrefix(t, "0x")
	if t == "" {
		return "", fmt.Errorf("certificate serial %q is empty; give it in hex", s)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("certificate serial %q is not hex (byte %d is %q); give it in hex, colons allowed", s, i, c)
		}
	}
	t = strings.TrimLeft(t, "0")
	if t == "" {
		t = "0"
	}
	return t, nil
}

// SerialHex formats a certificate serial (x509.Certificate.SerialNumber) in
// the canonical hex form used by DenyList and Request.CertSerial.
func SerialHex(n *big.Int) string {
	if n == nil {
		return ""
	}
	return n.Text(16)
}

func (d DenyList) prepare() (*denySet, []Problem) {
	var probs []Problem
	ds := &denySet{ids: map[string]struct{}{}, serials: map[string]struct{}{}, keys: map[string]struct{}{}}
	for _, id := range d.SPIFFEIDs {
		if _, _, err := parseSPIFFEID(id); err != nil {
			probs = append(probs, Problem{File: "(deny-list)", Kind: "deny-list", Message: err.Error()})
			continue
		}
		ds.ids[id] = struct{}{}
	}
	for _, s := range d.Serials {
		n, err := NormalizeSerial(s)
		if err != nil {
			probs = append(probs, Problem{File: "(deny-list)", Kind: "deny-list", Message: err.Error()})
			continue
		}
		ds.serials[n] = struct{}{}
	}
	for _, k := range d.TaintedKeys {
		n, err := NormalizeKeyID(k)
		if err != nil {
			probs = append(probs, Problem{File: "(deny-list)", Kind: "deny-list", Message: err.Error()})
			continue
		}
		ds.keys[n] = struct{}{}
	}
	return ds, probs
}

// canonical returns the deny-list sorted and normalized (for storage and diffs).
func (d *denySet) canonical() DenyList {
	var out DenyList
	for id := range d.ids {
		out.SPIFFEIDs = append(out.SPIFFEIDs, id)
	}
	for s := range d.serials {
		out.Serials = append(out.Serials, s)
	}
	for k := range d.keys {
		out.TaintedKeys = append(out.TaintedKeys, k)
	}
	sort.Strings(out.SPIFFEIDs)
	sort.Strings(out.Serials)
	sort.Strings(out.TaintedKeys)
	return out
}

// Bundle is what the authority stores and pushes: one policy set version
// with its deny-list. It round-trips through JSON (Files are base64).
type Bundle struct {
	Version  uint64            `json:"version"`
	Files    map[string][]byte `json:"files"`
	DenyList DenyList          `json:"deny_list"`
	// Principals are the attributes of known workloads by SPIFFE ID (from
	// their registration entries), so that every enforcement point sees the
	// same labels and groups for a peer at a given policy version.
	Principals map[string]Principal `json:"principals,omitempty"`
	// RemoteDenyLists are the deny-lists federated trust domains published
	// for their own identities, by trust domain (remote.go): each refuses
	// only peers of its trust domain.
	RemoteDenyLists map[string]DenyList `json:"remote_deny_lists,omitempty"`
	// Services is the catalog of exported services by trust domain (this
	// one's and those federated authorities sent, services.go): proxies
	// resolve `service: name@td` with it, gateways their routes.
	Services map[string][]catalog.Service `json:"services,omitempty"`
}

// Principal is what the authority knows about one workload identity.
type Principal struct {
	Labels map[string]string `json:"labels,omitempty"`
	Groups []string          `json:"groups,omitempty"`
}

// MaxBundleJSON bounds the size of a bundle accepted by ParseBundle.
const MaxBundleJSON = 2 * MaxTotalSize

// MarshalBundle encodes b as JSON.
func MarshalBundle(b Bundle) ([]byte, error) {
	out, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode policy bundle version %d: %w", b.Version, err)
	}
	return out, nil
}

// ParseBundle decodes a JSON bundle. Unknown fields are refused so that a
// newer authority's bundle is not half-understood by an older proxy.
func ParseBundle(data []byte) (Bundle, error) {
	var b Bundle
	if len(data) > MaxBundleJSON {
		return Bundle{}, fmt.Errorf("policy bundle is %d bytes, more than the limit of %d", len(data), MaxBundleJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return Bundle{}, fmt.Errorf("decode policy bundle: %w (expected JSON with version, files, deny_list)", err)
	}
	if dec.More() {
		return Bundle{}, fmt.Errorf("decode policy bundle: trailing data after the JSON object")
	}
	// An empty list is no list: the same bundle whether a writer sent []
	// or left the field out (MarshalBundle leaves it out).
	for _, l := range []*[]string{&b.DenyList.SPIFFEIDs, &b.DenyList.Serials, &b.DenyList.TaintedKeys} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	return b, nil
}

// CompileBundle compiles b.Files against DefaultSchema and attaches its
// version and deny-list. Like Compile it is all or nothing.
func CompileBundle(b Bundle) (*Set, error) {
	return DefaultSchema().CompileBundle(b)
}

// CompileBundle is CompileBundle against schema s.
func (s *Schema) CompileBundle(b Bundle) (*Set, error) {
	set, err := s.Compile(b.Files)
	if err != nil {
		return nil, err
	}
	set, err = set.WithDenyList(b.DenyList)
	if err != nil {
		return nil, err
	}
	for id := range b.Principals {
		if _, _, err := parseSPIFFEID(id); err != nil {
			return nil, &CompileError{Problems: []Problem{{Kind: "principals", Message: fmt.Sprintf("principal %q: %v", id, err)}}}
		}
	}
	if set, err = set.withRemote(b.RemoteDenyLists); err != nil {
		return nil, err
	}
	if set, err = set.withServices(b.Services); err != nil {
		return nil, err
	}
	set.principals = b.Principals
	set.version = b.Version
	return set, nil
}

// WithDenyList returns a copy of s using deny-list d (s is unchanged; Sets
// are immutable). An invalid entry rejects the whole list.
func (s *Set) WithDenyList(d DenyList) (*Set, error) {
	ds, probs := d.prepare()
	if len(probs) > 0 {
		return nil, &CompileError{Problems: probs}
	}
	c := *s
	c.deny, c.cache = ds, newDecisionCache()
	return &c, nil
}

// WithVersion returns a copy of s labelled with version v.
func (s *Set) WithVersion(v uint64) *Set {
	c := *s
	c.version, c.cache = v, newDecisionCache()
	return &c
}

// parseSPIFFEID splits spiffe://td/path, checking the SPIFFE ID syntax
// (trust domain of [a-z0-9.-_], path segments of [A-Za-z0-9.-_], no empty,
// "." or ".." segments, no trailing slash, no query or fragment).
func parseSPIFFEID(id string) (td, path string, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", fmt.Errorf("SPIFFE ID %q must start with spiffe://", id)
	}
	td, path = rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		td, path = rest[:i], rest[i:]
	}
	if td == "" {
		return "", "", fmt.Errorf("SPIFFE ID %q has an empty trust domain", id)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return "", "", fmt.Errorf("SPIFFE ID %q: trust domain may only hold a-z 0-9 . - _", id)
		}
	}
	if path != "" {
		for rest := path[1:]; ; {
			seg, tail, more := strings.Cut(rest, "/")
			if seg == "" || seg == "." || seg == ".." {
				return "", "", fmt.Errorf("SPIFFE ID %q: path segments must be non-empty and not . or ..", id)
			}
			for i := 0; i < len(seg); i++ {
				c := seg[i]
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
					return "", "", fmt.Errorf("SPIFFE ID %q: path may only hold A-Z a-z 0-9 . - _ and /", id)
				}
			}
			if !more {
				break
			}
			rest = tail
		}
	}
	return td, path, nil
}
