package server

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/federation"
)

// staleNetwork and staleCatalog serve what an authority holds in memory:
// a list that no longer follows the other authorities' once it is cut off
// (an evicted agent's tunnel, deleted elsewhere, still in it). They block
// until their context ends, then answer the stale list.
type staleNetwork struct{ calls atomic.Int32 }

func (s *staleNetwork) WaitNetwork(ctx context.Context, after uint64) (federation.NetworkList, error) {
	s.calls.Add(1)
	<-ctx.Done()
	return federation.NetworkList{Sequence: 3, Tunnels: []federation.NetworkTunnel{{Endpoint: "evicted.example:51820"}}}, nil
}
func (s *staleNetwork) NetworkShared(spiffeid.TrustDomain) bool { return true }

type staleCatalog struct{ calls atomic.Int32 }

func (s *staleCatalog) WaitCatalog(ctx context.Context, after uint64) (federation.Catalog, error) {
	s.calls.Add(1)
	<-ctx.Done()
	return federation.Catalog{Sequence: 3}, nil
}

// TestFederationChannelsRefusedWhileCutOff runs the attack of a federated
// peer polling the network and catalog channels of an authority cut off
// from etcd: before, it was served the lists held in memory (the tunnel of
// an agent evicted through another authority kept being relayed). Refused
// at once while cut off, a wait under way ends refused when the cut
// happens; connected, the source answers.
func TestFederationChannelsRefusedWhileCutOff(t *testing.T) {
	cut := errors.New(cutOffMessage)
	var down atomic.Bool
	lost := make(chan struct{})
	available := func() (<-chan struct{}, error) {
		if down.Load() {
			return nil, cut
		}
		return lost, nil
	}
	sn, sc := &staleNetwork{}, &staleCatalog{}
	n, c := cutOffNetwork{sn, available}, cutOffCatalog{sc, available}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if l, err := n.WaitNetwork(ctx, 0); err != nil || l.Sequence != 3 {
		t.Fatalf("connected network: %+v %v", l, err)
	}
	if l, err := c.WaitCatalog(ctx, 0); err != nil || l.Sequence != 3 {
		t.Fatalf("connected catalog: %+v %v", l, err)
	}
	cancel()

	// The cut during a wait: the wait ends, refused.
	done := make(chan error, 2)
	go func() { _, err := n.WaitNetwork(context.Background(), 3); done <- err }()
	go func() { _, err := c.WaitCatalog(context.Background(), 3); done <- err }()
	for sn.calls.Load() < 2 || sc.calls.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	down.Store(true)
	close(lost)
	for range 2 {
		select {
		case err := <-done:
			if !errors.Is(err, cut) {
				t.Fatalf("wait under way at the cut: %v", err)
			}
		case <-time.After(time.Minute): // a bound on the test, not a timing assertion
			t.Fatal("a wait under way did not end at the cut")
		}
	}

	// Cut off: refused at once, the stale source never asked.
	before := sn.calls.Load() + sc.calls.Load()
	if l, err := n.WaitNetwork(context.Background(), 0); !errors.Is(err, cut) || len(l.Tunnels) != 0 {
		t.Fatalf("cut off network: %+v %v", l, err)
	}
	if _, err := c.WaitCatalog(context.Background(), 0); !errors.Is(err, cut) {
		t.Fatalf("cut off catalog: %v", err)
	}
	if after := sn.calls.Load() + sc.calls.Load(); after != before {
		t.Fatal("the in-memory lists were consulted while cut off")
	}
}
