package server

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// TestRevocationsRefusedWhileCutOff runs the attack of a federated
// subscriber landing on an authority cut off from etcd: its policy
// versions stopped following the others', so a long poll there would hold
// the subscriber for the whole wait, poll after poll, while revocations
// are stored elsewhere. It is refused at once while cut off, and a wait
// under way ends at once when the cut happens; connected, it serves.
func TestRevocationsRefusedWhileCutOff(t *testing.T) {
	ps := policystore.New(memstore.New(), audit.RecorderFunc(func(context.Context, audit.Event) error { return nil }))
	td := spiffeid.RequireTrustDomainFromString("a.example")
	cut := errors.New(cutOffMessage)
	lost := make(chan struct{})
	var down atomic.Bool
	o := ownRevocations{ps: ps, td: td, available: func() (<-chan struct{}, error) {
		if down.Load() {
			return nil, cut
		}
		return lost, nil
	}}

	// Connected: a wait with nothing newer answers the current version.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if r, err := o.Revocations(ctx, 0); err != nil || r.TrustDomain != "a.example" {
		t.Fatalf("connected: %+v, %v", r, err)
	}
	cancel()

	// Cut off before the poll: refused without waiting.
	down.Store(true)
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	if _, err := o.Revocations(ctx, 0); err == nil || !strings.Contains(err.Error(), "cut off") {
		t.Fatalf("cut off: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the refusal waited for the poll's end")
	}
	cancel()

	// Cut off during the wait: the poll ends then, refused.
	down.Store(false)
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := o.Revocations(ctx, 0); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	down.Store(true)
	close(lost)
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "cut off") {
		t.Fatalf("cut off during the wait: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the poll waited for its end after the cut")
	}
}
