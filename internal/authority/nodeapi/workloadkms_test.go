package nodeapi

import (
	"context"
	"crypto/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// discard records nothing: the KMS's and the policy store's own events
// are not what these tests look at.
var discard = audit.RecorderFunc(func(context.Context, audit.Event) error { return nil })

// kmsHarness is a Node API serving the workload KMS over a real KMS and
// policy store, keeping the events the Node API audits.
type kmsHarness struct {
	*harness
	kms    *kms.Manager
	policy *policystore.Store

	mu     sync.Mutex
	events []audit.Event
}

func newKMSHarness(t testing.TB) *kmsHarness {
	t.Helper()
	st := memstore.New()
	pathKey := make([]byte, 32)
	rand.Read(pathKey)
	m, err := kms.New(st, pathKey, kms.DefaultTable(), discard)
	if err != nil {
		t.Fatal(err)
	}
	k := &kmsHarness{kms: m, policy: policystore.New(st, discard)}
	k.harness = newHarnessWith(t, func(c *Config) {
		c.KMS, c.Policy = k.kms, k.policy
		c.Audit = audit.RecorderFunc(func(_ context.Context, ev audit.Event) error {
			k.mu.Lock()
			defer k.mu.Unlock()
			k.events = append(k.events, ev)
			return nil
		})
	})
	return k
}

func (k *kmsHarness) auditEvents() []audit.Event {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]audit.Event(nil), k.events...)
}

func (k *kmsHarness) workloadKMS(t testing.TB, svid *x509svid.SVID) wardv1.KMSClient {
	t.Helper()
	return wardv1.NewKMSClient(k.conn(t, svid))
}

func (k *kmsHarness) apply(t testing.TB, pol string) {
	t.Helper()
	if _, err := k.policy.Apply(context.Background(), "admin:uid=0", map[string][]byte{"kms.cedar": []byte(pol)}, ""); err != nil {
		t.Fatal(err)
	}
}

func code(err error) codes.Code { return status.Code(err) }

func TestWorkloadKMSIsAuthorizedByPolicy(t *testing.T) {
	k := newKMSHarness(t)
	ctx := context.Background()
	if _, err := k.kms.Create(ctx, "payments/cards", "restricted", ""); err != nil {
		t.Fatal(err)
	}
	td := testTD.Name()
	payments := k.workloadKMS(t, k.caSigned(t, "/payments"))
	batch := k.workloadKMS(t, k.caSigned(t, "/batch"))

	// No policy yet: fail closed.
	_, err := payments.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("4111")})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no-policy") {
		t.Fatalf("without policy: %v", err)
	}
	k.apply(t, `@id("payments-uses-its-key")
permit(principal == Workload::"spiffe://`+td+`/payments", action in Action::"kms:*", resource == Key::"payments/cards");
@id("restricted-needs-payments")
forbid(principal, action == Action::"kms:decrypt", resource) when { resource.classification == "restricted" } unless { principal == Workload::"spiffe://`+td+`/payments" };`)
	// The engine follows the store's watch: bounded wait for the version.
	var ct *wardv1.EncryptResponse
	deadline := time.Now().Add(5 * time.Second)
	for {
		ct, err = payments.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("4111")})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("allowed workload: %v", err)
	}
	pt, err := payments.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct.Ciphertext})
	if err != nil || string(pt.Plaintext) != "4111" {
		t.Fatalf("decrypt: %v", err)
	}
	_, err = batch.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct.Ciphertext})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "restricted-needs-payments") {
		t.Fatalf("other workload decrypting: %v", err)
	}
	_, err = batch.BatchDecrypt(ctx, &wardv1.BatchDecryptRequest{Items: []*wardv1.DecryptItem{{Ciphertext: ct.Ciphertext}}})
	if code(err) != codes.PermissionDenied {
		t.Fatalf("other workload batch decrypting: %v", err)
	}
	_, err = batch.GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: "payments/cards"})
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "default-deny") {
		t.Fatalf("other workload datakey: %v", err)
	}
	// Revocation applies on the next call.
	if _, err := k.policy.Revoke(ctx, "admin:uid=0", []string{"spiffe://" + td + "/payments"}, nil, false, ""); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		_, err = payments.Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards", Plaintext: []byte("x")})
		if code(err) == codes.PermissionDenied || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "deny-list") {
		t.Fatalf("revoked workload: %v", err)
	}
	// Denials are audited with the caller's SPIFFE ID.
	denied := 0
	for _, ev := range k.auditEvents() {
		if ev.Result == "denied" && strings.HasPrefix(ev.Operation, "kms.") && strings.HasPrefix(ev.Actor, "spiffe://") {
			denied++
		}
	}
	if denied < 4 {
		t.Fatalf("only %d denied KMS calls audited", denied)
	}
	// Without a client certificate the KMS is not reachable at all.
	_, err = k.workloadKMS(t, nil).Encrypt(ctx, &wardv1.EncryptRequest{Key: "payments/cards"})
	if code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous KMS call: %v", err)
	}
}

