package server

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

func allEvents(t *testing.T, srv *Server) []audit.Event {
	t.Helper()
	st, err := srv.state()
	if err != nil {
		t.Fatal(err)
	}
	return authoritytest.ReadEvents(t, st.audit)
}

// An unseal that cannot start its services: a busy identity.node_api_address
// refuses each share up front (progress kept), and a failure after the
// last share (here: the x509pop CA bundle vanished) is an error that says
// the progress was reset, recorded in the audit log as a failure, never
// as "operator.unseal ok".
func TestUnsealWhoseServicesFail(t *testing.T) {
	root := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	pki := newTestPKI(t, root, "node-ca")
	bundle, _ := os.ReadFile(pki.file)
	cfg := baseConfig(filepath.Join(root, "a"))
	cfg.Seal = config.Seal{Type: "shamir"}
	cfg.Identity = config.Identity{NodeAPIAddress: addr, X509PopCABundle: pki.file}
	srv, c := start(t, cfg)
	ctx := context.Background()
	ir, err := c.Operator.Init(ctx, &wardv1.InitRequest{Shares: 3, Threshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	progress := func() uint32 {
		t.Helper()
		s, err := c.Operator.Status(ctx, &wardv1.StatusRequest{})
		if err != nil || !s.Sealed {
			t.Fatalf("status: %v %v", s, err)
		}
		return s.Progress
	}
	unseal := func(share string) error {
		_, err := c.Operator.Unseal(ctx, &wardv1.UnsealRequest{Share: share})
		return err
	}

	// Port busy before the first share: refused, nothing accepted.
	err = unseal(ir.Shares[0])
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "identity.node_api_address "+addr) || !strings.Contains(err.Error(), "not accepted") {
		t.Fatalf("first share with the port busy: %v", err)
	}
	if p := progress(); p != 0 {
		t.Fatalf("progress %d after a refused share", p)
	}
	busy.Close()
	if err := unseal(ir.Shares[0]); err != nil {
		t.Fatal(err)
	}
	// Busy again before the last share: refused, progress kept.
	busy, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("could not re-occupy %s: %v", addr, err)
	}
	if err := unseal(ir.Shares[1]); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "stays 1/2") {
		t.Fatalf("last share with the port busy: %v", err)
	}
	if p := progress(); p != 1 {
		t.Fatalf("progress %d, want 1 kept", p)
	}
	busy.Close()

	// A failure the preflight cannot see, after the last share.
	os.Remove(pki.file)
	err = unseal(ir.Shares[1])
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "x509pop_ca_bundle") || !strings.Contains(err.Error(), "progress was reset to 0/2") {
		t.Fatalf("last share whose services fail: %v", err)
	}
	if p := progress(); p != 0 {
		t.Fatalf("progress %d after a failed unseal", p)
	}
	if srv.NodeAPIAddress() != "" {
		t.Fatal("Node API up after a failed unseal")
	}

	// Fix the cause, unseal, and read what the audit log says happened.
	os.WriteFile(pki.file, bundle, 0o600)
	for _, sh := range ir.Shares[:2] {
		if err := unseal(sh); err != nil {
			t.Fatal(err)
		}
	}
	var seq []string
	for _, ev := range allEvents(t, srv) {
		if ev.Operation != "operator.unseal" {
			continue
		}
		switch {
		case ev.Result == audit.ResultOK:
			seq = append(seq, "ok")
		case strings.Contains(ev.Error, "node_api_address"):
			seq = append(seq, "busy")
		case strings.Contains(ev.Error, "x509pop_ca_bundle"):
			seq = append(seq, "services")
		default:
			seq = append(seq, ev.Result+":"+ev.Error)
		}
	}
	if got := strings.Join(seq, ","); got != "busy,busy,services,ok" {
		t.Fatalf("audited unseals: %s", got)
	}
}
