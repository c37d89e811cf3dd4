package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/node/attestor/unix"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

var td = spiffeid.RequireTrustDomainFromString("prod-eu.example.org")

// memSource is an in-memory Source backed by a real CA: registration
// entries map selectors to SPIFFE IDs; every entry has an X509-SVID with its
// own key.
type memSource struct {
	ca *ca.CA

	mu        sync.Mutex
	entries   []memEntry
	idents    map[spiffeid.ID]Identity
	bundle    *spiffebundle.Bundle // the agent's cached copy of the CA bundle
	crls      [][]byte
	federated []*spiffebundle.Bundle
	changed   chan struct{}
}

type memEntry struct {
	id        spiffeid.ID
	selectors []attest.Selector
	fed       []spiffeid.TrustDomain
}

func newMemSource(t testing.TB, c *ca.CA) *memSource {
	s := &memSource{ca: c, idents: map[spiffeid.ID]Identity{}, changed: make(chan struct{})}
	s.refreshBundle(t)
	return s
}

// refreshBundle copies the CA's current bundle, as an agent syncing with
// its authority does, and notifies streams.
func (s *memSource) refreshBundle(t testing.TB) {
	t.Helper()
	b, err := s.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.bundle = b
	s.crls = s.ca.CRLs()
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *memSource) addEntry(t testing.TB, path string, selectors ...string) spiffeid.ID {
	t.Helper()
	sel, err := attest.ParseSelectors(selectors)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, path)
	s.mu.Lock()
	s.entries = append(s.entries, memEntry{id: id, selectors: sel})
	s.mu.Unlock()
	s.issue(t, id)
	return id
}

func (s *memSource) setFederatesWith(id spiffeid.ID, fed ...spiffeid.TrustDomain) {
	s.mu.Lock()
	for i := range s.entries {
		if s.entries[i].id == id {
			s.entries[i].fed = fed
		}
	}
	ident := s.idents[id]
	ident.FederatesWith = fed
	s.idents[id] = ident
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *memSource) removeEntry(id spiffeid.ID) {
	s.mu.Lock()
	out := s.entries[:0]
	for _, e := range s.entries {
		if e.id != id {
			out = append(out, e)
		}
	}
	s.entries = out
	delete(s.idents, id)
	s.notifyLocked()
	s.mu.Unlock()
}

// issue signs a fresh X509-SVID (new key) for id and notifies streams.
func (s *memSource) issue(t testing.TB, id spiffeid.ID) Identity {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := s.ca.SignX509SVID(context.Background(), ca.SVIDRequest{ID: id, PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ident := Identity{ID: id, Chain: chain, Key: key, Hint: "internal"}
	for _, e := range s.entries {
		if e.id == id {
			ident.FederatesWith = e.fed
		}
	}
	s.idents[id] = ident
	s.notifyLocked()
	return ident
}

// reissueAll re-signs every SVID (an SVID rotation).
func (s *memSource) reissueAll(t testing.TB) map[spiffeid.ID]Identity {
	s.mu.Lock()
	var ids []spiffeid.ID
	for _, e := range s.entries {
		ids = append(ids, e.id)
	}
	s.mu.Unlock()
	out := map[spiffeid.ID]Identity{}
	for _, id := range ids {
		out[id] = s.issue(t, id)
	}
	return out
}

func (s *memSource) setFederated(b ...*spiffebundle.Bundle) {
	s.mu.Lock()
	s.federated = b
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *memSource) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *memSource) Identities(selectors []attest.Selector) []Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Identity
	for _, e := range s.entries {
		if attest.Subset(e.selectors, selectors) {
			if ident, ok := s.idents[e.id]; ok {
				out = append(out, ident)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID.String() < out[j].ID.String() })
	return out
}

func (s *memSource) Bundles() (*spiffebundle.Bundle, []*spiffebundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundle, append([]*spiffebundle.Bundle(nil), s.federated...)
}

func (s *memSource) MintJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (string, error) {
	svid, err := s.ca.SignJWTSVID(ctx, id, audience, 0)
	if err != nil {
		return "", err
	}
	return svid.Token, nil
}

func (s *memSource) CRLs() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crls
}

func (s *memSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// socketAttestor adds a fixed selector naming the socket, so one test
// process can appear as two workloads on two sockets.
type socketAttestor string

func (a socketAttestor) Attest(context.Context, attest.Caller) ([]attest.Selector, error) {
	return []attest.Selector{{Type: "test", Value: "socket:" + string(a)}}, nil
}

// uidSelector is this process's unix uid selector.
func uidSelector() string { return "unix:uid:" + strconv.Itoa(os.Getuid()) }

// serve starts a Server for src on a fresh socket and returns its address
// in go-spiffe's form.
func serve(t testing.TB, src Source, att attest.Attestor, opts ...Option) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wapi") // short path: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(src, att, opts...)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil && !strings.Contains(err.Error(), "closed") {
			t.Errorf("Serve: %v", err)
		}
	})
	return "unix://" + path
}

// workload attests with the real unix attestor plus a socket name.
func workload(name string) attest.Attestor { return attest.Multi{unix.New(), socketAttestor(name)} }

// newTestCA is the test authority's CA for td.
func newTestCA(t testing.TB) *ca.CA {
	t.Helper()
	return authoritytest.New(t, authoritytest.WithTrustDomain(td.Name())).CA
}
