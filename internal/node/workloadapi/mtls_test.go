package workloadapi

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestMTLSAcrossRotations: two workloads on two nodes (two agents' sources,
// each with its own cached bundle, two sockets) get their SVIDs from
// go-spiffe X509Sources and talk mTLS, with a new handshake per message and
// one long-lived connection, while the SVIDs, the intermediate and the root
// rotate. No handshake may fail, and each side must be seen using its new
// material after each rotation, including the mixed state where one side has
// rotated and the other not yet.
func TestMTLSAcrossRotations(t *testing.T) {
	ctx := testCtx(t)
	c := newTestCA(t)
	srcA, srcB := newMemSource(t, c), newMemSource(t, c)
	idA := srcA.addEntry(t, "/ns/a", uidSelector(), "test:socket:a")
	idB := srcB.addEntry(t, "/ns/b", uidSelector(), "test:socket:b")
	addrA := serve(t, srcA, workload("a"))
	addrB := serve(t, srcB, workload("b"))

	xsA, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(addrA)))
	if err != nil {
		t.Fatal(err)
	}
	defer xsA.Close()
	xsB, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(gsw.WithAddr(addrB)))
	if err != nil {
		t.Fatal(err)
	}
	defer xsB.Close()
	if s, _ := xsA.GetX509SVID(); s.ID != idA {
		t.Fatalf("A got %s", s.ID)
	}

	// A serves; it records the serial of B's certificate per handshake.
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(xsA, xsA, tlsconfig.AuthorizeID(idB)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var seenByA sync.Map // serial string -> true
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				tc := conn.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return // the client reports the failure
				}
				seenByA.Store(tc.ConnectionState().PeerCertificates[0].SerialNumber.String(), true)
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(conn, "ack %s", line); err != nil {
						return
					}
				}
			}()
		}
	}()

	clientCfg := tlsconfig.MTLSClientConfig(xsB, xsB, tlsconfig.AuthorizeID(idA))
	talk := func(conn net.Conn, r *bufio.Reader, msg string) error {
		if _, err := fmt.Fprintf(conn, "%s\n", msg); err != nil {
			return err
		}
		got, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got != "ack "+msg+"\n" {
			return fmt.Errorf("reply %q", got)
		}
		return nil
	}
	long, err := tls.Dial("tcp", l.Addr().String(), clientCfg)
	if err != nil {
		t.Fatalf("long-lived connection: %v", err)
	}
	defer long.Close()
	longR := bufio.NewReader(long)

	var (
		stop      atomic.Bool
		failures  atomic.Int64
		successes atomic.Int64
		firstErr  atomic.Value
		seenByB   sync.Map
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			err := func() error {
				conn, err := tls.Dial("tcp", l.Addr().String(), clientCfg)
				if err != nil {
					return fmt.Errorf("handshake: %w", err)
				}
				defer conn.Close()
				seenByB.Store(conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), true)
				if err := talk(conn, bufio.NewReader(conn), fmt.Sprintf("msg %d", i)); err != nil {
					return err
				}
				return talk(long, longR, fmt.Sprintf("long %d", i))
			}()
			if err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err)
			} else {
				successes.Add(1)
			}
		}
	}()

	// waitUsed blocks until handshakes used both new certificates.
	waitUsed := func(phase string, serialA, serialB *big.Int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second) // liveness guard, not a timing assertion
		for {
			_, okB := seenByB.Load(serialA.String())
			_, okA := seenByA.Load(serialB.String())
			if okA && okB {
				return
			}
			if time.Now().After(deadline) || failures.Load() > 0 {
				t.Fatalf("%s: new SVIDs not in use (A's seen by B: %v, B's seen by A: %v); failures %d, first %v",
					phase, okB, okA, failures.Load(), firstErr.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitBundle := func(phase string, roots int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			ba, errA := xsA.GetX509BundleForTrustDomain(td)
			bb, errB := xsB.GetX509BundleForTrustDomain(td)
			if errA == nil && errB == nil && len(ba.X509Authorities()) == roots && len(bb.X509Authorities()) == roots {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: bundles did not reach %d roots", phase, roots)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	sa, sb := xsSerial(t, xsA), xsSerial(t, xsB)
	waitUsed("initial", sa, sb)
	// reissue rotates A's SVID first and waits until the peers talk with A
	// new and B old (the mixed state every rotation passes through), then
	// rotates B's, and waits for a few more exchanges.
	reissue := func(phase string) {
		t.Helper()
		a := srcA.issue(t, idA).Chain[0].SerialNumber
		waitUsed(phase+" (A new, B old)", a, xsSerial(t, xsB))
		b := srcB.issue(t, idB).Chain[0].SerialNumber
		waitUsed(phase+" (both new)", a, b)
		for n := successes.Load(); successes.Load() < n+5; {
			if failures.Load() > 0 {
				t.Fatalf("%s: %v", phase, firstErr.Load())
			}
			time.Sleep(time.Millisecond)
		}
	}

	// 1. SVID rotation (new keys, same intermediate).
	reissue("svid rotation")

	// 2. Intermediate rotation.
	if err := c.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	reissue("intermediate rotation")
	interNow, _ := c.ActiveIntermediate()
	if s, _ := xsA.GetX509SVID(); !s.Certificates[1].Equal(interNow) {
		t.Fatal("A's chain does not carry the new intermediate")
	}

	// 3. Root rotation: publish the new root first, then sign under it.
	if err := c.PrepareRoot(ctx); err != nil {
		t.Fatal(err)
	}
	srcA.refreshBundle(t)
	srcB.refreshBundle(t)
	waitBundle("root prepared", 2)
	if err := c.RotateRoot(ctx); err != nil {
		t.Fatal(err)
	}
	reissue("root rotation")

	// 4. Another SVID rotation under the new root.
	reissue("svid rotation under new root")

	stop.Store(true)
	<-done
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d exchanges failed; first: %v", f, f+successes.Load(), firstErr.Load())
	}
	t.Logf("%d exchanges (new handshake each + long-lived connection) across SVID, intermediate and root rotations, 0 failures", successes.Load())
}

func xsSerial(t *testing.T, xs *gsw.X509Source) *big.Int {
	t.Helper()
	s, err := xs.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return s.Certificates[0].SerialNumber
}
