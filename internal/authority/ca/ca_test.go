package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/clock"
)

var td = spiffeid.RequireTrustDomainFromString("prod-eu.example.org")

func newCA(t testing.TB, st *memstore.Store, cfg Config, clock Clock) *CA {
	t.Helper()
	if cfg.TrustDomain.IsZero() {
		cfg.TrustDomain = td
	}
	c, err := Open(context.Background(), st, cfg, clock)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return c
}

func initCA(t testing.TB, cfg Config, clock Clock) (*CA, *memstore.Store) {
	t.Helper()
	st := memstore.New()
	c := newCA(t, st, cfg, clock)
	if err := c.Init(context.Background()); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return c, st
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustBundle(t testing.TB, c *CA) *spiffebundle.Bundle {
	t.Helper()
	b, err := c.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func count(c *CA, kind Kind, st KeyState) int {
	n := 0
	for _, k := range c.State().Keys {
		if k.Kind == kind && k.State == st {
			n++
		}
	}
	return n
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no trust domain", Config{}, "trust_domain is required"},
		{"bad key type", Config{TrustDomain: td, KeyType: "rsa"}, "not supported"},
		{"negative", Config{TrustDomain: td, SVIDTTL: -time.Hour}, "negative"},
		{"short intermediate", Config{TrustDomain: td, IntermediateTTL: 30 * time.Hour}, "intermediate_ttl"},
		{"short root", Config{TrustDomain: td, RootTTL: 100 * time.Hour}, "root_ttl"},
		{"short jwt key", Config{TrustDomain: td, JWTKeyTTL: time.Hour}, "jwt_key_ttl"},
		{"prepare below hint", Config{TrustDomain: td, PrepareAhead: time.Minute}, "prepare_ahead"},
		{"prepare too long", Config{TrustDomain: td, PrepareAhead: 100 * time.Hour}, "prepare_ahead"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(context.Background(), memstore.New(), tc.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open err = %v, want containing %q", err, tc.want)
			}
		})
	}
	c := newCA(t, memstore.New(), Config{}, nil)
	cfg := c.Config()
	if cfg.SVIDTTL != time.Hour || cfg.KeyType != KeyTypeP256 || cfg.PrepareAhead != 30*time.Minute {
		t.Fatalf("defaults not applied: %+v", cfg)
	}
}

func TestNotInitialized(t *testing.T) {
	c := newCA(t, memstore.New(), Config{}, nil)
	ctx := context.Background()
	if _, err := c.Bundle(); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("Bundle: %v", err)
	}
	if _, err := c.SignX509SVID(ctx, SVIDRequest{ID: wid("/w"), PublicKey: p256(t).Public()}); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("SignX509SVID: %v", err)
	}
	if _, err := c.SignJWTSVID(ctx, wid("/w"), []string{"a"}, 0); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("SignJWTSVID: %v", err)
	}
	if err := c.Rotate(ctx); !errors.Is(err, ErrNotInitialized) {
		t.Errorf("Rotate: %v", err)
	}
	if err := c.Tick(ctx, time.Now()); err != nil {
		t.Errorf("Tick before init should be a no-op: %v", err)
	}
	if c.State().Initialized {
		t.Error("State says initialized")
	}
}

