package server

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/config"
)

// TestSealWhileCallsReadIdentity: `ward operator seal` while calls that
// took the unsealed state just before it still read its identity
// services (what every CA, registry and federation admin call, the
// dashboard and the policy store's principals do). The seal stops those
// services under them: under -race nothing races, and no call panics on
// an identity that went away between two reads.
func TestSealWhileCallsReadIdentity(t *testing.T) {
	ctx := context.Background()
	cfg := baseConfig(filepath.Join(t.TempDir(), "a"))
	cfg.Identity = config.Identity{NodeAPIAddress: "127.0.0.1:0"}
	cfg.Federation = config.Federation{BundleEndpoint: config.BundleEndpoint{Address: "127.0.0.1:0"}}
	srv, c := start(t, cfg)
	if _, err := c.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	st, err := srv.state()
	if err != nil {
		t.Fatal(err)
	}
	l := lifecycle{srv}
	principals, tainted := srv.principalsFunc(st), srv.taintedKeysFunc(st)
	var calls atomic.Int64
	started := make(chan struct{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// In-process, as the handlers and jobs call them (a call
				// through the socket would order itself before the seal).
				srv.NodeAPIAddress()
				srv.BundleEndpointAddress()
				srv.federation()
				if sv, err := l.Services(); err == nil && sv.CA != nil {
					sv.CA.TaintedKeyIDs()
				}
				principals(ctx) // the unsealed state held across the seal, as the policy store holds it
				tainted()
				if calls.Add(1) == 64 {
					close(started)
				}
			}
		}()
	}
	<-started
	if _, err := c.Operator.Seal(ctx, &wardv1.SealRequest{}); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if !srv.Sealed() || srv.NodeAPIAddress() != "" || srv.federation() != nil {
		t.Fatal("sealed, the authority still reports identity services")
	}
}
