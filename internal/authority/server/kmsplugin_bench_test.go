package server

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/wardproject/ward/internal/integrations/k8s/kmsplugin"
)

// svidAndBundle is a fixed SVID and bundle as the plugin's SVIDSource (the
// agent's Workload API is not what this measures).
type svidAndBundle struct {
	*x509svid.SVID
	*spiffebundle.Bundle
}

// BenchmarkKMSPluginMTLSEncryptCallers is BenchmarkKMSPluginEncryptCallers
// in the plugin's mTLS mode: the k8s.io/kms client over the plugin's unix
// socket, the plugin as a workload over mTLS to the Node API (TLS 1.3,
// authentication, policy decision), the audited KMS; 8 and 64 callers as
// BenchmarkNodeKMSEncryptCallers, its ceiling without the plugin.
func BenchmarkKMSPluginMTLSEncryptCallers(b *testing.B) {
	seed := &kmsapi.EncryptRequest{Plaintext: make([]byte, 32), Uid: "bench"}
	for _, callers := range []int{8, 64} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			e := startIdentity(b)
			ctx := context.Background()
			e.benchKey(b, `@id("bench") permit(principal == Workload::"spiffe://`+testTD+`/kms-plugin", action in [Action::"kms:encrypt", Action::"kms:decrypt"], resource == Key::"bench");`)
			sock := filepath.Join(b.TempDir(), "kms.sock")
			cfg := &kmsplugin.Config{Socket: sock, Cluster: "bench", Key: "bench", Authority: kmsplugin.AuthorityConfig{
				NodeAPI: e.srv.NodeAPIAddress(), ServerID: serverID().String(), WorkloadAPISocket: "/unused"}}
			auth, err := kmsplugin.NodeAPIAuthorityFor(cfg, svidAndBundle{e.workloadSVID(b, "/kms-plugin"), e.bundle})
			if err != nil {
				b.Fatal(err)
			}
			defer auth.Close()
			ln, err := kmsplugin.Listen(sock)
			if err != nil {
				b.Fatal(err)
			}
			pctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { kmsplugin.New(cfg, auth).Serve(pctx, ln); close(done) }()
			defer func() { cancel(); <-done }()
			conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			kc := kmsapi.NewKeyManagementServiceClient(conn)
			untilFirstCall(b, func() error { _, err := kc.Encrypt(ctx, seed); return err })
			st, err := e.srv.state()
			if err != nil {
				b.Fatal(err)
			}
			measureCallers(b, st, callers, func(ctx context.Context) error {
				r, err := kc.Encrypt(ctx, seed)
				if err == nil && r.KeyId == "" {
					err = fmt.Errorf("no key_id")
				}
				return err
			})
		})
	}
}