func TestInitIdempotentAndShared(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	a := newCA(t, st, Config{}, nil)
	b := newCA(t, st, Config{}, nil)
	// Both initialize concurrently: exactly one set of keys results.
	var wg sync.WaitGroup
	for _, c := range []*CA{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Init(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Init(ctx); err != nil { // again: no-op
		t.Fatal(err)
	}
	sa, sb := a.State(), b.State()
	if len(sa.Keys) != 3 || sa.Revision != sb.Revision {
		t.Fatalf("want 3 keys and same revision, got %d keys, revisions %d/%d", len(sa.Keys), sa.Revision, sb.Revision)
	}
	for _, kind := range []Kind{KindRoot, KindIntermediate, KindJWT} {
		if count(a, kind, StateActive) != 1 {
			t.Errorf("want one active %s", kind)
		}
	}
	bun := mustBundle(t, a)
	if len(bun.X509Authorities()) != 1 || len(bun.JWTAuthorities()) != 1 {
		t.Fatalf("bundle: %d X.509, %d JWT authorities", len(bun.X509Authorities()), len(bun.JWTAuthorities()))
	}
	if seq, _ := bun.SequenceNumber(); seq != 1 {
		t.Errorf("sequence = %d, want 1", seq)
	}
	if hint, _ := bun.RefreshHint(); hint != 5*time.Minute {
		t.Errorf("refresh hint = %s", hint)
	}
	// A third instance opened later loads the same bundle.
	c := newCA(t, st, Config{}, nil)
	if !mustBundle(t, c).Equal(bun) {
		t.Error("reopened CA has a different bundle")
	}
	// Another trust domain's config must not load this state.
	other := Config{TrustDomain: spiffeid.RequireTrustDomainFromString("other.org")}
	oc := newCA(t, st, other, nil)
	if oc.Initialized() {
		t.Error("CA for other.org sees prod-eu's state")
	}
}

func TestX509SVIDConformance(t *testing.T) {
	ctx := context.Background()
	for _, caKey := range []KeyType{KeyTypeP256, KeyTypeP384} {
		c, _ := initCA(t, Config{KeyType: caKey}, nil)
		bundle := mustBundle(t, c)
		rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		edPub, _, _ := ed25519.GenerateKey(rand.Reader)
		p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		for _, tc := range []struct {
			name   string
			pub    crypto.PublicKey
			wantKU x509.KeyUsage
		}{
			{"p256", p256(t).Public(), x509.KeyUsageDigitalSignature},
			{"p384", p384.Public(), x509.KeyUsageDigitalSignature},
			{"rsa", rsaKey.Public(), x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
			{"ed25519", edPub, x509.KeyUsageDigitalSignature},
		} {
			t.Run(string(caKey)+"/"+tc.name, func(t *testing.T) {
				id := wid("/ns/payments/sa/api")
				before := time.Now()
				chain, err := c.SignX509SVID(ctx, SVIDRequest{ID: id, PublicKey: tc.pub, DNSNames: []string{"api.payments.svc"}})
				if err != nil {
					t.Fatal(err)
				}
				if len(chain) != 2 {
					t.Fatalf("chain length %d, want leaf + intermediate", len(chain))
				}
				raw := [][]byte{chain[0].Raw, chain[1].Raw}
				got, _, err := x509svid.ParseAndVerify(raw, bundle.X509Bundle())
				if err != nil {
					t.Fatalf("go-spiffe rejects the SVID: %v", err)
				}
				if got != id {
					t.Fatalf("ID %s, want %s", got, id)
				}
				leaf := chain[0]
				if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
					t.Errorf("leaf URIs %v", leaf.URIs)
				}
				if leaf.IsCA || !leaf.BasicConstraintsValid {
					t.Error("leaf must have CA=false with basic constraints")
				}
				if leaf.KeyUsage != tc.wantKU {
					t.Errorf("leaf key usage %b, want %b", leaf.KeyUsage, tc.wantKU)
				}
				if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
					t.Errorf("leaf EKU %v", leaf.ExtKeyUsage)
				}
				if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.BitLen() < 64 {
					t.Errorf("serial %s not a random 128-bit value", leaf.SerialNumber)
				}
				if !leaf.NotBefore.Before(before.Add(-5 * time.Second)) {
					t.Errorf("NotBefore %s not backdated", leaf.NotBefore)
				}
				if d := leaf.NotAfter.Sub(before); d < 59*time.Minute || d > 61*time.Minute {
					t.Errorf("lifetime %s, want default 1h", d)
				}
				if len(leaf.DNSNames) != 1 || leaf.Subject.CommonName != "api.payments.svc" {
					t.Errorf("DNS %v CN %q", leaf.DNSNames, leaf.Subject.CommonName)
				}
				inter := chain[1]
				if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
					t.Errorf("intermediate CA=%v pathlen=%d zero=%v", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
				}
				if inter.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
					t.Errorf("intermediate key usage %b", inter.KeyUsage)
				}
				if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://prod-eu.example.org" {
					t.Errorf("intermediate URIs %v", inter.URIs)
				}
				if !leaf.NotAfter.After(inter.NotBefore) || leaf.NotAfter.After(inter.NotAfter) {
					t.Error("leaf outlives its intermediate")
				}
				root := bundle.X509Authorities()[0]
				if !root.IsCA || root.MaxPathLen != 1 || len(root.URIs) != 1 || root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
					t.Errorf("root CA=%v pathlen=%d URIs=%v KU=%b", root.IsCA, root.MaxPathLen, root.URIs, root.KeyUsage)
				}
			})
		}
	}
}

