package nodeapi

import (
	"context"
	"fmt"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/testutil/benchcpu"
)

// noopKMS answers Encrypt at once with a canned reply: the mTLS stack, the
// Node API's authentication and limits alone.
type noopKMS struct {
	wardv1.UnimplementedKMSServer
	resp *wardv1.EncryptResponse
}

func (n *noopKMS) Encrypt(context.Context, *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	return n.resp, nil
}

// BenchmarkWorkloadKMSCallers measures the workload KMS as workloads reach
// it: gRPC over mTLS on loopback (TLS 1.3, the workload's X509-SVID), the
// Node API's authentication, the policy decision on the caller's SPIFFE ID
// and the KMS encrypt, from 8 and 64 concurrent callers on one connection
// (as one workload's client). The KMS audits to a recorder that keeps
// nothing: this is the stack and the policy check without the durable
// audit (server.BenchmarkNodeKMSEncryptCallers has it). "noop" is the same
// request and reply through the same server, listener, TLS and
// interceptors with a KMS that does nothing: the ceiling of the stack.
func BenchmarkWorkloadKMSCallers(b *testing.B) {
	req := &wardv1.EncryptRequest{Key: "bench", Plaintext: make([]byte, 32)}
	for _, kind := range []string{"encrypt", "noop"} {
		for _, callers := range []int{8, 64} {
			b.Run(fmt.Sprintf("%s/callers=%d", kind, callers), func(b *testing.B) {
				k := newKMSHarness(b)
				ctx := context.Background()
				if _, err := k.kms.Create(ctx, "bench", "confidential", ""); err != nil {
					b.Fatal(err)
				}
				k.apply(b, `@id("bench") permit(principal == Workload::"spiffe://`+testTD.Name()+`/bench", action == Action::"kms:encrypt", resource == Key::"bench");`)
				svid := k.caSigned(b, "/bench")
				c := k.workloadKMS(b, svid)
				var ct *wardv1.EncryptResponse
				var err error
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					if ct, err = c.Encrypt(ctx, req); err == nil || time.Now().After(deadline) {
						break
					}
				}
				if err != nil {
					b.Fatal(err)
				}
				if kind == "noop" {
					h := newHarnessMounting(b, nil, &noopKMS{resp: ct}, nil)
					c = wardv1.NewKMSClient(h.conn(b, h.caSigned(b, "/bench")))
				}
				benchcpu.Callers(b, callers, func(ctx context.Context) error {
					r, err := c.Encrypt(ctx, req)
					if err == nil && len(r.Ciphertext) == 0 {
						err = fmt.Errorf("empty reply")
					}
					return err
				})
			})
		}
	}
}
