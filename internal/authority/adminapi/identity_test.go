package adminapi

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
)

func TestEntryValidationChangesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent := "spiffe://" + testTD + "/ward/agent/node-1"
	good := func() *wardv1.Entry {
		return &wardv1.Entry{SpiffeId: "spiffe://" + testTD + "/payments", ParentId: agent,
			Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:1000"}}}
	}
	first, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: good()})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Id) != 32 || first.Revision == 0 {
		t.Fatalf("created entry lacks id or revision: %v", first)
	}
	before := len(e.auditEvents(t))
	cases := []struct {
		name string
		mod  func(*wardv1.Entry)
		want codes.Code
		msg  string
	}{
		{"outside trust domain", func(x *wardv1.Entry) { x.SpiffeId = "spiffe://other.org/payments" }, codes.InvalidArgument, "outside"},
		{"not a SPIFFE ID", func(x *wardv1.Entry) { x.SpiffeId = "https://" + testTD + "/x" }, codes.InvalidArgument, "spiffe_id"},
		{"no path", func(x *wardv1.Entry) { x.SpiffeId = "spiffe://" + testTD }, codes.InvalidArgument, "no path"},
		{"reserved path", func(x *wardv1.Entry) { x.SpiffeId = "spiffe://" + testTD + "/ward/server" }, codes.InvalidArgument, "reserved"},
		{"bad parent", func(x *wardv1.Entry) { x.ParentId = "node-1" }, codes.InvalidArgument, "parent_id"},
		{"parent outside", func(x *wardv1.Entry) { x.ParentId = "spiffe://other.org/ward/agent/x" }, codes.InvalidArgument, "parent_id"},
		{"no selectors", func(x *wardv1.Entry) { x.Selectors = nil }, codes.InvalidArgument, "no selectors"},
		{"bad selector", func(x *wardv1.Entry) { x.Selectors = []*wardv1.Selector{{Type: "unix", Value: "uid:-1"}} }, codes.InvalidArgument, "selector"},
		{"bad sha256 selector", func(x *wardv1.Entry) { x.Selectors = []*wardv1.Selector{{Type: "unix", Value: "sha256:abc"}} }, codes.InvalidArgument, "sha256"},
		{"uppercase type", func(x *wardv1.Entry) { x.Selectors = []*wardv1.Selector{{Type: "UNIX", Value: "uid:1"}} }, codes.InvalidArgument, "selector"},
		{"negative ttl", func(x *wardv1.Entry) { x.TtlSeconds = -5 }, codes.InvalidArgument, "ttl"},
		{"ttl too short", func(x *wardv1.Entry) { x.TtlSeconds = 5 }, codes.InvalidArgument, "ttl"},
		{"ttl too long", func(x *wardv1.Entry) { x.TtlSeconds = 90 * 86400 }, codes.InvalidArgument, "ttl"},
		{"bad dns", func(x *wardv1.Entry) { x.DnsNames = []string{"bad_name.example"} }, codes.InvalidArgument, "DNS"},
		{"bad label", func(x *wardv1.Entry) { x.Labels = map[string]string{"a b": "c"} }, codes.InvalidArgument, "label"},
		{"self federation", func(x *wardv1.Entry) { x.FederatesWith = []string{testTD} }, codes.InvalidArgument, "own trust domain"},
		{"duplicate", func(x *wardv1.Entry) {}, codes.AlreadyExists, first.Id},
		{"duplicate, selectors reordered", func(x *wardv1.Entry) {
			x.Selectors = []*wardv1.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "uid:1000"}}
		}, codes.AlreadyExists, "already exists"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := good()
			tc.mod(x)
			_, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: x})
			if code(err) != tc.want || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.want, tc.msg)
			}
			// The same bad input as an update changes nothing either.
			x.Id = first.Id
			if tc.want == codes.InvalidArgument {
				if _, err := e.entries.UpdateEntry(ctx, &wardv1.UpdateEntryRequest{Entry: x}); code(err) != codes.InvalidArgument {
					t.Fatalf("update: got %v, want InvalidArgument", err)
				}
			}
		})
	}
	list, err := e.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Entries) != 1 || list.Entries[0].Revision != first.Revision {
		t.Fatalf("bad input changed the registry: %v", list.Entries)
	}
	// Every refusal is in the audit log, none as a success (a duplicate
	// is found at write time, so it has a "started" event, then "error").
	refused := 0
	for _, ev := range e.auditEvents(t)[before:] {
		if ev.Result == audit.ResultError {
			refused++
		}
		if ev.Result == audit.ResultOK {
			t.Errorf("refused request audited as %s: %+v", ev.Result, ev)
		}
	}
	if refused < len(cases) {
		t.Errorf("%d refusals audited, want at least %d", refused, len(cases))
	}

	// Update, stale revision, show, delete.
	upd := good()
	upd.Id, upd.TtlSeconds, upd.DnsNames, upd.Labels = first.Id, 600, []string{"Pay.Example.org"}, map[string]string{"app": "payments"}
	got, err := e.entries.UpdateEntry(ctx, &wardv1.UpdateEntryRequest{Entry: upd, ExpectRevision: first.Revision})
	if err != nil {
		t.Fatal(err)
	}
	if got.TtlSeconds != 600 || got.DnsNames[0] != "pay.example.org" || got.Labels["app"] != "payments" || !got.Created.AsTime().Equal(first.Created.AsTime()) {
		t.Fatalf("update did not apply: %v", got)
	}
	if _, err := e.entries.UpdateEntry(ctx, &wardv1.UpdateEntryRequest{Entry: upd, ExpectRevision: first.Revision}); code(err) != codes.Aborted {
		t.Fatalf("stale revision: got %v, want Aborted", err)
	}
	if _, err := e.entries.DeleteEntry(ctx, &wardv1.DeleteEntryRequest{Id: first.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.entries.GetEntry(ctx, &wardv1.GetEntryRequest{Id: first.Id}); code(err) != codes.NotFound {
		t.Fatalf("deleted entry: got %v, want NotFound", err)
	}
	// Its identity is free again.
	if _, err := e.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: good()}); err != nil {
		t.Fatalf("re-create after delete: %v", err)
	}
}

