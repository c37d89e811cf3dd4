package registry

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/boltstore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// snapshot lists every entry as "id spiffe_id parent selectors" for
// comparing store contents before and after a refused batch.
func snapshot(t *testing.T, f *fixture) string {
	t.Helper()
	list, err := f.reg.ListEntries(context.Background(), ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range list {
		fmt.Fprintf(&b, "%s %s %s %v %d\n", e.ID, e.SPIFFEID, e.ParentID, e.Selectors, e.Revision)
	}
	return b.String()
}

func (f *fixture) ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, ev := range f.events {
		out = append(out, ev.Operation+"/"+ev.Result)
	}
	return out
}

func TestApplyBatchCreatesUpdatesDeletesAtomically(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	keep, err := f.reg.CreateEntry(ctx, entry("/keep", "/ward/agent/n", "unix:uid:9"))
	if err != nil {
		t.Fatal(err)
	}
	gone, err := f.reg.CreateEntry(ctx, entry("/gone", "/ward/agent/n", "unix:uid:8"))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.events = nil
	f.mu.Unlock()

	explicit := entry("/b", "/ward/agent/n", "unix:uid:2")
	explicit.ID = strings.Repeat("ab", 16)
	upd := keep
	upd.Labels = map[string]string{"app": "keep"}
	upd.Selectors = entry("", "", "unix:uid:8").Selectors // takes the identity the delete frees
	upd.SPIFFEID, upd.ParentID = gone.SPIFFEID, gone.ParentID
	res, err := f.reg.ApplyBatch(ctx, Batch{
		Create: []Entry{entry("/a", "/ward/agent/n", "unix:uid:1"), explicit},
		Update: []Entry{upd},
		Delete: []EntryRef{{ID: gone.ID, Revision: gone.Revision}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Created) != 2 || len(res.Updated) != 1 || len(res.Deleted) != 1 || res.Revision == 0 {
		t.Fatalf("result %+v", res)
	}
	if res.Created[1].ID != explicit.ID {
		t.Fatalf("explicit ID not kept: %s", res.Created[1].ID)
	}
	got, err := f.reg.GetEntry(ctx, keep.ID)
	if err != nil || got.Labels["app"] != "keep" || got.SPIFFEID != gone.SPIFFEID || !got.Created.Equal(keep.Created) {
		t.Fatalf("updated entry %+v, %v", got, err)
	}
	if _, err := f.reg.GetEntry(ctx, gone.ID); errs.KindOf(err) != errs.NotFound {
		t.Fatalf("deleted entry: %v", err)
	}
	// One started event before the write, one event per change, one outcome.
	ops := f.ops()
	want := map[string]int{"entry.batch/started": 1, "entry.create/ok": 2, "entry.update/ok": 1, "entry.delete/ok": 1, "entry.batch/ok": 1}
	count := map[string]int{}
	for _, o := range ops {
		count[o]++
	}
	if fmt.Sprint(count) != fmt.Sprint(want) || ops[0] != "entry.batch/started" || ops[len(ops)-1] != "entry.batch/ok" {
		t.Fatalf("audit events %v", ops)
	}
	// An update that keeps the identity (labels only) touches no index key.
	got.Labels = map[string]string{"app": "again"}
	if _, err := f.reg.ApplyBatch(ctx, Batch{Update: []Entry{got}}); err != nil {
		t.Fatalf("label-only update: %v", err)
	}
	// The freed identity of the old "keep" can be taken again.
	if _, err := f.reg.CreateEntry(ctx, entry("/keep", "/ward/agent/n", "unix:uid:9")); err != nil {
		t.Fatalf("old index key not released: %v", err)
	}
}

func TestApplyBatchRefusalChangesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	existing, err := f.reg.CreateEntry(ctx, entry("/x", "/ward/agent/n", "unix:uid:5"))
	if err != nil {
		t.Fatal(err)
	}
	good := func() []Entry {
		return []Entry{entry("/a", "/ward/agent/n", "unix:uid:1"), entry("/b", "/ward/agent/n", "unix:uid:2")}
	}
	stale := existing
	stale.Revision = existing.Revision + 100
	cases := []struct {
		name string
		b    Batch
		kind errs.Kind
		msg  string
	}{
		{"invalid entry in the middle", Batch{Create: append(good(), entry("/ward/x", "/ward/agent/n", "unix:uid:3"), entry("/c", "/ward/agent/n", "unix:uid:4"))}, errs.Invalid, "create[2]"},
		{"duplicate in the batch", Batch{Create: append(good(), entry("/a", "/ward/agent/n", "unix:uid:1"))}, errs.Invalid, "also has SPIFFE ID"},
		{"exists already", Batch{Create: append(good(), entry("/x", "/ward/agent/n", "unix:uid:5"))}, errs.Exists, existing.ID},
		{"update of a missing entry", Batch{Create: good(), Update: []Entry{{ID: strings.Repeat("0", 32), SPIFFEID: "spiffe://example.org/m", ParentID: "spiffe://example.org/ward/agent/n", Selectors: entry("", "", "unix:uid:7").Selectors}}}, errs.NotFound, "update[0]"},
		{"stale revision", Batch{Create: good(), Update: []Entry{stale}}, errs.Conflict, "re-run the plan"},
		{"same entry twice", Batch{Update: []Entry{existing}, Delete: []EntryRef{{ID: existing.ID}}}, errs.Invalid, "changes an entry once"},
		{"malformed ID", Batch{Create: []Entry{{ID: "XYZ", SPIFFEID: "spiffe://example.org/m", ParentID: "spiffe://example.org/ward/agent/n", Selectors: entry("", "", "unix:uid:7").Selectors}}}, errs.Invalid, "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t, f)
			if err := f.reg.CheckBatch(ctx, tc.b); errs.KindOf(err) != tc.kind {
				t.Fatalf("CheckBatch = %v (kind %v), want %v", err, errs.KindOf(err), tc.kind)
			}
			_, err := f.reg.ApplyBatch(ctx, tc.b)
			if errs.KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (kind %v), want %v containing %q", err, errs.KindOf(err), tc.kind, tc.msg)
			}
			if after := snapshot(t, f); after != before {
				t.Fatalf("a refused batch changed entries:\nbefore %s\nafter %s", before, after)
			}
		})
	}
	// A good batch checks out, writing and auditing nothing.
	events, before := len(f.ops()), snapshot(t, f)
	if err := f.reg.CheckBatch(ctx, Batch{Create: good(), Update: []Entry{existing}}); err != nil {
		t.Fatalf("CheckBatch of a good batch: %v", err)
	}
	if len(f.ops()) != events || snapshot(t, f) != before {
		t.Fatal("CheckBatch wrote or audited something")
	}
	// The audit log down: refused before anything is written.
	f.fail.Store(true)
	if _, err := f.reg.ApplyBatch(ctx, Batch{Create: good()}); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("audit down: %v", err)
	}
	if snapshot(t, f) != before {
		t.Fatal("a batch whose started event failed changed entries")
	}
}

