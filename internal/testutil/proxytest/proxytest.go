// Package proxytest runs a real SPIFFE Workload API for ward proxy tests and
// benchmarks: the test authority's CA (testutil/authoritytest) signs
// X509-SVIDs, and each Workload is one identity served on its own unix socket
// by internal/node/workloadapi, so go-spiffe X509Sources see exactly what a
// node agent would push, including rotations.
package proxytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/node/workloadapi"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

// Authority is a CA of one trust domain and the Workload API sockets of
// the identities it serves.
type Authority struct {
	CA  *ca.CA
	TD  spiffeid.TrustDomain
	dir string
	a   *authoritytest.Authority

	mu        sync.Mutex
	workloads []*Workload
}

// NewAuthority creates the test authority of trust domain td with its
// sockets in dir (which must exist; keep its path short, unix socket paths
// are limited to 108 bytes).
func NewAuthority(ctx context.Context, dir, td string) (*Authority, error) {
	a, err := authoritytest.Open(ctx, authoritytest.WithTrustDomain(td))
	if err != nil {
		return nil, fmt.Errorf("proxytest: %w", err)
	}
	return &Authority{CA: a.CA, TD: a.TD, dir: dir, a: a}, nil
}

// Close stops every Workload API server.
func (a *Authority) Close() error {
	a.mu.Lock()
	ws := a.workloads
	a.workloads = nil
	a.mu.Unlock()
	for _, w := range ws {
		w.srv.Stop()
	}
	return nil
}

// Workload is one identity served on its own Workload API socket.
type Workload struct {
	ID     spiffeid.ID
	Socket string // filesystem path of the unix socket
	Addr   string // go-spiffe form: unix:///path
	TTL    time.Duration
	// DNSNames are added to every SVID as DNS SANs (for clients that check
	// host names, like curl).
	DNSNames []string

	a   *Authority
	srv *workloadapi.Server

	mu      sync.Mutex
	ident   workloadapi.Identity
	extra   []workloadapi.Identity // AddIdentity: more SVIDs on the same socket
	refused bool                   // SetRefused: no identity for any caller
	bundle  *spiffebundle.Bundle
	changed chan struct{}
}

// AddWorkload issues an SVID for path (TTL ttl, 0 = CA default; DNS SANs
// dnsNames) and serves it on a new socket.
func (a *Authority) AddWorkload(ctx context.Context, path string, ttl time.Duration, dnsNames ...string) (*Workload, error) {
	id, err := spiffeid.FromPath(a.TD, path)
	if err != nil {
		return nil, fmt.Errorf("proxytest: workload path %q: %w", path, err)
	}
	a.mu.Lock()
	n := len(a.workloads)
	a.mu.Unlock()
	sock := filepath.Join(a.dir, fmt.Sprintf("w%d.sock", n))
	w := &Workload{ID: id, Socket: sock, Addr: "unix://" + sock, TTL: ttl, DNSNames: dnsNames, a: a, changed: make(chan struct{})}
	if _, err := w.Rotate(ctx); err != nil {
		return nil, err
	}
	if err := w.RefreshBundle(); err != nil {
		return nil, err
	}
	l, err := workloadapi.Listen(sock)
	if err != nil {
		return nil, err
	}
	w.srv = workloadapi.New(w, anyCaller{})
	go func() { _ = w.srv.Serve(l) }()
	a.mu.Lock()
	a.workloads = append(a.workloads, w)
	a.mu.Unlock()
	return w, nil
}

// Rotate signs a new SVID (new key) under the CA's active intermediate and
// pushes it to the Workload API streams; it returns the new serial.
func (w *Workload) Rotate(ctx context.Context) (*big.Int, error) {
	chain, key, err := w.a.a.IssueSVID(ctx, w.ID, w.TTL, w.DNSNames...)
	if err != nil {
		return nil, fmt.Errorf("proxytest: %w", err)
	}
	w.mu.Lock()
	w.ident = workloadapi.Identity{ID: w.ID, Chain: chain, Key: key}
	w.notifyLocked()
	w.mu.Unlock()
	return chain[0].SerialNumber, nil
}

