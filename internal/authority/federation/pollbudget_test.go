package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// A hostile (or broken) peer answers every long-poll at once with a new
// sequence and another deny-list. Each accepted answer is audited, stored
// and published as a policy version to every agent, so the follower must
// not poll it in a tight loop: after revocationBurst polls it waits.
func TestRevocationFollowerThrottlesAPeerAnsweringAtOnce(t *testing.T) {
	a, b := newCA(t, tdA), newCA(t, tdB)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := a.SignX509SVID(context.Background(), ca.SVIDRequest{ID: spiffeid.RequireFromPath(tdA, "/ward/server"), PublicKey: k.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: k, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	var polls atomic.Int32
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := polls.Add(1)
		w.Header().Set(revocationHeader, "1")
		_ = json.NewEncoder(w).Encode(Revocations{TrustDomain: tdA.Name(), Sequence: uint64(n),
			DenyList: policy.DenyList{Serials: []string{string(rune('a' + n%2))}}})
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	var updates atomic.Int32
	m, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdB, Audit: audit.RecorderFunc((&auditLog{}).append),
		Clock: clock.At(time.Now()).Now, FetchTimeout: 5 * time.Second,
		OnRevocations: func(context.Context, spiffeid.TrustDomain, map[string]string) { updates.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	rel := Relationship{TrustDomain: tdA, EndpointURL: "https://" + ln.Addr().String() + "/", Profile: ProfileSPIFFE,
		EndpointID: spiffeid.RequireFromPath(tdA, "/ward/server")}
	if _, err := m.Add(context.Background(), rel, bundleOf(t, a)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waited atomic.Int64
	c := RevocationClient{SVID: serverSVID(t, b), Wait: time.Second, sleep: func(_ context.Context, d time.Duration) {
		// The clock stands still: no poll is refilled. Stop here.
		waited.Store(int64(d))
		cancel()
	}}
	done := make(chan struct{})
	go func() { defer close(done); m.followRevocations(ctx, rel, c) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cancel()
		<-done
		t.Fatalf("the follower polled a peer answering at once %d times without waiting", polls.Load())
	}
	if n := polls.Load(); n != revocationBurst {
		t.Fatalf("polls before the follower waited: %d, want %d", n, revocationBurst)
	}
	if d := time.Duration(waited.Load()); d <= 0 || d > revocationRefill {
		t.Fatalf("waited %s", d)
	}
	if u := updates.Load(); u != revocationBurst {
		t.Fatalf("published %d updates", u)
	}
}

func TestPollBudget(t *testing.T) {
	t0 := time.Now()
	var b pollBudget
	for i := 0; i < revocationBurst; i++ {
		if d := b.take(t0); d != 0 {
			t.Fatalf("poll %d of the burst waits %s", i, d)
		}
	}
	if d := b.take(t0); d != revocationRefill {
		t.Fatalf("after the burst: wait %s", d)
	}
	if d := b.take(t0.Add(revocationRefill)); d != 0 {
		t.Fatalf("after a refill: wait %s", d)
	}
	if d := b.take(t0.Add(revocationRefill + revocationRefill/2)); d != revocationRefill/2 {
		t.Fatalf("half a refill later: wait %s", d)
	}
	// Idle for long: back to a full burst, no more.
	later := t0.Add(time.Hour)
	for i := 0; i < revocationBurst; i++ {
		if d := b.take(later); d != 0 {
			t.Fatalf("poll %d after an hour waits %s", i, d)
		}
	}
	if d := b.take(later); d == 0 {
		t.Fatal("more than a burst after an hour idle")
	}
}