func TestCAAdmin(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	st, err := e.ca.ShowCA(ctx, &wardv1.ShowCARequest{})
	if err != nil {
		t.Fatal(err)
	}
	activeInter := ""
	kinds := map[string]int{}
	for _, k := range st.Keys {
		kinds[k.Kind]++
		if k.Kind == "intermediate" && k.State == "active" {
			activeInter = k.Id
			if !strings.Contains(k.CertificatePem, "BEGIN CERTIFICATE") {
				t.Fatal("active intermediate has no certificate")
			}
		}
	}
	if st.TrustDomain != testTD || kinds["root"] != 1 || kinds["intermediate"] != 1 || kinds["jwt"] != 1 {
		t.Fatalf("ShowCA after first unseal: %v", st)
	}
	if _, err = e.ca.RotateCA(ctx, &wardv1.RotateCARequest{}); err != nil {
		t.Fatal(err)
	}
	st, err = e.ca.RotateCA(ctx, &wardv1.RotateCARequest{Root: true})
	if err != nil {
		t.Fatal(err)
	}
	roots := 0
	for _, k := range st.Keys {
		if k.Kind == "root" {
			roots++
		}
	}
	if roots != 2 {
		t.Fatalf("after root rotation: %d roots, want old and new", roots)
	}
	if _, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: activeInter}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: "nope"}); code(err) != codes.NotFound {
		t.Fatalf("taint unknown key: got %v, want NotFound", err)
	}
	b, err := e.ca.GetBundle(ctx, &wardv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(b.X509Pem), "BEGIN CERTIFICATE") != 2 || b.Sequence < 2 {
		t.Fatalf("bundle: %d roots, sequence %d", strings.Count(string(b.X509Pem), "BEGIN CERTIFICATE"), b.Sequence)
	}
	ops := map[string]int{}
	for _, ev := range e.auditEvents(t) {
		ops[ev.Operation+"/"+ev.Result]++
	}
	for _, want := range []string{"ca.rotate/ok", "ca.rotate_root/ok", "ca.taint/ok", "ca.taint/error"} {
		if ops[want] == 0 {
			t.Errorf("audit log lacks %s: %v", want, ops)
		}
	}
}