func TestApplyBatchLimit(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "r.db"), boltstore.WithMaxBatch(7))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg, err := New(st, Options{TrustDomain: td, Audit: audit.RecorderFunc(func(context.Context, audit.Event) error { return nil })})
	if err != nil {
		t.Fatal(err)
	}
	if reg.MaxBatchEntries() != 2 {
		t.Fatalf("MaxBatchEntries = %d", reg.MaxBatchEntries())
	}
	_, err = reg.ApplyBatch(context.Background(), Batch{Create: []Entry{
		entry("/a", "/ward/agent/n", "unix:uid:1"), entry("/b", "/ward/agent/n", "unix:uid:1"), entry("/c", "/ward/agent/n", "unix:uid:1")}})
	if errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), "at most 2") {
		t.Fatalf("over the limit: %v", err)
	}
	if res, err := reg.ApplyBatch(context.Background(), Batch{}); err != nil || res.Revision != 0 {
		t.Fatalf("empty batch: %+v %v", res, err)
	}
}

// BenchmarkApplyBatch1000 registers 1,000 entries in one batch (the path
// `ward apply` takes), on bbolt with an in-memory audit recorder.
func BenchmarkApplyBatch1000(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		f := newFixture(b)
		batch := Batch{}
		for i := range 1000 {
			batch.Create = append(batch.Create, entry(fmt.Sprintf("/w/%d", i), "/ward/agent/n", fmt.Sprintf("unix:uid:%d", i)))
		}
		b.StartTimer()
		if _, err := f.reg.ApplyBatch(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateEntry1000 is the loop the batch replaces.
func BenchmarkCreateEntry1000(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		f := newFixture(b)
		b.StartTimer()
		for i := range 1000 {
			if _, err := f.reg.CreateEntry(context.Background(), entry(fmt.Sprintf("/w/%d", i), "/ward/agent/n", fmt.Sprintf("unix:uid:%d", i))); err != nil {
				b.Fatal(err)
			}
		}
	}
}
