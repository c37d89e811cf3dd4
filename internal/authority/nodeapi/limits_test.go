package nodeapi

import (
	"bufio"
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

// floodCodec marshals every AttestRequest as the same pre-built bytes, so
// an attacking client in this process does not hold a copy per call (the
// benchmark measures the server, not the attacker).
type floodCodec struct{ raw []byte }

func (f floodCodec) Marshal(v any) ([]byte, error) {
	if _, ok := v.(*wardv1.AttestRequest); ok {
		return f.raw, nil
	}
	return proto.Marshal(v.(proto.Message))
}
func (floodCodec) Unmarshal(b []byte, v any) error { return proto.Unmarshal(b, v.(proto.Message)) }
func (floodCodec) Name() string                    { return "proto" }

var _ encoding.Codec = floodCodec{}

// oversizedAttest is an AttestRequest whose csr field has n bytes.
func oversizedAttest(n int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	return append(b, make([]byte, n)...)
}

// attestRaw sends raw as the first Attest message and returns the answer.
func (h *harness) attestRaw(t testing.TB, ctx context.Context, raw []byte) error {
	stream, err := h.client(t, nil).Attest(ctx, grpc.ForceCodec(floodCodec{raw}))
	if err != nil {
		return err
	}
	_ = stream.Send(&wardv1.AttestRequest{}) // may fail once the server resets; Recv has the status
	_, err = stream.Recv()
	return err
}

// TestOversizedAttestIsRefused: an unauthenticated Attest larger than an
// attestation needs is refused with ResourceExhausted and a message naming
// the limit (grpc-go writes that status itself: "received message larger
// than max (N vs. 65536)"), before the server reads the body; a legitimate Attest still works;
// Attest on a connection with an SVID (which would get the large limit)
// is refused.
func TestOversizedAttestIsRefused(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for _, n := range []int{maxAttestMsg + 1, 30 << 20} {
		err := h.attestRaw(t, ctx, oversizedAttest(n))
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "received message larger than max") || !strings.Contains(err.Error(), "65536)") {
			t.Fatalf("Attest of %d bytes: %v; want ResourceExhausted naming the limit", n, err)
		}
	}
	agent, err := h.attest(t, h.token(t))
	if err != nil {
		t.Fatalf("legitimate join-token Attest: %v", err)
	}
	if _, err := h.client(t, agent).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatal(err)
	}
	stream, err := h.client(t, agent).Attest(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Attest with a client certificate: %v; want FailedPrecondition", err)
	}
	// Unauthenticated unary calls are bounded the same way (they are read
	// before authentication): a large Sync without a certificate is
	// refused by size, not buffered.
	conn := h.conn(t, nil)
	_, err = wardv1.NewNodeClient(conn).SignX509SVIDs(ctx, &wardv1.SignX509SVIDsRequest{Params: []*wardv1.X509SVIDParams{{Csr: make([]byte, maxAttestMsg)}}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("large SignX509SVIDs without a certificate: %v", err)
	}
}

// TestConcurrentAttestsAreBounded: past MaxConcurrentAttests, further
// attestations are refused at once.
func TestConcurrentAttestsAreBounded(t *testing.T) {
	h := newHarnessWith(t, func(c *Config) { c.MaxConcurrentAttests = 2 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 { // two attestations that never send their first message
		if _, err := h.client(t, nil).Attest(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Bounded wait until the server holds both slots (stream creation is
	// asynchronous on the server side).
	for i := 0; len(h.srv.attests) < 2; i++ {
		if i > 500 {
			t.Fatalf("server holds %d attestation slots", len(h.srv.attests))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stream, err := h.client(t, nil).Attest(ctx)
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "too many attestations in progress") {
		t.Fatalf("third concurrent Attest: %v", err)
	}
}

// vmHWM is this process's peak resident set size in bytes.
func vmHWM(tb testing.TB) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		tb.Skip("no /proc/self/status")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb * 1024
		}
	}
	tb.Skip("no VmHWM")
	return 0
}

// BenchmarkAttestFlood runs the red team's attack: 30 concurrent
// unauthenticated Attests with a 30 MB CSR, per iteration. It reports the
// process's peak RSS (VmHWM; the attacker shares one buffer, so it is the
// server's growth) and how many were refused. Run it alone, as VmHWM only
// rises: go test -run '^$' -bench AttestFlood ./internal/authority/nodeapi
// (before the per-connection limits the authority went from ~30 MB to
// over 1 GB).
func BenchmarkAttestFlood(b *testing.B) {
	h := newHarnessWith(b, nil)
	raw := oversizedAttest(30 << 20)
	const attackers = 30
	conns := make([]wardv1.NodeClient, attackers)
	for i := range conns {
		conns[i] = h.client(b, nil)
	}
	before := vmHWM(b)
	var refused atomic.Int64
	b.ResetTimer()
	for b.Loop() {
		var wg sync.WaitGroup
		for i := range attackers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				stream, err := conns[i].Attest(ctx, grpc.ForceCodec(floodCodec{raw}))
				if err == nil {
					_ = stream.Send(&wardv1.AttestRequest{})
					_, err = stream.Recv()
				}
				if status.Code(err) == codes.ResourceExhausted {
					refused.Add(1)
				}
			}()
		}
		wg.Wait()
	}
	b.StopTimer()
	b.ReportMetric(vmHWM(b)/(1<<20), "peakRSS-MiB")
	b.ReportMetric((vmHWM(b)-before)/(1<<20), "RSSgrowth-MiB")
	b.ReportMetric(float64(refused.Load())/float64(b.N*attackers), "refused/op")
}