// RefreshBundle copies the CA's current bundle (as an agent syncing with
// its authority does) and pushes it.
func (w *Workload) RefreshBundle() error {
	b, err := w.a.CA.Bundle()
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.bundle = b
	w.notifyLocked()
	w.mu.Unlock()
	return nil
}

// Serial is the serial of the SVID currently served.
func (w *Workload) Serial() *big.Int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ident.Chain[0].SerialNumber
}

// WriteFiles writes the current SVID for clients that read files (curl,
// openssl, stunnel): dir/<name>.crt (leaf then intermediate), dir/<name>.key
// (PKCS#8) and dir/<name>-bundle.crt (the trust bundle's roots).
func (w *Workload) WriteFiles(dir, name string) (cert, key, bundle string, err error) {
	w.mu.Lock()
	ident, b := w.ident, w.bundle
	w.mu.Unlock()
	var certPEM, bundlePEM []byte
	for _, c := range ident.Chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	for _, c := range b.X509Authorities() {
		bundlePEM = append(bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ident.Key)
	if err != nil {
		return "", "", "", err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	cert, key, bundle = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, name+"-bundle.crt")
	for p, data := range map[string][]byte{cert: certPEM, key: keyPEM, bundle: bundlePEM} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			return "", "", "", err
		}
	}
	return cert, key, bundle, nil
}

func (w *Workload) notifyLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// Identities implements workloadapi.Source: every caller of this socket
// gets the workload's SVID.
func (w *Workload) Identities([]attest.Selector) []workloadapi.Identity {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.refused {
		return nil
	}
	return append([]workloadapi.Identity{w.ident}, w.extra...)
}

// SetRefused makes the socket refuse every caller (as an agent with no
// matching entry does) or serve again.
func (w *Workload) SetRefused(refused bool) {
	w.mu.Lock()
	w.refused = refused
	w.notifyLocked()
	w.mu.Unlock()
}

// AddIdentity issues one more SVID (SPIFFE ID path, with hint) served on
// the same socket after the workload's own, as an agent does for callers
// that several entries match.
func (w *Workload) AddIdentity(ctx context.Context, path, hint string) (spiffeid.ID, error) {
	id, err := spiffeid.FromPath(w.a.TD, path)
	if err != nil {
		return spiffeid.ID{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return spiffeid.ID{}, err
	}
	chain, err := w.a.CA.SignX509SVID(ctx, ca.SVIDRequest{ID: id, PublicKey: key.Public(), TTL: w.TTL, DNSNames: w.DNSNames})
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("proxytest: sign SVID for %s: %w", id, err)
	}
	w.mu.Lock()
	w.extra = append(w.extra, workloadapi.Identity{ID: id, Chain: chain, Key: key, Hint: hint})
	w.notifyLocked()
	w.mu.Unlock()
	return id, nil
}

// Bundles implements workloadapi.Source.
func (w *Workload) Bundles() (*spiffebundle.Bundle, []*spiffebundle.Bundle) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bundle, nil
}

// MintJWTSVID implements workloadapi.Source.
func (w *Workload) MintJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (string, error) {
	s, err := w.a.CA.SignJWTSVID(ctx, id, audience, 0)
	if err != nil {
		return "", err
	}
	return s.Token, nil
}

// Changed implements workloadapi.Source.
func (w *Workload) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// CRLs implements workloadapi.CRLSource.
func (w *Workload) CRLs() [][]byte { return w.a.CA.CRLs() }

// anyCaller attests every caller of a socket with one fixed selector: the
// socket itself decides the identity in these tests.
type anyCaller struct{}

func (anyCaller) Attest(context.Context, attest.Caller) ([]attest.Selector, error) {
	return []attest.Selector{{Type: "test", Value: "socket"}}, nil
}

// ErrTimeout is returned by WaitFor when cond never held.
var ErrTimeout = errors.New("proxytest: condition not reached before the deadline")

// WaitFor polls cond every few milliseconds until it holds or d passes (a
// liveness guard for tests, never a timing assertion).
func WaitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return ErrTimeout
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
