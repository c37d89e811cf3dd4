package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// `ward federation update` changes network_endpoint_cidrs in place: the
// relationship stays (its bundle too), show prints the new bound; the
// flags are checked before anything is sent.
func TestFederationUpdateCLI(t *testing.T) {
	addr := devAuthority(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "b root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	root, _ := x509.ParseCertificate(der)
	b := spiffebundle.New(spiffeid.RequireTrustDomainFromString("b.example"))
	b.AddX509Authority(root)
	doc, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(t.TempDir(), "b.json")
	os.WriteFile(bf, doc, 0o600)
	if out, err := ward(t, addr, "federation", "add", "b.example", "--endpoint", "https://127.0.0.1:1/", "--bundle", bf,
		"--network", "--network-endpoint-cidr", "198.51.100.0/24"); err != nil {
		t.Fatalf("add: %v\n%s", err, out)
	}
	for _, bad := range [][]string{{"federation", "update", "b.example"},
		{"federation", "update", "b.example", "--network-endpoint-cidr", "203.0.113.0/24", "--clear-network-endpoint-cidrs"}} {
		if _, err := ward(t, addr, bad...); err == nil || !strings.Contains(err.Error(), "--network-endpoint-cidr") {
			t.Errorf("%v: %v, want an error naming the flags", bad, err)
		}
	}
	out, err := ward(t, addr, "federation", "update", "b.example", "--network-endpoint-cidr", "203.0.113.0/24,192.0.2.0/24")
	if err != nil || !strings.Contains(out, "198.51.100.0/24 → 203.0.113.0/24,192.0.2.0/24") {
		t.Fatalf("update: %v\n%s", err, out)
	}
	if out, err = ward(t, addr, "federation", "update", "b.example", "--network-endpoint-cidr", "0.0.0.0/0"); err == nil {
		t.Fatalf("a bound of every address accepted:\n%s", out)
	}
	out, err = ward(t, addr, "federation", "update", "b.example", "--clear-network-endpoint-cidrs")
	if err != nil || !strings.Contains(out, "→ (default)") {
		t.Fatalf("clear: %v\n%s", err, out)
	}
	if out, err := ward(t, addr, "federation", "list"); err != nil || !strings.Contains(out, "b.example") {
		t.Fatalf("list after the updates: %v\n%s", err, out)
	}
}
