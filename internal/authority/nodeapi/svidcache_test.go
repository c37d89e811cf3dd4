package nodeapi

import (
	"context"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// TestSVIDCacheMatchesOnlyTheVerifiedChainAnchorsAndTime: a hit needs the
// same chain byte for byte, the same anchors and a time inside the
// validity of every certificate of the verified chain.
func TestSVIDCacheMatchesOnlyTheVerifiedChainAnchorsAndTime(t *testing.T) {
	h := newHarness(t)
	svid := h.caSigned(t, "/app")
	var raw [][]byte
	for _, c := range svid.Certificates {
		raw = append(raw, c.Raw)
	}
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	anchors := b.X509Authorities()
	id, chains, err := x509svid.ParseAndVerify(raw, b, x509svid.WithTime(h.clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	var c svidCache
	now := h.clock.Now()
	if _, ok := c.get(raw, anchors, now); ok {
		t.Fatal("hit in an empty cache")
	}
	c.put(raw, anchors, id, chains[0])
	if got, ok := c.get(raw, anchors, now); !ok || got != id {
		t.Fatalf("verified chain: %v %v", got, ok)
	}
	// The same anchors as other *x509.Certificate values still match.
	var copies []*x509.Certificate
	for _, a := range anchors {
		cp, err := x509.ParseCertificate(a.Raw)
		if err != nil {
			t.Fatal(err)
		}
		copies = append(copies, cp)
	}
	if _, ok := c.get(raw, copies, now); !ok {
		t.Fatal("equal anchors missed")
	}
	leaf := svid.Certificates[0]
	minTo := leaf.NotAfter
	for _, cert := range chains[0] {
		if cert.NotAfter.Before(minTo) {
			minTo = cert.NotAfter
		}
	}
	for name, miss := range map[string]struct {
		raw     [][]byte
		anchors []*x509.Certificate
		now     time.Time
	}{
		"another anchor set":       {raw, append(append([]*x509.Certificate(nil), anchors...), leaf), now},
		"no anchors":               {raw, nil, now},
		"another anchor":           {raw, []*x509.Certificate{leaf}, now},
		"after the leaf expired":   {raw, anchors, minTo.Add(time.Nanosecond)},
		"before the leaf is valid": {raw, anchors, leaf.NotBefore.Add(-time.Nanosecond)},
		"an extra certificate":     {append(append([][]byte(nil), raw...), leaf.Raw), anchors, now},
		"the leaf alone":           {raw[:1], anchors, now},
		"a changed intermediate":   {[][]byte{raw[0], append(append([]byte(nil), raw[1]...), 0)}, anchors, now},
		"nothing":                  {nil, anchors, now},
	} {
		if _, ok := c.get(miss.raw, miss.anchors, miss.now); ok {
			t.Errorf("%s: hit", name)
		}
	}
	// Bounded: filling it past the limit starts over.
	for i := range maxVerifiedSVIDs + 10 {
		c.put([][]byte{fmt.Appendf(nil, "leaf-%d", i)}, anchors, id, chains[0])
		if n := len(c.m); n > maxVerifiedSVIDs {
			t.Fatalf("%d entries", n)
		}
	}
}

// TestCachedChainStillExpiresOnAnOpenConnection runs the attack on the
// cache: a workload keeps its connection open past its SVID's expiry (or
// across a change of the bundle) and calls again. Expiry must refuse it as
// before, and a bundle change must verify the chain again.
func TestCachedChainStillExpiresOnAnOpenConnection(t *testing.T) {
	k := newKMSHarness(t)
	ctx := context.Background()
	if _, err := k.kms.Create(ctx, "k", "internal", ""); err != nil {
		t.Fatal(err)
	}
	k.apply(t, `@id("p") permit(principal == Workload::"spiffe://`+testTD.Name()+`/app", action == Action::"kms:encrypt", resource == Key::"k");`)
	svid := k.caSigned(t, "/app")
	c := k.workloadKMS(t, svid)
	req := &wardv1.EncryptRequest{Key: "k", Plaintext: []byte("x")}
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err = c.Encrypt(ctx, req); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	leaf := string(svid.Certificates[0].Raw)
	entry := func() *verifiedSVID {
		k.srv.verified.mu.RLock()
		defer k.srv.verified.mu.RUnlock()
		return k.srv.verified.m[leaf]
	}
	first := entry()
	if first == nil {
		t.Fatal("the verified chain was not cached")
	}
	if _, err := c.Encrypt(ctx, req); err != nil || entry() != first {
		t.Fatalf("second call on the connection: %v (re-verified: %v)", err, entry() != first)
	}
	// A change of the bundle (a prepared root joins it) is a miss: the
	// chain is verified again against the new anchors.
	if err := k.ca.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Encrypt(ctx, req); err != nil {
		t.Fatalf("after the bundle changed: %v", err)
	}
	b, _ := k.ca.Bundle()
	if e := entry(); e == first || len(e.anchors) != len(b.X509Authorities()) {
		t.Fatal("the chain was not verified again after the bundle changed")
	}
	// Past the SVID's expiry the open connection is refused, cached or not.
	k.clock.Advance(svid.Certificates[0].NotAfter.Sub(k.clock.Now()) + time.Second)
	if _, err := c.Encrypt(ctx, req); code(err) != codes.Unauthenticated {
		t.Fatalf("expired SVID on an open connection: %v", err)
	}
}
