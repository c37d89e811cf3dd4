package nodeapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"reflect"
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
	if _, ok := c.get(raw, chainSum(raw), anchors, now); ok {
		t.Fatal("hit in an empty cache")
	}
	c.put(raw, chainSum(raw), anchors, id, chains[0])
	if got, ok := c.get(raw, chainSum(raw), anchors, now); !ok || got != id {
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
	if _, ok := c.get(raw, chainSum(raw), copies, now); !ok {
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
		if _, ok := c.get(miss.raw, chainSum(miss.raw), miss.anchors, miss.now); ok {
			t.Errorf("%s: hit", name)
		}
	}
	// Bounded: filling it past the limit starts over.
	for i := range maxVerifiedSVIDs + 10 {
		leaf := [][]byte{fmt.Appendf(nil, "leaf-%d", i)}
		c.put(leaf, chainSum(leaf), anchors, id, chains[0])
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

// TestSVIDCacheKeepsNoPresentedPadding: a client holding a live SVID
// presents it with a quarter megabyte of extra certificates, different on
// every connection (the Certificate message allows 256 KiB). An entry
// keeps only its leaf and a digest of the chain, not the padding; the
// digest still tells every other chain apart (a byte changed in the
// padding, the padding split differently).
func TestSVIDCacheKeepsNoPresentedPadding(t *testing.T) {
	h := newHarness(t)
	svid := h.caSigned(t, "/app")
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	anchors := b.X509Authorities()
	leafDER := svid.Certificates[0].Raw
	var base [][]byte
	for _, c := range svid.Certificates {
		base = append(base, c.Raw)
	}
	pad := make([]byte, 250<<10)
	with := func(extra ...[]byte) [][]byte { return append(append([][]byte(nil), base...), extra...) }
	raw := with(pad[:100<<10], pad[100<<10:])
	id, chains, err := x509svid.ParseAndVerify(base, b, x509svid.WithTime(h.clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	var c svidCache
	now := h.clock.Now()
	c.put(raw, chainSum(raw), anchors, id, chains[0])
	if _, ok := c.get(raw, chainSum(raw), anchors, now); !ok {
		t.Fatal("the same chain missed")
	}
	for k, v := range c.m {
		if len(k) != len(leafDER) || len(v.anchors) != len(anchors) {
			t.Fatalf("an entry keeps %d bytes of key and %d anchors", len(k), len(v.anchors))
		}
		// Whatever byte slices the entry holds (beside the anchors,
		// which are the CA's own) stay far below the padding.
		held := 0
		e := reflect.ValueOf(v).Elem()
		for i := range e.NumField() {
			f := e.Field(i)
			switch {
			case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Uint8:
				held += f.Len()
			case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Slice:
				for j := range f.Len() {
					held += f.Index(j).Len()
				}
			}
		}
		if held > 16<<10 {
			t.Fatalf("an entry keeps %d KiB of the presented chain", held>>10)
		}
	}
	changed := bytes.Clone(pad)
	changed[200<<10] = 1
	for name, other := range map[string][][]byte{
		"a byte of the padding changed": with(changed[:100<<10], changed[100<<10:]),
		"the padding split elsewhere":   with(pad[:100<<10+1], pad[100<<10+1:]),
		"the padding joined":            with(pad),
	} {
		if _, ok := c.get(other, chainSum(other), anchors, now); ok {
			t.Errorf("%s: hit", name)
		}
	}
}