func TestX509SVIDTTL(t *testing.T) {
	ctx := context.Background()
	clk := clock.At(time.Now())
	c, _ := initCA(t, Config{SVIDTTL: time.Hour, MaxSVIDTTL: 4 * time.Hour, IntermediateTTL: 48 * time.Hour}, clk.Now)
	inter, _ := c.ActiveIntermediate()
	id := wid("/w")
	for _, tc := range []struct {
		name string
		at   time.Time
		ttl  time.Duration
		want time.Duration
	}{
		{"default", clk.Now(), 0, time.Hour},
		{"requested", clk.Now(), 2 * time.Hour, 2 * time.Hour},
		{"capped at max", clk.Now(), 100 * time.Hour, 4 * time.Hour},
		{"capped at intermediate", inter.NotAfter.Add(-30 * time.Minute), time.Hour, 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk.Set(tc.at)
			chain, err := c.SignX509SVID(ctx, SVIDRequest{ID: id, PublicKey: p256(t).Public(), TTL: tc.ttl})
			if err != nil {
				t.Fatal(err)
			}
			if got := chain[0].NotAfter.Sub(tc.at.Truncate(time.Second)); got < tc.want-time.Second || got > tc.want+time.Second {
				t.Errorf("lifetime %s, want %s", got, tc.want)
			}
		})
	}
	clk.Set(inter.NotAfter.Add(time.Minute))
	if _, err := c.SignX509SVID(ctx, SVIDRequest{ID: id, PublicKey: p256(t).Public()}); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("signing with an expired intermediate: %v", err)
	}
}

func TestInvalidRequests(t *testing.T) {
	ctx := context.Background()
	c, _ := initCA(t, Config{}, nil)
	rev := c.State().Revision
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	good := p256(t).Public()
	for _, tc := range []struct {
		name string
		req  SVIDRequest
	}{
		{"empty id", SVIDRequest{PublicKey: good}},
		{"other trust domain", SVIDRequest{ID: spiffeid.RequireFromString("spiffe://evil.org/w"), PublicKey: good}},
		{"trust domain id", SVIDRequest{ID: td.ID(), PublicKey: good}},
		{"nil key", SVIDRequest{ID: wid("/w")}},
		{"nil ecdsa", SVIDRequest{ID: wid("/w"), PublicKey: (*ecdsa.PublicKey)(nil)}},
		{"bad point", SVIDRequest{ID: wid("/w"), PublicKey: &ecdsa.PublicKey{Curve: elliptic.P256(), X: bigOne(), Y: bigOne()}}},
		{"p224", SVIDRequest{ID: wid("/w"), PublicKey: p224.Public()}},
		{"rsa 1024", SVIDRequest{ID: wid("/w"), PublicKey: small.Public()}},
		{"short ed25519", SVIDRequest{ID: wid("/w"), PublicKey: ed25519.PublicKey{1, 2}}},
		{"bad dns", SVIDRequest{ID: wid("/w"), PublicKey: good, DNSNames: []string{"a b"}}},
		{"empty dns", SVIDRequest{ID: wid("/w"), PublicKey: good, DNSNames: []string{""}}},
		{"dash dns", SVIDRequest{ID: wid("/w"), PublicKey: good, DNSNames: []string{"-a.com"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.SignX509SVID(ctx, tc.req); !errors.Is(err, ErrInvalidRequest) {
				t.Errorf("err = %v, want ErrInvalidRequest", err)
			}
		})
	}
	if _, err := c.SignX509SVID(ctx, SVIDRequest{ID: wid("/w"), PublicKey: good, DNSNames: []string{"*.svc.example.org"}}); err != nil {
		t.Errorf("wildcard DNS name rejected: %v", err)
	}
	for _, aud := range [][]string{nil, {""}} {
		if _, err := c.SignJWTSVID(ctx, wid("/w"), aud, 0); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("JWT with audience %q: %v", aud, err)
		}
	}
	if c.State().Revision != rev {
		t.Error("bad requests changed the CA state")
	}
}