func currentBundle(t *testing.T, e *env) policy.Bundle {
	t.Helper()
	pv, err := e.policy.GetPolicy(context.Background(), &wardv1.GetPolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := policy.ParseBundle(pv.BundleJson)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type failingBatch struct{ store.Store }

func (failingBatch) Batch(context.Context, []store.Op) (int64, error) {
	return 0, errors.New("backend unavailable")
}

// If the deny-list cannot be updated, the call fails, says so and says
// what to do; running it again once the store works publishes the key.
func TestTaintCAKeyFailsWhenDenyListCannotBeUpdated(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: map[string][]byte{"p.cedar": []byte(`@id("all") permit(principal, action, resource);`)}}); err != nil {
		t.Fatal(err)
	}
	good := e.auth.sv.Policy
	e.auth.setPolicy(policystore.New(failingBatch{e.auth.store}, e.recorder))
	kid := authoritytest.ActiveIntermediate(t, e.ca)
	_, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: kid})
	e.auth.setPolicy(good)
	if code(err) != codes.Unavailable || !strings.Contains(err.Error(), "deny-list") || !strings.Contains(err.Error(), "ward ca taint "+kid) {
		t.Fatalf("failed publication: got %v", err)
	}
	if _, err := e.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: kid}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if b := currentBundle(t, e); !slices.Contains(b.DenyList.TaintedKeys, kid) {
		t.Fatalf("retry did not publish the key: %+v", b.DenyList)
	}
	ops := map[string]int{}
	for _, ev := range e.auditEvents(t) {
		ops[ev.Operation+"/"+ev.Result]++
	}
	if ops["ca.taint/error"] == 0 || ops["policy.taint/error"] == 0 {
		t.Errorf("the failure is not audited: %v", ops)
	}
}

func TestBatchEntries(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent := "spiffe://" + testTD + "/ward/agent/node-1"
	mk := func(path, uid string) *wardv1.Entry {
		return &wardv1.Entry{SpiffeId: "spiffe://" + testTD + path, ParentId: agent,
			Selectors: []*wardv1.Selector{{Type: "unix", Value: "uid:" + uid}}, Labels: map[string]string{"app": path[1:]}}
	}
	list, err := e.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	if err != nil || list.MaxBatchEntries == 0 {
		t.Fatalf("ListEntries: max_batch_entries %d, %v", list.GetMaxBatchEntries(), err)
	}
	res, err := e.entries.BatchEntries(ctx, &wardv1.BatchEntriesRequest{Create: []*wardv1.Entry{mk("/a", "1"), mk("/b", "2")}})
	if err != nil || len(res.Created) != 2 || res.Revision == 0 {
		t.Fatalf("batch create: %v %v", res, err)
	}
	// A bad entry anywhere refuses the whole batch.
	_, err = e.entries.BatchEntries(ctx, &wardv1.BatchEntriesRequest{Create: []*wardv1.Entry{mk("/c", "3"), mk("/ward/x", "4")}})
	if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "create[1]") {
		t.Fatalf("bad batch: %v", err)
	}
	upd := res.Created[0]
	upd.Labels = map[string]string{"app": "renamed"}
	res2, err := e.entries.BatchEntries(ctx, &wardv1.BatchEntriesRequest{Update: []*wardv1.Entry{upd}, Delete: []*wardv1.EntryRef{{Id: res.Created[1].Id, Revision: res.Created[1].Revision}}})
	if err != nil || len(res2.Updated) != 1 || len(res2.Deleted) != 1 {
		t.Fatalf("batch update/delete: %v %v", res2, err)
	}
	list, err = e.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{})
	if err != nil || len(list.Entries) != 1 || list.Entries[0].Labels["app"] != "renamed" {
		t.Fatalf("after batches: %v %v", list, err)
	}
	// A stale revision is a conflict.
	upd.Revision = 1
	if _, err := e.entries.BatchEntries(ctx, &wardv1.BatchEntriesRequest{Update: []*wardv1.Entry{upd}}); code(err) != codes.Aborted {
		t.Fatalf("stale revision: %v", err)
	}
}
