package nodeapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/policy"
)

// boundHarness is a Node API with a policy store (so entries at their
// bound displace their oldest SVIDs to its deny-list) and the workload
// KMS, whose policy store's audit can fail policy.revoke on demand.
type boundHarness struct {
	*harness
	policy     *policystore.Store
	kms        *kms.Manager
	failRevoke atomic.Bool
	displaced  atomic.Int64 // OnSVIDsDisplaced
	mu         sync.Mutex
	revokes    int // policy.revoke events recorded ok
}

func newBoundHarness(t *testing.T) *boundHarness {
	t.Helper()
	b := newBoundHarnessNoPolicy(t)
	td := testTD.Name()
	if _, err := b.policy.Apply(context.Background(), "admin:uid=0", map[string][]byte{"p.cedar": []byte(`@id("apps-encrypt")
permit(principal in TrustDomain::"` + td + `", action == Action::"kms:encrypt", resource == Key::"team/data");
@id("apps-connect")
permit(principal in TrustDomain::"` + td + `", action == Action::"connect", resource == Service::"payments");`)}, ""); err != nil {
		t.Fatal(err)
	}
	return b
}

// newBoundHarnessNoPolicy is newBoundHarness before any policy is
// applied: there is no deny-list to displace SVIDs to yet.
func newBoundHarnessNoPolicy(t *testing.T) *boundHarness {
	t.Helper()
	b := &boundHarness{}
	st := memstore.New()
	pathKey := make([]byte, 32)
	rand.Read(pathKey)
	var err error
	if b.kms, err = kms.New(st, pathKey, kms.DefaultTable(), discard); err != nil {
		t.Fatal(err)
	}
	b.harness = newHarnessWith(t, func(c *Config) {
		b.policy = policystore.New(st, audit.RecorderFunc(func(_ context.Context, ev audit.Event) error {
			if ev.Operation == "policy.revoke" && b.failRevoke.Load() {
				return errors.New("audit log down")
			}
			if ev.Operation == "policy.revoke" && ev.Result == audit.ResultOK {
				b.mu.Lock()
				b.revokes++
				b.mu.Unlock()
			}
			return nil
		}), policystore.WithClock(c.Clock))
		c.KMS, c.Policy = b.kms, b.policy
		c.OnSVIDsDisplaced = func(n int) { b.displaced.Add(int64(n)) }
	})
	if _, err := b.kms.Create(context.Background(), "team/data", "internal", ""); err != nil {
		t.Fatal(err)
	}
	return b
}

// joinAs attests an agent with a fresh join token for agent path path.
func (h *harness) joinAs(t testing.TB, path string) *x509svid.SVID {
	t.Helper()
	tok, err := h.reg.CreateJoinToken(context.Background(), time.Minute, path)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := h.attestShared(t, tok.Token)
	if err != nil {
		t.Fatalf("attesting as %s: %v", path, err)
	}
	return svid
}

// attestShared is attest over one anonymous connection for the whole
// test (the Node API keeps at most maxAnonPerSource open per source).
func (h *harness) attestShared(t testing.TB, token string) (*x509svid.SVID, error) {
	t.Helper()
	h.anonOnce.Do(func() { h.anon = h.client(t, nil) })
	stream, err := h.anon.Attest(context.Background())
	if err != nil {
		return nil, err
	}
	der, key := csr(t)
	if err := stream.Send(&wardv1.AttestRequest{Csr: der, Step: &wardv1.AttestRequest_JoinToken{JoinToken: &wardv1.JoinTokenAttestation{Token: token}}}); err != nil {
		return nil, err
	}
	r, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	return svidOf(t, r.GetSvid().GetChain(), key), nil
}

