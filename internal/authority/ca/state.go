package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Kind says what a CA key is used for.
type Kind string

const (
	// KindRoot is a self-signed root CA; roots are the X.509 authorities
	// published in the trust bundle.
	KindRoot Kind = "root"
	// KindIntermediate is an intermediate CA signed by a root; it signs
	// X509-SVIDs and travels in each SVID's chain, not in the bundle.
	KindIntermediate Kind = "intermediate"
	// KindJWT is a JWT-SVID signing key, published in the bundle by key ID.
	KindJWT Kind = "jwt"
)

// KeyState is a CA key's place in its lifecycle.
type KeyState string

const (
	// StatePrepared: created and (for roots and JWT keys) published in the
	// bundle, not yet signing.
	StatePrepared KeyState = "prepared"
	// StateActive: the one key of its kind that signs now.
	StateActive KeyState = "active"
	// StateRetired: no longer signs; kept (and published) until everything it
	// signed has expired.
	StateRetired KeyState = "retired"
	// StateTainted: compromised or distrusted; never signs and is removed from
	// the bundle at once.
	StateTainted KeyState = "tainted"
)

const stateVersion = 1

// persisted is the CA state as stored (one value, replaced with
// compare-and-swap). Private keys are PKCS#8 DER; the store the caller
// passes encrypts every value before it reaches the backend.
type persisted struct {
	Version     int          `json:"version"`
	TrustDomain string       `json:"trust_domain"`
	Sequence    uint64       `json:"sequence"`
	Keys        []*keyRecord `json:"keys"`
}

type keyRecord struct {
	ID          string    `json:"id"`
	Kind        Kind      `json:"kind"`
	State       KeyState  `json:"state"`
	Parent      string    `json:"parent,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	TaintedAt   time.Time `json:"tainted_at,omitzero"`
	// DropAfter: a retired key leaves the state (and the bundle) after this.
	DropAfter time.Time `json:"drop_after,omitzero"`
	Cert      []byte    `json:"cert,omitempty"` // DER, X.509 kinds only
	Key       []byte    `json:"key"`            // PKCS#8 DER
	PublicKey []byte    `json:"public_key"`     // PKIX DER

	// parsed, not persisted
	cert   *x509.Certificate
	signer crypto.Signer
}

func (k *keyRecord) inBundle() bool {
	if k.Kind == KindIntermediate {
		return false
	}
	return k.State == StatePrepared || k.State == StateActive || k.State == StateRetired
}

// clone returns a copy of the state whose records can be modified without
// touching s (byte slices and parsed objects are immutable and shared).
func (s *persisted) clone() *persisted {
	c := *s
	c.Keys = make([]*keyRecord, len(s.Keys))
	for i, k := range s.Keys {
		kk := *k
		c.Keys[i] = &kk
	}
	return &c
}

func (s *persisted) find(id string) *keyRecord {
	for _, k := range s.Keys {
		if k.ID == id {
			return k
		}
	}
	return nil
}

// one returns the single key of kind in state st (nil if none). For
// intermediates, parent restricts the search when non-empty.
func (s *persisted) one(kind Kind, st KeyState, parent string) *keyRecord {
	for _, k := range s.Keys {
		if k.Kind == kind && k.State == st && (parent == "" || k.Parent == parent) {
			return k
		}
	}
	return nil
}

func (s *persisted) remove(pred func(*keyRecord) bool) {
	out := s.Keys[:0:0]
	for _, k := range s.Keys {
		if !pred(k) {
			out = append(out, k)
		}
	}
	s.Keys = out
}

// bundleSet names what the bundle publishes, to detect changes that must
// bump the sequence number.
func (s *persisted) bundleSet() string {
	var ids []string
	for _, k := range s.Keys {
		if k.inBundle() {
			ids = append(ids, string(k.Kind)+":"+k.ID)
		}
	}
	sort.Strings(ids)
	b, _ := json.Marshal(ids)
	return string(b)
}

func decodeState(b []byte) (*persisted, error) {
	var s persisted
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode CA state: %w", err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("decode CA state: version %d not supported (this build reads %d)", s.Version, stateVersion)
	}
	for _, k := range s.Keys {
		if err := k.parse(); err != nil {
			return nil, err
		}
	}
	return &s, nil
}

func (k *keyRecord) parse() error {
	key, err := x509.ParsePKCS8PrivateKey(k.Key)
	if err != nil {
		return fmt.Errorf("decode CA state: private key of %s %s: malformed", k.Kind, k.ID)
	}
	sg, ok := key.(crypto.Signer)
	if !ok {
		return fmt.Errorf("decode CA state: private key of %s %s is not a signer", k.Kind, k.ID)
	}
	k.signer = sg
	if k.Kind != KindJWT {
		c, err := x509.ParseCertificate(k.Cert)
		if err != nil {
			return fmt.Errorf("decode CA state: certificate of %s %s: %w", k.Kind, k.ID, err)
		}
		k.cert = c
	}
	return nil
}
