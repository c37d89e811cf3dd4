package nodeapi

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
)

// stallingStore makes every Get wait (until its context ends or release
// is closed) while stall is set, counting the waiting calls.
type stallingStore struct {
	store.Store
	stall   atomic.Bool
	waiting atomic.Int64
	release chan struct{}
	once    sync.Once
}

func (s *stallingStore) Get(ctx context.Context, key string) (store.KV, error) {
	if s.stall.Load() {
		s.waiting.Add(1)
		select {
		case <-ctx.Done():
		case <-s.release:
		}
	}
	return s.Store.Get(ctx, key)
}

func (s *stallingStore) unstall() { s.stall.Store(false); s.once.Do(func() { close(s.release) }) }

// TestRegistryLookupHoldsHandshakeSlot runs the attack: with the registry
// slow to answer, one source opens many connections with an agent SVID,
// each of which waits in route's registry lookup (up to authorizeTimeout)
// after its TLS handshake. Before, the handshake slot was given back
// before the lookup, so a source could have any number of connections
// waiting there; now each keeps its slot until the lookup returns, so
// past maxPreHandshakePerSource the source's connections are refused.
func TestRegistryLookupHoldsHandshakeSlot(t *testing.T) {
	var slow *stallingStore
	h := newHarnessWith(t, func(cfg *Config) {
		st, err := boltstore.Open(filepath.Join(t.TempDir(), "reg.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		slow = &stallingStore{Store: st, release: make(chan struct{})}
		reg, err := registry.New(slow, registry.Options{TrustDomain: testTD, Audit: cfg.Audit, Clock: cfg.Clock})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Registry = reg
	})
	h.reg = h.srv.cfg.Registry
	t.Cleanup(slow.unstall)
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.ca.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsconfig.MTLSClientConfig(agent, b, tlsconfig.AuthorizeID(ServerID(testTD)))
	slow.stall.Store(true)
	for i := 0; i < maxPreHandshakePerSource; i++ {
		c := tls.Client(h.dialFrom(t, attacker), tc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.HandshakeContext(ctx)
		cancel()
		if err != nil {
			t.Fatalf("TLS handshake %d with an agent SVID: %v", i, err)
		}
	}
	waitFor(t, "the connections' registry lookups to stall", func() bool { return slow.waiting.Load() >= maxPreHandshakePerSource })
	if n := h.pendingFrom(attacker.IP.String()); n != maxPreHandshakePerSource {
		t.Errorf("%d connections wait in the registry lookup but the source holds %d handshake slots; want %d", maxPreHandshakePerSource, n, maxPreHandshakePerSource)
	}
	before := h.srv.RefusedConnections(RefusedHandshakesPerSource)
	extra := h.dialFrom(t, attacker)
	waitFor(t, "the per-source refusal of a connection past the bound", func() bool {
		return h.srv.RefusedConnections(RefusedHandshakesPerSource) > before
	})
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil {
		t.Errorf("connection past the per-source bound was not closed")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("connection past the per-source bound was not closed (read timed out)")
	}
}
