package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/testutil/benchcpu"
	"github.com/wardproject/ward/internal/testutil/clock"
)

func sign(t testing.TB, c *CA) []*x509.Certificate {
	t.Helper()
	chain, err := c.SignX509SVID(context.Background(), SVIDRequest{ID: wid("/w"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func verifies(c *CA, chain []*x509.Certificate, at time.Time) error {
	b, err := c.Bundle()
	if err != nil {
		return err
	}
	_, _, err = x509svid.Verify(chain, b.X509Bundle(), x509svid.WithTime(at))
	return err
}

func activeID(c *CA, kind Kind) string {
	for _, k := range c.State().Keys {
		if k.Kind == kind && k.State == StateActive {
			return k.ID
		}
	}
	return ""
}

func TestRotate(t *testing.T) {
	ctx := context.Background()
	c, _ := initCA(t, Config{}, nil)
	oldInter, oldJWT := activeID(c, KindIntermediate), activeID(c, KindJWT)
	old := sign(t, c)
	seq0, _ := mustBundle(t, c).SequenceNumber()
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if activeID(c, KindIntermediate) == oldInter || activeID(c, KindJWT) == oldJWT {
		t.Fatal("Rotate did not change the active keys")
	}
	for _, id := range []string{oldInter, oldJWT} {
		var found bool
		for _, k := range c.State().Keys {
			if k.ID == id {
				found = true
				maxTTL := 24 * time.Hour // MaxSVIDTTL
				if k.Kind == KindJWT {
					maxTTL = time.Hour // MaxJWTSVIDTTL
				}
				// Kept until the last possible SVID expired, plus PrepareAhead
				// for authorities that have not reloaded yet.
				if want := k.RetiredAt.Add(maxTTL + 30*time.Minute); k.State != StateRetired || !k.DropAfter.Equal(want) {
					t.Errorf("old %s key %s: state %s drop_after %s, want %s", k.Kind, id, k.State, k.DropAfter, want)
				}
			}
		}
		if !found {
			t.Errorf("old key %s vanished at once", id)
		}
	}
	fresh := sign(t, c)
	if fresh[1].Equal(old[1]) {
		t.Error("new SVID signed by the old intermediate")
	}
	now := time.Now()
	for name, chain := range map[string][]*x509.Certificate{"old": old, "new": fresh} {
		if err := verifies(c, chain, now); err != nil {
			t.Errorf("%s SVID does not verify after rotation: %v", name, err)
		}
	}
	// The retired JWT key stays published: the sequence moved (new key in),
	// and both kids are present.
	b := mustBundle(t, c)
	if seq, _ := b.SequenceNumber(); seq == seq0 {
		t.Error("sequence not bumped by a JWT key rotation")
	}
	if !b.HasJWTAuthority(oldJWT) || !b.HasJWTAuthority(activeID(c, KindJWT)) {
		t.Error("bundle lacks the old or new JWT key")
	}
}

func TestRootRotation(t *testing.T) {
	ctx := context.Background()
	c, _ := initCA(t, Config{}, nil)
	oldRoot := activeID(c, KindRoot)
	old := sign(t, c)
	if err := c.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.PrepareRoot(ctx); err != nil { // no second prepared root
		t.Fatal(err)
	}
	if n := count(c, KindRoot, StatePrepared); n != 1 {
		t.Fatalf("%d prepared roots", n)
	}
	b := mustBundle(t, c)
	if len(b.X509Authorities()) != 2 {
		t.Fatalf("prepared root not published: %d authorities", len(b.X509Authorities()))
	}
	// Still signing under the old root while the new one propagates.
	if mid := sign(t, c); mid[1].CheckSignatureFrom(b.X509Authorities()[0]) != nil && activeID(c, KindRoot) != oldRoot {
		t.Error("prepared root used before activation")
	}
	if err := c.RotateRoot(ctx); err != nil {
		t.Fatal(err)
	}
	newRoot := activeID(c, KindRoot)
	if newRoot == oldRoot {
		t.Fatal("root not rotated")
	}
	fresh := sign(t, c)
	var newRootCert *x509.Certificate
	for _, r := range mustBundle(t, c).X509Authorities() {
		if id, _ := keyutil.CAKeyID(r.PublicKey); id == newRoot {
			newRootCert = r
		}
	}
	if newRootCert == nil || fresh[1].CheckSignatureFrom(newRootCert) != nil {
		t.Fatal("new SVID's intermediate is not signed by the new root")
	}
	now := time.Now()
	if err := verifies(c, old, now); err != nil {
		t.Errorf("SVID under the old root rejected: %v", err)
	}
	if err := verifies(c, fresh, now); err != nil {
		t.Errorf("SVID under the new root rejected: %v", err)
	}
	// The old root leaves only once its intermediates' SVIDs expired.
	if err := c.Tick(ctx, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(mustBundle(t, c).X509Authorities()) != 2 {
		t.Error("old root dropped while its SVIDs may be live")
	}
	if err := c.Tick(ctx, now.Add(25*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if len(mustBundle(t, c).X509Authorities()) != 1 {
		t.Error("old root kept after everything it signed expired")
	}
}

func TestTaint(t *testing.T) {
	ctx := context.Background()
	t.Run("intermediate", func(t *testing.T) {
		c, _ := initCA(t, Config{}, nil)
		id := activeID(c, KindIntermediate)
		if len(c.CRLs()) != 0 {
			t.Fatal("CRL before any taint")
		}
		if err := c.Taint(ctx, id); err != nil {
			t.Fatal(err)
		}
		if activeID(c, KindIntermediate) == id || count(c, KindIntermediate, StateTainted) != 1 {
			t.Fatal("tainted intermediate still active")
		}
		if ids := c.TaintedKeyIDs(); len(ids) != 1 || ids[0] != id {
			t.Errorf("TaintedKeyIDs = %v", ids)
		}
		if chain := sign(t, c); chain[1].Equal(mustCert(t, c, id)) {
			t.Error("tainted intermediate still signs")
		}
		// The root publishes a CRL revoking the tainted intermediate.
		crls := c.CRLs()
		if len(crls) != 1 {
			t.Fatalf("%d CRLs, want 1", len(crls))
		}
		crl, err := x509.ParseRevocationList(crls[0])
		if err != nil {
			t.Fatal(err)
		}
		root := mustCert(t, c, activeID(c, KindRoot))
		if err := crl.CheckSignatureFrom(root); err != nil {
			t.Fatalf("CRL not signed by the root: %v", err)
		}
		tainted := mustCert(t, c, id)
		if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(tainted.SerialNumber) != 0 ||
			crl.RevokedCertificateEntries[0].ReasonCode != crlReasonCACompromise {
			t.Fatalf("CRL entries %+v", crl.RevokedCertificateEntries)
		}
		if !crl.NextUpdate.After(crl.ThisUpdate) {
			t.Error("CRL NextUpdate not after ThisUpdate")
		}
		rev := c.State().Revision
		if err := c.Taint(ctx, id); err != nil || c.State().Revision != rev {
			t.Errorf("second taint: %v, revision moved: %v", err, c.State().Revision != rev)
		}
	})
	t.Run("root", func(t *testing.T) {
		c, _ := initCA(t, Config{}, nil)
		old := sign(t, c)
		id := activeID(c, KindRoot)
		seq0, _ := mustBundle(t, c).SequenceNumber()
		if err := c.Taint(ctx, id); err != nil {
			t.Fatal(err)
		}
		b := mustBundle(t, c)
		if seq, _ := b.SequenceNumber(); seq <= seq0 {
			t.Error("sequence not bumped")
		}
		if len(b.X509Authorities()) != 1 {
			t.Fatalf("bundle has %d roots", len(b.X509Authorities()))
		}
		if err := verifies(c, old, time.Now()); err == nil {
			t.Error("SVID under the tainted root still verifies")
		}
		if err := verifies(c, sign(t, c), time.Now()); err != nil {
			t.Errorf("fresh SVID does not verify: %v", err)
		}
		if count(c, KindIntermediate, StateTainted) != 1 {
			t.Error("the tainted root's intermediate is not tainted")
		}
	})
	t.Run("jwt", func(t *testing.T) {
		c, _ := initCA(t, Config{}, nil)
		id := activeID(c, KindJWT)
		if err := c.Taint(ctx, id); err != nil {
			t.Fatal(err)
		}
		b := mustBundle(t, c)
		if b.HasJWTAuthority(id) || len(b.JWTAuthorities()) != 1 {
			t.Error("tainted JWT key still published")
		}
	})
	t.Run("unknown", func(t *testing.T) {
		c, _ := initCA(t, Config{}, nil)
		rev := c.State().Revision
		if err := c.Taint(ctx, "nope"); !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("err = %v", err)
		}
		if c.State().Revision != rev {
			t.Error("failed taint changed the state")
		}
	})
}

func mustCert(t *testing.T, c *CA, id string) *x509.Certificate {
	for _, k := range c.view.Load().state.Keys {
		if k.ID == id {
			return k.cert
		}
	}
	t.Fatalf("no key %s", id)
	return nil
}

// TestScheduleSimulation runs the schedule over two root lifetimes in
// refresh-hint steps and checks the promises at every step: one active key of
// each kind; every SVID and JWT-SVID issued so far verifies against the
// current bundle until it expires; no root or JWT key signs before it has
// been published for PrepareAhead.
func TestScheduleSimulation(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.At(start)
	cfg := Config{SVIDTTL: time.Hour, MaxSVIDTTL: time.Hour, IntermediateTTL: 6 * time.Hour,
		JWTSVIDTTL: 30 * time.Minute, MaxJWTSVIDTTL: time.Hour, JWTKeyTTL: 6 * time.Hour,
		RootTTL: 12 * time.Hour, RefreshHint: 5 * time.Minute, PrepareAhead: 30 * time.Minute}
	c, _ := initCA(t, cfg, clk.Now)
	type jwtIssued struct {
		tok *jwt.JSONWebToken
		exp time.Time
		kid string
	}
	var x509s [][]*x509.Certificate
	var jwts []jwtIssued
	published := map[string]time.Time{} // root / jwt key ID -> first seen in bundle
	markPublished := func(now time.Time) {
		b := mustBundle(t, c)
		for _, r := range b.X509Authorities() {
			id, _ := keyutil.CAKeyID(r.PublicKey)
			if _, ok := published[id]; !ok {
				published[id] = now
			}
		}
		for kid := range b.JWTAuthorities() {
			if _, ok := published[kid]; !ok {
				published[kid] = now
			}
		}
	}
	markPublished(start)
	seenInter, seenRoots, seenJWT := map[string]bool{}, map[string]bool{}, map[string]bool{}
	firstRoot := activeID(c, KindRoot)
	for now := start; now.Before(start.Add(30 * time.Hour)); now = now.Add(cfg.RefreshHint) {
		clk.Set(now)
		if err := c.Tick(ctx, now); err != nil {
			t.Fatalf("Tick at %s: %v", now.Sub(start), err)
		}
		for _, kind := range []Kind{KindRoot, KindIntermediate, KindJWT} {
			if n := count(c, kind, StateActive); n != 1 {
				t.Fatalf("at %s: %d active %s keys", now.Sub(start), n, kind)
			}
		}
		markPublished(now)
		chain := sign(t, c)
		x509s = append(x509s, chain)
		seenInter[activeID(c, KindIntermediate)] = true
		rootID := activeID(c, KindRoot)
		seenRoots[rootID] = true
		if rootID != firstRoot && now.Sub(published[rootID]) < cfg.PrepareAhead {
			t.Fatalf("root %s signs %s after publication", rootID, now.Sub(published[rootID]))
		}
		js, err := c.SignJWTSVID(ctx, wid("/w"), []string{"aud"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		seenJWT[js.KeyID] = true
		if js.KeyID != activeID(c, KindJWT) {
			t.Fatal("JWT not signed by the active key")
		}
		if now != start && now.Sub(published[js.KeyID]) < cfg.PrepareAhead && published[js.KeyID] != start {
			t.Fatalf("JWT key %s signs %s after publication", js.KeyID, now.Sub(published[js.KeyID]))
		}
		tok, err := jwt.ParseSigned(js.Token, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		jwts = append(jwts, jwtIssued{tok, js.Expiry, js.KeyID})

		// Everything live verifies against the current bundle.
		b := mustBundle(t, c)
		for i, ch := range x509s {
			if !now.Before(ch[0].NotAfter) {
				continue
			}
			if err := verifies(c, ch, now); err != nil {
				t.Fatalf("at %s: live SVID #%d (expires %s) no longer verifies: %v", now.Sub(start), i, ch[0].NotAfter.Sub(start), err)
			}
		}
		for i, j := range jwts {
			if !now.Before(j.exp) {
				continue
			}
			key, ok := b.FindJWTAuthority(j.kid)
			if !ok {
				t.Fatalf("at %s: live JWT-SVID #%d's key %s left the bundle", now.Sub(start), i, j.kid)
			}
			var cl jwt.Claims
			if err := j.tok.Claims(key, &cl); err != nil {
				t.Fatalf("JWT-SVID #%d: %v", i, err)
			}
		}
	}
	if len(seenRoots) < 2 || len(seenInter) < 5 || len(seenJWT) < 5 {
		t.Fatalf("schedule rotated too little: %d roots, %d intermediates, %d JWT keys", len(seenRoots), len(seenInter), len(seenJWT))
	}
	// Old keys were dropped: the state stays bounded.
	if n := len(c.State().Keys); n > 10 {
		t.Errorf("state holds %d keys after 30h", n)
	}
	t.Logf("30h: %d roots, %d intermediates, %d JWT keys; %d keys kept", len(seenRoots), len(seenInter), len(seenJWT), len(c.State().Keys))
}

// TestCatchUpAfterDowntime: an authority that was down past its
// intermediate's expiry rotates on the first Tick.
func TestCatchUpAfterDowntime(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.At(start)
	c, _ := initCA(t, Config{}, clk.Now)
	inter, _ := c.ActiveIntermediate()
	later := inter.NotAfter.Add(time.Hour)
	clk.Set(later)
	if _, err := c.SignX509SVID(ctx, SVIDRequest{ID: wid("/w"), PublicKey: p256(t).Public()}); err == nil {
		t.Fatal("expired intermediate signed")
	}
	if err := c.Tick(ctx, later); err != nil {
		t.Fatal(err)
	}
	chain := sign(t, c)
	if err := verifies(c, chain, later); err != nil {
		t.Fatalf("after catch-up: %v", err)
	}
}

// TestSharedStore: two authorities on one store. Each mutation lands exactly
// once; the loser of a race reloads and decides again, so concurrent Ticks
// at the same instant rotate once, not twice.
func TestSharedStore(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.At(start)
	a, st := initCA(t, Config{}, clk.Now)
	b := newCA(t, st, Config{}, clk.Now)

	// b is stale relative to a after a rotates; b's Rotate must still work
	// on the fresh state.
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if a.State().Revision != b.State().Revision || activeID(a, KindIntermediate) != activeID(b, KindIntermediate) {
		t.Fatal("authorities disagree after reload")
	}
	if n := count(a, KindIntermediate, StateRetired); n != 2 {
		t.Fatalf("want two retired intermediates (two rotations), got %d", n)
	}

	// Both tick at the activation point concurrently.
	inter, _ := a.ActiveIntermediate()
	for _, at := range []time.Time{inter.NotAfter.Add(-28*time.Hour - 30*time.Minute), inter.NotAfter.Add(-28 * time.Hour)} {
		var wg sync.WaitGroup
		for _, c := range []*CA{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.Tick(ctx, at); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	_ = a.Reload(ctx)
	_ = b.Reload(ctx)
	if count(a, KindIntermediate, StateActive) != 1 || count(a, KindIntermediate, StatePrepared) > 1 {
		t.Fatalf("state after concurrent ticks: %+v", a.State().Keys)
	}
	if activeID(a, KindIntermediate) == idOf(t, inter) {
		t.Fatal("scheduled rotation did not happen")
	}
	if activeID(a, KindIntermediate) != activeID(b, KindIntermediate) {
		t.Fatal("authorities disagree on the active intermediate")
	}
	// The scheduled rotation retired the old one exactly once; the manually
	// retired ones were dropped on the way (their SVIDs have expired).
	if n := count(a, KindIntermediate, StateRetired); n != 1 {
		t.Fatalf("want 1 retired intermediate, got %d: %+v", n, a.State().Keys)
	}
}

func idOf(t *testing.T, c *x509.Certificate) string {
	id, err := keyutil.CAKeyID(c.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestStoreFailureChangesNothing: a failed write leaves the loaded state as
// it was.
func TestStoreFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	c, st := initCA(t, Config{}, nil)
	before := c.State()
	st.SetBatchHook(func([]store.Op) error { return errors.New("disk full") })
	if err := c.Rotate(ctx); err == nil {
		t.Fatal("Rotate succeeded on a failing store")
	}
	if err := c.Taint(ctx, activeID(c, KindRoot)); err == nil {
		t.Fatal("Taint succeeded on a failing store")
	}
	after := c.State()
	if after.Revision != before.Revision || activeID(c, KindIntermediate) != before.Keys[1].ID || len(after.Keys) != 3 {
		t.Fatal("failed writes changed the loaded state")
	}
	st.SetBatchHook(nil)
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptState(t *testing.T) {
	ctx := context.Background()
	for name, val := range map[string]string{
		"not json":    "{",
		"bad version": `{"version":99,"trust_domain":"prod-eu.example.org"}`,
		"bad key":     `{"version":1,"trust_domain":"prod-eu.example.org","keys":[{"id":"x","kind":"jwt","key":"AAAA"}]}`,
		"other td":    `{"version":1,"trust_domain":"other.org"}`,
	} {
		t.Run(name, func(t *testing.T) {
			st := memstore.New()
			_, _ = st.Put(ctx, "ca/prod-eu.example.org/state", []byte(val))
			if _, err := Open(ctx, st, Config{TrustDomain: td}, nil); err == nil {
				t.Fatal("Open accepted corrupt state")
			}
		})
	}
}

func TestUpdatedNotifies(t *testing.T) {
	c, _ := initCA(t, Config{}, nil)
	ch := c.Updated()
	select {
	case <-ch:
		t.Fatal("Updated fired without a change")
	default:
	}
	if err := c.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Updated did not fire after Rotate")
	}
}

// reportCPU adds the CPU cost per op and the throughput that cost allows on
// two dedicated cores: on a shared machine wall-clock figures swing with
// other processes' load, CPU time per op does not.
func reportCPU(b *testing.B, start time.Duration) {
	per := (benchcpu.Process(b) - start) / time.Duration(b.N)
	b.ReportMetric(float64(per.Microseconds()), "cpu-µs/op")
	if per > 0 {
		b.ReportMetric(2*float64(time.Second)/float64(per), "svids/s@2cores")
	}
}

func BenchmarkSignX509SVID(b *testing.B) {
	c, _ := initCA(b, Config{}, nil)
	pub := p256(b).Public()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, benchcpu.Process(b))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.SignX509SVID(ctx, SVIDRequest{ID: wid("/ns/payments/sa/api"), PublicKey: pub}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

func BenchmarkSignJWTSVID(b *testing.B) {
	c, _ := initCA(b, Config{}, nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPU(b, benchcpu.Process(b))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.SignJWTSVID(ctx, wid("/ns/payments/sa/api"), []string{"aud"}, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}