// TestWorkloadKMSRefusesAgentSVIDs runs the red team's attack end to end:
// with a policy that permits kms:encrypt to every principal of the trust
// domain, an evicted agent's SVID, an agent SVID superseded by renewal and
// even a current agent's SVID are refused by the workload KMS (the /ward/
// namespace holds no workloads), while a workload's SVID is served.
func TestWorkloadKMSRefusesAgentSVIDs(t *testing.T) {
	k := newKMSHarness(t)
	ctx := context.Background()
	if _, err := k.kms.Create(ctx, "team/data", "internal", ""); err != nil {
		t.Fatal(err)
	}
	k.apply(t, `@id("whole-domain-encrypts")
permit(principal in TrustDomain::"`+testTD.Name()+`", action == Action::"kms:encrypt", resource);`)
	workload := k.workloadKMS(t, k.caSigned(t, "/app"))
	encrypt := func(c wardv1.KMSClient) error {
		_, err := c.Encrypt(ctx, &wardv1.EncryptRequest{Key: "team/data", Plaintext: []byte("x")})
		return err
	}
	// The engine follows the store's watch: bounded wait for the version.
	deadline := time.Now().Add(5 * time.Second)
	err := encrypt(workload)
	for ; err != nil && time.Now().Before(deadline); err = encrypt(workload) {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("workload under a permitting policy: %v", err)
	}

	current := k.agentCaller(t).svid
	evicted := k.agentCaller(t).svid
	if _, _, err := k.reg.EvictAgent(ctx, evicted.ID, nil); err != nil {
		t.Fatal(err)
	}
	first := k.agentCaller(t).svid
	svid := first
	for range 2 {
		der, key := csr(t)
		r, err := k.client(t, svid).RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: der})
		if err != nil {
			t.Fatal(err)
		}
		svid = svidOf(t, r.Chain, key)
	}
	for _, tc := range []struct {
		name string
		svid *x509svid.SVID
		msg  string
	}{
		{"evicted agent", evicted, "evicted"},
		{"superseded agent SVID", first, "no longer its current one"},
		{"current agent", current, "not a workload identity"},
	} {
		err := encrypt(k.workloadKMS(t, tc.svid))
		if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s (%s) calling kms:encrypt: %v; want PermissionDenied %q", tc.name, tc.svid.ID, err, tc.msg)
		}
	}
}

// TestWorkloadKMSRefusesMadeUpKeyNames runs the attack of a workload with
// no permission on the key names it sends: names of a megabyte each, all
// different. Each is refused as invalid before any policy decision, so
// neither the decision cache nor the audit log keeps the caller's string
// (a denial event would carry the name, one megabyte per call).
func TestWorkloadKMSRefusesMadeUpKeyNames(t *testing.T) {
	k := newKMSHarness(t)
	ctx := context.Background()
	c := k.workloadKMS(t, k.caSigned(t, "/batch"))
	base := len(k.auditEvents())
	for i := range 8 {
		name := strings.Repeat(string(rune('a'+i)), 1<<20)
		_, err := c.Encrypt(ctx, &wardv1.EncryptRequest{Key: name, Plaintext: []byte("x")})
		if code(err) != codes.InvalidArgument || len(err.Error()) > 1024 {
			t.Fatalf("a 1 MiB key name: %v (%d bytes)", code(err), len(err.Error()))
		}
		_, err = c.BatchGenerateDataKey(ctx, &wardv1.BatchGenerateDataKeyRequest{Key: name + "/x", Count: 1})
		if code(err) != codes.InvalidArgument {
			t.Fatalf("a 1 MiB key name (batch data keys): %v", code(err))
		}
	}
	for _, ev := range k.auditEvents()[base:] {
		if len(ev.Key) > 128 {
			t.Fatalf("an audit event keeps a %d-byte key name", len(ev.Key))
		}
	}
	// A well-formed unknown name is still decided by policy (denied: no
	// policy), not answered by the name check.
	if _, err := c.Encrypt(ctx, &wardv1.EncryptRequest{Key: "no/such-key", Plaintext: []byte("x")}); code(err) != codes.PermissionDenied {
		t.Fatalf("a well-formed unknown key name: %v", err)
	}
}

// TestWorkloadKMSRefusesRevokedSerial: `ward revoke --serial` of one
// workload SVID refuses that certificate's KMS calls (audited), while
// another SVID of the same SPIFFE ID is still served.
func TestWorkloadKMSRefusesRevokedSerial(t *testing.T) {
	k := newKMSHarness(t)
	ctx := context.Background()
	if _, err := k.kms.Create(ctx, "team/data", "internal", ""); err != nil {
		t.Fatal(err)
	}
	k.apply(t, `@id("app-encrypts")
permit(principal == Workload::"spiffe://`+testTD.Name()+`/app", action == Action::"kms:encrypt", resource);`)
	stolen, fresh := k.caSigned(t, "/app"), k.caSigned(t, "/app")
	encrypt := func(s *x509svid.SVID) error {
		_, err := k.workloadKMS(t, s).Encrypt(ctx, &wardv1.EncryptRequest{Key: "team/data", Plaintext: []byte("x")})
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	err := encrypt(stolen)
	for ; err != nil && time.Now().Before(deadline); err = encrypt(stolen) {
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	serial := stolen.Certificates[0].SerialNumber.Text(16)
	if _, err := k.policy.Revoke(ctx, "admin:uid=0", nil, []string{serial}, false, ""); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	err = encrypt(stolen)
	for ; code(err) != codes.PermissionDenied && time.Now().Before(deadline); err = encrypt(stolen) {
		time.Sleep(20 * time.Millisecond)
	}
	if code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "deny-list") {
		t.Fatalf("revoked serial: %v", err)
	}
	if err := encrypt(fresh); err != nil {
		t.Fatalf("another SVID of the same ID: %v", err)
	}
	denied := false
	for _, ev := range k.auditEvents() {
		denied = denied || ev.Operation == "kms.encrypt" && ev.Result == audit.ResultDenied && ev.Actor == stolen.ID.String()
	}
	if !denied {
		t.Fatal("the refusal was not audited")
	}
}
