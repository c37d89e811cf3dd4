package ca

import (
	"crypto/x509"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// KeyInfo describes one CA key for `ward ca show`. It holds no secret.
type KeyInfo struct {
	ID          string    `json:"id"`
	Kind        Kind      `json:"kind"`
	State       KeyState  `json:"state"`
	Parent      string    `json:"parent,omitempty"` // root ID of an intermediate
	InBundle    bool      `json:"in_bundle"`
	Serial      string    `json:"serial,omitempty"` // hex, X.509 kinds
	Subject     string    `json:"subject,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	ActivatedAt time.Time `json:"activated_at,omitzero"`
	RetiredAt   time.Time `json:"retired_at,omitzero"`
	TaintedAt   time.Time `json:"tainted_at,omitzero"`
	DropAfter   time.Time `json:"drop_after,omitzero"`
}

// Status is the CA's state as `ward ca show` prints it.
type Status struct {
	TrustDomain    string        `json:"trust_domain"`
	Initialized    bool          `json:"initialized"`
	BundleSequence uint64        `json:"bundle_sequence"`
	RefreshHint    time.Duration `json:"refresh_hint"`
	Revision       int64         `json:"revision"`
	Keys           []KeyInfo     `json:"keys"`
}

// State returns a description of every key (no private material).
func (c *CA) State() Status {
	v := c.view.Load()
	st := Status{TrustDomain: c.cfg.TrustDomain.Name(), RefreshHint: c.cfg.RefreshHint, Revision: v.rev}
	if v.state == nil {
		return st
	}
	st.Initialized = true
	st.BundleSequence = v.state.Sequence
	for _, k := range v.state.Keys {
		ki := KeyInfo{ID: k.ID, Kind: k.Kind, State: k.State, Parent: k.Parent, InBundle: k.inBundle(),
			CreatedAt: k.CreatedAt, NotBefore: k.NotBefore, NotAfter: k.NotAfter, ActivatedAt: k.ActivatedAt,
			RetiredAt: k.RetiredAt, TaintedAt: k.TaintedAt, DropAfter: k.DropAfter}
		if k.cert != nil {
			ki.Serial = k.cert.SerialNumber.Text(16)
			ki.Subject = k.cert.Subject.String()
		}
		st.Keys = append(st.Keys, ki)
	}
	return st
}

// TaintedKeyIDs returns the IDs of tainted keys; an SVID whose chain holds a
// tainted intermediate or root (or a JWT-SVID with a tainted kid) must be
// re-issued.
func (c *CA) TaintedKeyIDs() []string {
	v := c.view.Load()
	if v.state == nil {
		return nil
	}
	var ids []string
	for _, k := range v.state.Keys {
		if k.State == StateTainted {
			ids = append(ids, k.ID)
		}
	}
	return ids
}

// Bundle returns a copy of the trust bundle: roots that may still verify a
// live SVID as X.509 authorities, JWT keys by kid, the refresh hint and the
// sequence number (bumped on every change of the published keys). Marshal
// gives the SPIFFE bundle JSON. It returns ErrNotInitialized before Init.
func (c *CA) Bundle() (*spiffebundle.Bundle, error) {
	v := c.view.Load()
	if v.bundle == nil {
		return nil, ErrNotInitialized
	}
	return v.bundle.Clone(), nil
}

// X509Authorities returns the trust bundle's X.509 authorities (those of
// Bundle) without copying the bundle, for callers that verify a chain on
// every call (the Node API). The slice is the CA's own: read it, never
// modify it. A new bundle comes with a new slice.
func (c *CA) X509Authorities() ([]*x509.Certificate, error) {
	v := c.view.Load()
	if v.bundle == nil {
		return nil, ErrNotInitialized
	}
	return v.roots, nil
}

// TrustDomain returns the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.cfg.TrustDomain }

// ActiveIntermediate returns the certificate that signs X509-SVIDs now.
func (c *CA) ActiveIntermediate() (*x509.Certificate, error) {
	v := c.view.Load()
	if v.inter == nil {
		return nil, ErrNotInitialized
	}
	return v.inter.cert, nil
}
