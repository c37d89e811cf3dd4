package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// exampleStore returns the store the authority passes (barrier-encrypted in
// ward); here an in-memory one.
func exampleStore() store.Store { return memstore.New() }

func Example() {
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("prod-eu.example.org")
	authority, err := ca.Open(ctx, exampleStore(), ca.Config{TrustDomain: td}, nil)
	if err != nil {
		panic(err)
	}
	if err := authority.Init(ctx); err != nil { // `ward operator init`
		panic(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader) // the workload's key, made by the agent
	id := spiffeid.RequireFromPath(td, "/ns/payments/sa/api")
	chain, err := authority.SignX509SVID(ctx, ca.SVIDRequest{ID: id, PublicKey: key.Public()})
	if err != nil {
		panic(err)
	}
	bundle, _ := authority.Bundle()
	got, _, err := x509svid.Verify(chain, bundle.X509Bundle())
	fmt.Println(got, len(chain), err)
	// Output: spiffe://prod-eu.example.org/ns/payments/sa/api 2 <nil>
}
