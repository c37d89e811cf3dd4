package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/testutil/clock"
)

// A hostile peer answers every catalog long-poll at once with a new
// sequence and other services: each accepted catalog is audited, stored
// and published as a policy version, so the follower waits after
// revocationBurst polls, as on the revocation channel.
func TestCatalogFollowerThrottlesAPeerAnsweringAtOnce(t *testing.T) {
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
		w.Header().Set(catalogHeader, "1")
		_ = json.NewEncoder(w).Encode(Catalog{TrustDomain: tdA.Name(), Sequence: uint64(n),
			Services: []catalog.Service{{Name: fmt.Sprintf("s%d", n), SPIFFEID: "spiffe://a.example/s", Gateway: "127.0.0.1:1"}}}) // the endpoint's host: allowed without allowed_gateways
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	var updates atomic.Int32
	m, err := Open(context.Background(), Options{Store: memstore.New(), TrustDomain: tdB, Audit: audit.RecorderFunc((&auditLog{}).append),
		Clock: clock.At(time.Now()).Now, FetchTimeout: 5 * time.Second,
		OnCatalog: func(context.Context, spiffeid.TrustDomain, map[string]string) { updates.Add(1) }})
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
		waited.Store(int64(d))
		cancel()
	}}
	done := make(chan struct{})
	go func() { defer close(done); m.followCatalog(ctx, rel, c) }()
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