// entryUnder registers a workload entry under agent.
func (h *harness) entryUnder(t testing.TB, agent spiffeid.ID, path string) string {
	t.Helper()
	e, err := h.reg.CreateEntry(context.Background(), registry.Entry{SPIFFEID: "spiffe://" + testTD.Name() + path,
		ParentID: agent.String(), Selectors: []attest.Selector{{Type: "unix", Value: "uid:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	return e.ID
}

// signEach asks for one SVID per entry in one call: the SVIDs (nil
// where refused) and the refusals' codes.
func signEach(t testing.TB, c wardv1.NodeClient, entries ...string) ([]*x509svid.SVID, []string) {
	t.Helper()
	req := &wardv1.SignX509SVIDsRequest{}
	keys := make([]*ecdsa.PrivateKey, len(entries))
	for i, e := range entries {
		der, key := csr(t)
		keys[i] = key
		req.Params = append(req.Params, &wardv1.X509SVIDParams{EntryId: e, Csr: der})
	}
	resp, err := c.SignX509SVIDs(context.Background(), req)
	if err != nil {
		t.Fatalf("SignX509SVIDs: %v", err)
	}
	out, refused := make([]*x509svid.SVID, len(entries)), make([]string, len(entries))
	for i, r := range resp.Results {
		if r.Error != nil {
			refused[i] = r.Error.Code
			continue
		}
		out[i] = svidOf(t, r.Chain, keys[i])
	}
	return out, refused
}

// encrypt calls the workload KMS with svid on a new connection.
func (b *boundHarness) encrypt(t testing.TB, svid *x509svid.SVID) error {
	t.Helper()
	_, err := wardv1.NewKMSClient(b.conn(t, svid)).Encrypt(context.Background(), &wardv1.EncryptRequest{Key: "team/data", Plaintext: []byte("x")})
	return err
}

// untilEncrypt waits (bounded) for the workload KMS, which follows the
// policy store, to answer svid with code want.
func (b *boundHarness) untilEncrypt(t testing.TB, svid *x509svid.SVID, want codes.Code, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := b.encrypt(t, svid)
		if code(err) == want && (want == codes.OK || strings.Contains(err.Error(), "deny-list")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: want %v, last %v", what, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proxyAllows decides a connection of svid to the service payments as a
// ward proxy does: the current policy version's bundle (deny-list
// included) compiled, the request made of the peer's leaf.
func (b *boundHarness) proxyAllows(t testing.TB, svid *x509svid.SVID) bool {
	t.Helper()
	ctx := context.Background()
	n, err := b.policy.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.policy.Get(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.CompileBundle(v.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	return set.Decide(policy.Request{Principal: svid.ID.String(), CertSerial: policy.SerialHex(leaf.SerialNumber), Action: policy.ActionConnect,
		Resource: policy.Resource{Type: policy.TypeService, Name: "payments", Port: 8443},
		Context:  policy.Context{SourceTrustDomain: svid.ID.TrustDomain().Name(), TLSVersion: "1.3"}}).Allowed
}

// denyListed returns the serials on the current version's deny-list.
func (b *boundHarness) denyListed(t testing.TB) []string {
	t.Helper()
	ctx := context.Background()
	n, err := b.policy.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.policy.Get(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return v.Bundle.DenyList.Serials
}

func serialOf(s *x509svid.SVID) string { return policy.SerialHex(s.Certificates[0].SerialNumber) }

// TestAgentAtItsBoundCostsNoSigning runs the attack of a compromised
// agent whose entry is at its bound, calling SignX509SVIDs in a loop with
// batches of that entry (and RenewAgent at its own bound): every item is
// refused FailedPrecondition before the CA signs anything. Before, the
// whole batch was signed and then refused, a signature per item per call.
// Without a policy store, or before a policy is applied, the bound is
// MaxIssuedPerEntry; with a policy it is MaxIssuedPerEntry +
// MaxDisplacedPerEntry (the rest displaced).
func TestAgentAtItsBoundCostsNoSigning(t *testing.T) {
	for _, tc := range []struct {
		name       string
		new        func(t *testing.T) *harness
		displacing bool
	}{
		{"no policy store", newHarness, false},
		{"no policy applied", func(t *testing.T) *harness { return newBoundHarnessNoPolicy(t).harness }, false},
		{"displacing", func(t *testing.T) *harness { return newBoundHarness(t).harness }, true},
	} {
		displacing := tc.displacing
		t.Run(tc.name, func(t *testing.T) {
			h := tc.new(t)
			agent := h.agentCaller(t)
			c := h.client(t, agent.svid)
			bound := registry.MaxIssuedPerEntry
			if displacing {
				bound += registry.MaxDisplacedPerEntry
			}
			for i := range bound {
				if _, refused := signEach(t, c, agent.entry); refused[0] != "" {
					t.Fatalf("signing %d within the bound: %s", i, refused[0])
				}
			}
			before := h.ca.SignedX509SVIDs()
			batch := make([]string, 50)
			for i := range batch {
				batch[i] = agent.entry
			}
			for range 20 {
				_, refused := signEach(t, c, batch...)
				for _, r := range refused {
					if r != codes.FailedPrecondition.String() {
						t.Fatalf("an item at the bound: %q, want FailedPrecondition", r)
					}
				}
			}
			// The agent's own SVIDs: attestation and renewals up to the
			// bound, then renewals are refused unsigned too.
			svid := agent.svid
			for i := range bound {
				der, key := csr(t)
				r, err := h.client(t, svid).RenewAgent(context.Background(), &wardv1.RenewAgentRequest{Csr: der})
				if i == bound-1 {
					if code(err) != codes.FailedPrecondition {
						t.Fatalf("renewal beyond the bound: %v", err)
					}
					break
				}
				if err != nil {
					t.Fatalf("renewal %d: %v", i, err)
				}
				svid = svidOf(t, r.Chain, key)
			}
			signed := h.ca.SignedX509SVIDs() - before
			if want := uint64(bound - 1); signed != want {
				t.Fatalf("the CA signed %d X509-SVIDs during 1,000 refused items and %d renewals; want %d (the renewals)", signed, bound-1, want)
			}
		})
	}
}

// TestCrashLoopingAgentKeepsGettingSVIDs: an honest agent without a data
// directory restarting ten times within its SVIDs' lifetime (a new join
// token for the same node each time) gets its own and its workload's
// SVID every time; before, the ninth restart was refused until the first
// SVIDs expired. The two oldest of each are displaced: on the deny-list
// (audited policy.revoke, counted), refused by the workload KMS and by a
// proxy's decision, while the newest work.
func TestCrashLoopingAgentKeepsGettingSVIDs(t *testing.T) {
	b := newBoundHarness(t)
	var agents, workloads []*x509svid.SVID
	var entry string
	for i := range 10 {
		a := b.joinAs(t, "node-crashy")
		if entry == "" {
			entry = b.entryUnder(t, a.ID, "/app/crashy")
		}
		w, refused := signEach(t, b.client(t, a), entry)
		if refused[0] != "" {
			t.Fatalf("restart %d: the workload SVID was refused: %s", i, refused[0])
		}
		agents, workloads = append(agents, a), append(workloads, w[0])
	}
	if n := b.displaced.Load(); n != 4 {
		t.Fatalf("%d SVIDs displaced, want 4 (the two oldest agent and workload SVIDs)", n)
	}
	b.mu.Lock()
	revokes := b.revokes
	b.mu.Unlock()
	if revokes == 0 {
		t.Fatal("no policy.revoke audited for the displaced SVIDs")
	}
	denied := b.denyListed(t)
	for _, s := range []*x509svid.SVID{agents[0], agents[1], workloads[0], workloads[1]} {
		if !slices.Contains(denied, serialOf(s)) {
			t.Fatalf("displaced serial %s not on the deny-list %v", serialOf(s), denied)
		}
	}
	if len(denied) != 4 {
		t.Fatalf("deny-list %v: want only the 4 displaced", denied)
	}
	b.untilEncrypt(t, workloads[9], codes.OK, "the newest workload SVID")
	b.untilEncrypt(t, workloads[0], codes.PermissionDenied, "a displaced workload SVID")
	if b.proxyAllows(t, workloads[0]) || b.proxyAllows(t, workloads[1]) || !b.proxyAllows(t, workloads[2]) || !b.proxyAllows(t, workloads[9]) {
		t.Fatal("a proxy's decision: the displaced must be refused, the others allowed")
	}
}

// TestSigningLoopStaysBounded runs the attack of a compromised agent that
// loops on purpose over its three entries once they displace instead of
// refusing: each entry gets MaxIssuedPerEntry + MaxDisplacedPerEntry
// SVIDs and no more (the rest refused unsigned), the record keeps at most
// MaxIssuedPerEntry per entry and the deny-list at most
// MaxDisplacedPerEntry per entry, every SVID it got is either in the
// record (an eviction revokes it) or on the deny-list, and a displaced
// one is refused by the workload KMS and by a proxy's decision.
func TestSigningLoopStaysBounded(t *testing.T) {
	b := newBoundHarness(t)
	ctx := context.Background()
	agent := b.joinAs(t, "node-loop")
	entries := []string{b.entryUnder(t, agent.ID, "/app/l1"), b.entryUnder(t, agent.ID, "/app/l2"), b.entryUnder(t, agent.ID, "/app/l3")}
	c := b.client(t, agent)
	var got []*x509svid.SVID
	perEntry := map[string]int{}
	for range 40 {
		svids, _ := signEach(t, c, entries...)
		for i, s := range svids {
			if s != nil {
				got = append(got, s)
				perEntry[entries[i]]++
			}
		}
	}
	for _, e := range entries {
		if want := registry.MaxIssuedPerEntry + registry.MaxDisplacedPerEntry; perEntry[e] != want {
			t.Fatalf("entry %s got %d SVIDs in the loop, want %d", e, perEntry[e], want)
		}
	}
	live, err := b.reg.IssuedSVIDs(ctx, agent.ID)
	if err != nil {
		t.Fatal(err)
	}
	if max := 3*registry.MaxIssuedPerEntry + 1; len(live) > max {
		t.Fatalf("%d SVIDs recorded, more than %d", len(live), max)
	}
	denied := b.denyListed(t)
	if max := 3 * registry.MaxDisplacedPerEntry; len(denied) > max {
		t.Fatalf("%d serials on the deny-list, more than %d", len(denied), max)
	}
	for _, s := range got {
		sr := serialOf(s)
		recorded := slices.ContainsFunc(live, func(x registry.Issued) bool {
			n, _ := policy.NormalizeSerial(x.Serial)
			return n == sr
		})
		if !recorded && !slices.Contains(denied, sr) {
			t.Fatalf("SVID %s of %s is neither recorded nor deny-listed: an eviction would miss it", sr, s.ID)
		}
	}
	b.untilEncrypt(t, got[len(got)-1], codes.OK, "the newest SVID")
	b.untilEncrypt(t, got[0], codes.PermissionDenied, "the first (displaced) SVID")
	if b.proxyAllows(t, got[0]) || !b.proxyAllows(t, got[len(got)-1]) {
		t.Fatal("a proxy's decision: the displaced must be refused, the newest allowed")
	}
}

// TestFailedEvictRefusesReattestation runs the window the red team found:
// an eviction whose revocation fails (the audit log refuses policy.revoke)
// and the agent attesting again before the eviction is run again. The
// agent is refused (FailedPrecondition, nothing signed) while the eviction
// is pending; the second eviction revokes its old workload SVID, and then
// it may attest again.
func TestFailedEvictRefusesReattestation(t *testing.T) {
	b := newBoundHarness(t)
	ctx := context.Background()
	agent := b.joinAs(t, "node-evicted")
	w, refused := signEach(t, b.client(t, agent), b.entryUnder(t, agent.ID, "/app/ev"))
	if refused[0] != "" {
		t.Fatal(refused[0])
	}
	b.untilEncrypt(t, w[0], codes.OK, "the workload before the eviction")
	// As the admin API's EvictAgent revokes.
	revoke := func(ctx context.Context, svids []registry.Issued) (int, error) {
		exp := make([]policystore.Expiring, len(svids))
		for i, s := range svids {
			exp[i] = policystore.Expiring{Serial: s.Serial, NotAfter: s.NotAfter}
		}
		if _, err := b.policy.RevokeExpiring(ctx, "admin:uid=0", exp, "agent evicted"); err != nil {
			return 0, err
		}
		return len(svids), nil
	}
	b.failRevoke.Store(true)
	if _, _, err := b.reg.EvictAgent(ctx, agent.ID, revoke); err == nil {
		t.Fatal("the eviction succeeded with policy.revoke refused by the audit log")
	}
	b.failRevoke.Store(false)
	tok, err := b.reg.CreateJoinToken(ctx, time.Minute, "node-evicted")
	if err != nil {
		t.Fatal(err)
	}
	before := b.ca.SignedX509SVIDs()
	if _, err := b.attestShared(t, tok.Token); code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ward agent evict") {
		t.Fatalf("attesting again while the eviction is pending: %v", err)
	}
	if n := b.ca.SignedX509SVIDs() - before; n != 0 {
		t.Fatalf("the refused attestation cost %d signatures", n)
	}
	if _, n, err := b.reg.EvictAgent(ctx, agent.ID, revoke); err != nil || n != 2 {
		t.Fatalf("evicting again: %d %v", n, err)
	}
	b.untilEncrypt(t, w[0], codes.PermissionDenied, "the evicted agent's workload")
	back := b.joinAs(t, "node-evicted")
	if _, err := b.client(t, back).Sync(ctx, &wardv1.SyncRequest{}); err != nil {
		t.Fatalf("after the eviction completed: %v", err)
	}
}

// TestDenyListSkewIsThePolicyStores: the registry counts a displaced SVID
// against its entry for as long as the policy store keeps its serial on
// the deny-list.
func TestDenyListSkewIsThePolicyStores(t *testing.T) {
	if registry.DenyListSkew != policystore.PruneSkew {
		t.Fatalf("registry.DenyListSkew %s, policystore.PruneSkew %s", registry.DenyListSkew, policystore.PruneSkew)
	}
}

// TestConcurrentSigningOfOneAgentAllSucceeds: a burst of SignX509SVIDs
// calls of one agent at once (a node starting many workloads), with its
// own renewal and withheld SVIDs forgotten beside them, is each signed and
// recorded: every write of one agent's records is made one call at a time,
// so no call gives up with Aborted (the record's compare-and-swap lost
// maxCASRetry times) as calls not displacing did under such a burst.
func TestConcurrentSigningOfOneAgentAllSucceeds(t *testing.T) {
	for _, tc := range []struct {
		name string
		new  func(t *testing.T) *harness
	}{
		{"no policy store", newHarness},
		{"displacing", func(t *testing.T) *harness { return newBoundHarness(t).harness }},
	} {
		t.Run(tc.name, func(t *testing.T) { concurrentSigning(t, tc.new(t)) })
	}
}

func concurrentSigning(t *testing.T, b *harness) {
	agent := b.agentCaller(t)
	c := b.client(t, agent.svid)
	const callers = 48
	entries := make([]string, callers/2)
	for i := range entries {
		entries[i] = b.entryUnder(t, agent.svid.ID, fmt.Sprintf("/burst/%d", i))
	}
	csrs := make([][]byte, callers)
	for i := range csrs {
		csrs[i], _ = csr(t)
	}
	var wg sync.WaitGroup
	errc := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Two calls per entry: each call writes the agent's head,
			// and every record is shared with another call.
			resp, err := c.SignX509SVIDs(context.Background(), &wardv1.SignX509SVIDsRequest{
				Params: []*wardv1.X509SVIDParams{{EntryId: entries[i%len(entries)], Csr: csrs[i]}}})
			switch {
			case err != nil:
				errc <- fmt.Errorf("call %d: %v", i, err)
			case resp.Results[0].Error != nil:
				errc <- fmt.Errorf("call %d: %s %s", i, resp.Results[0].Error.Code, resp.Results[0].Error.Message)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if recorded, err := b.reg.IssuedSVIDs(context.Background(), agent.svid.ID); err != nil || len(recorded) != callers+1 {
		t.Fatalf("%d SVIDs recorded (want %d: the calls' and the agent's own), %v", len(recorded), callers+1, err)
	}
}