func TestJWTSVID(t *testing.T) {
	ctx := context.Background()
	for _, kt := range []KeyType{KeyTypeP256, KeyTypeP384} {
		t.Run(string(kt), func(t *testing.T) {
			c, _ := initCA(t, Config{KeyType: kt}, nil)
			id := wid("/web")
			svid, err := c.SignJWTSVID(ctx, id, []string{"payments", "audit"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			jb := mustBundle(t, c).JWTBundle()
			got, err := jwtsvid.ParseAndValidate(svid.Token, jb, []string{"audit"})
			if err != nil {
				t.Fatalf("go-spiffe rejects the JWT-SVID: %v", err)
			}
			if got.ID != id || got.Expiry.Sub(svid.IssuedAt) != 5*time.Minute {
				t.Errorf("got %s expiring %s after issue", got.ID, got.Expiry.Sub(svid.IssuedAt))
			}
			if _, err := jwtsvid.ParseAndValidate(svid.Token, jb, []string{"other"}); err == nil {
				t.Error("wrong audience accepted")
			}
			tok, err := jwt.ParseSigned(svid.Token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384})
			if err != nil {
				t.Fatal(err)
			}
			wantAlg := "ES256"
			if kt == KeyTypeP384 {
				wantAlg = "ES384"
			}
			h := tok.Headers[0]
			if h.Algorithm != wantAlg || h.KeyID != svid.KeyID || h.ExtraHeaders[jose.HeaderType] != "JWT" {
				t.Errorf("header alg=%s kid=%s typ=%v", h.Algorithm, h.KeyID, h.ExtraHeaders[jose.HeaderType])
			}
			// A token signed before a rotation still validates (old key
			// stays published as retired); one signed after uses the new kid.
			if err := c.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
			jb = mustBundle(t, c).JWTBundle()
			if _, err := jwtsvid.ParseAndValidate(svid.Token, jb, []string{"audit"}); err != nil {
				t.Errorf("pre-rotation token rejected: %v", err)
			}
			svid2, err := c.SignJWTSVID(ctx, id, []string{"a"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if svid2.KeyID == svid.KeyID {
				t.Error("rotation kept the JWT key")
			}
			if _, err := jwtsvid.ParseAndValidate(svid2.Token, jb, []string{"a"}); err != nil {
				t.Errorf("post-rotation token rejected: %v", err)
			}
		})
	}
}

func TestBundleMarshal(t *testing.T) {
	c, _ := initCA(t, Config{}, nil)
	b := mustBundle(t, c)
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := spiffebundle.Parse(td, doc)
	if err != nil {
		t.Fatalf("SPIFFE bundle JSON does not parse: %v", err)
	}
	if !parsed.Equal(b) {
		t.Error("round trip changed the bundle")
	}
	for _, want := range []string{`"x509-svid"`, `"jwt-svid"`, `"spiffe_refresh_hint":300`, `"spiffe_sequence":1`} {
		if !bytes.Contains(doc, []byte(want)) {
			t.Errorf("bundle JSON lacks %s: %s", want, doc)
		}
	}
	// Bundle returns a copy: mutating it changes nothing.
	b.SetSequenceNumber(99)
	if seq, _ := mustBundle(t, c).SequenceNumber(); seq != 1 {
		t.Error("Bundle is not a copy")
	}
}

func TestOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	c, _ := initCA(t, Config{}, nil)
	dir := t.TempDir()
	writePEM := func(name string, certs ...*x509.Certificate) string {
		var buf bytes.Buffer
		for _, c := range certs {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	check := func(t *testing.T) {
		chain, err := c.SignX509SVID(context.Background(), SVIDRequest{ID: wid("/ns/a"), PublicKey: p256(t).Public()})
		if err != nil {
			t.Fatal(err)
		}
		bundle := writePEM("bundle.pem", mustBundle(t, c).X509Authorities()...)
		inter := writePEM("inter.pem", chain[1])
		leaf := writePEM("leaf.pem", chain[0])
		out, err := exec.Command(openssl, "verify", "-purpose", "sslclient", "-CAfile", bundle, "-untrusted", inter, leaf).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "OK") {
			t.Fatalf("openssl verify: %v: %s", err, out)
		}
		out, err = exec.Command(openssl, "verify", "-purpose", "sslserver", "-CAfile", bundle, "-untrusted", inter, leaf).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl verify sslserver: %v: %s", err, out)
		}
		text, err := exec.Command(openssl, "x509", "-in", leaf, "-noout", "-text").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"URI:spiffe://prod-eu.example.org/ns/a", "CA:FALSE", "Digital Signature",
			"TLS Web Server Authentication, TLS Web Client Authentication"} {
			if !strings.Contains(string(text), want) {
				t.Errorf("openssl x509 -text lacks %q:\n%s", want, text)
			}
		}
		if strings.Contains(string(text), "Key Encipherment") {
			t.Error("ECDSA leaf has keyEncipherment")
		}
		// Without the bundle the chain must not verify.
		other, _ := initCA(t, Config{}, nil)
		otherBundle := writePEM("other.pem", mustBundle(t, other).X509Authorities()...)
		if out, err := exec.Command(openssl, "verify", "-CAfile", otherBundle, "-untrusted", inter, leaf).CombinedOutput(); err == nil {
			t.Errorf("openssl accepted a chain against a foreign bundle: %s", out)
		}
	}
	t.Run("initial", check)
	// After a root rotation the bundle holds both roots and still verifies.
	if err := c.PrepareRoot(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.RotateRoot(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Run("after root rotation", check)
}

func bigOne() *big.Int { return big.NewInt(1) }

func wid(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }
