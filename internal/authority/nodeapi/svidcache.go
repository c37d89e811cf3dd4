package nodeapi

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxVerifiedSVIDs bounds the verified-chain cache. Only chains that
// verified against the CA's bundle get in (so only holders of a live SVID
// of this trust domain add entries); when full it is emptied and refills
// from the calls that follow.
const maxVerifiedSVIDs = 4096

// svidCache remembers client chains verifySVID accepted, so that the calls
// of an open connection (authenticate verifies the chain on every call, to
// apply expiry and bundle changes to connections that stay open) do not
// redo the ECDSA signature checks of the same chain each time: ~200 µs of
// CPU per call, three quarters of a workload KMS call over mTLS.
//
// Verifying a chain depends only on the chain's bytes, the trust anchors and
// the time, so a hit needs all three to match what was verified: the whole
// presented chain (by its length-prefixed SHA-256), the very same anchors (the bundle's X.509
// authorities, in the same order: any change of the bundle is a miss) and a
// time inside every certificate's validity of the chain that verified.
// Anything else (taint, agent authorization) is still checked on every call
// by authenticate, after verifySVID.
type svidCache struct {
	mu sync.RWMutex
	m  map[string]*verifiedSVID // by the leaf's DER
}

type verifiedSVID struct {
	// sum digests the presented chain (chainSum), not the chain itself:
	// a client may present up to 256 KiB of extra certificates the
	// verification never uses, which an entry would otherwise keep.
	sum      [32]byte
	anchors  []*x509.Certificate // the X.509 authorities it verified against
	id       spiffeid.ID
	from, to time.Time // every certificate of the verified chain is valid in [from, to]
}

// get returns the ID of raw (whose chainSum is sum) if it verified against
// exactly anchors and now is inside its validity.
func (c *svidCache) get(raw [][]byte, sum [32]byte, anchors []*x509.Certificate, now time.Time) (spiffeid.ID, bool) {
	if len(raw) == 0 {
		return spiffeid.ID{}, false
	}
	c.mu.RLock()
	v := c.m[string(raw[0])]
	c.mu.RUnlock()
	if v == nil || now.Before(v.from) || now.After(v.to) || sum != v.sum ||
		!slices.EqualFunc(v.anchors, anchors, func(a, b *x509.Certificate) bool { return a == b || bytes.Equal(a.Raw, b.Raw) }) {
		return spiffeid.ID{}, false
	}
	return v.id, true
}

// put records that raw (whose chainSum is sum) verified as id against
// anchors with verified as the chain that verified it (leaf to root).
func (c *svidCache) put(raw [][]byte, sum [32]byte, anchors []*x509.Certificate, id spiffeid.ID, verified []*x509.Certificate) {
	if len(raw) == 0 || len(verified) == 0 {
		return
	}
	v := &verifiedSVID{id: id, sum: sum, anchors: slices.Clone(anchors), from: verified[0].NotBefore, to: verified[0].NotAfter}
	for _, cert := range verified[1:] {
		if cert.NotBefore.After(v.from) {
			v.from = cert.NotBefore
		}
		if cert.NotAfter.Before(v.to) {
			v.to = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxVerifiedSVIDs {
		c.m = make(map[string]*verifiedSVID)
	}
	c.m[string(raw[0])] = v // a copy of the leaf's bytes
}

// chainSum is a SHA-256 of the certificates of raw, each length-prefixed
// (no two chains share an encoding).
func chainSum(raw [][]byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, r := range raw {
		binary.BigEndian.PutUint64(n[:], uint64(len(r)))
		h.Write(n[:])
		h.Write(r)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}
