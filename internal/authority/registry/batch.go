package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Batch is a set of entry changes applied together in one atomic store
// write (`ward apply`): either every change lands or none does.
type Batch struct {
	// Create holds new entries. An entry may carry its own ID (32
	// lowercase hex digits, e.g. from `ward export`); otherwise one is
	// assigned.
	Create []Entry
	// Update replaces every field but Created of the entry named by ID;
	// a non-zero Revision must match the stored one (errs.Conflict
	// otherwise).
	Update []Entry
	// Delete removes entries by ID; a non-zero Revision must match.
	Delete []EntryRef
}

// EntryRef names an entry at an expected revision (0: any).
type EntryRef struct {
	ID       string
	Revision int64
}

// BatchResult is what a batch did.
type BatchResult struct {
	Created, Updated []Entry
	Deleted          []string
	// Revision is the store revision of the batch (0 if it was empty).
	Revision int64
}

// opsPerEntry is the most store ops one change takes (an update that
// changes the entry's identity: the record, the old index key, the new).
const opsPerEntry = 3

// MaxBatchEntries is the most changes one Batch may hold: the store's
// atomic batch limit (boltstore: 10000 ops, etcd: its --max-txn-ops)
// divided by the ops a change can take.
func (r *Registry) MaxBatchEntries() int {
	n := r.st.MaxBatch() / opsPerEntry
	if n < 1 {
		n = 1
	}
	return n
}

// ApplyBatch validates every change, then applies all of them in one
// atomic store write. Bad input, a duplicate, a missing entry or a
// revision mismatch changes nothing. It is audited as one "entry.batch"
// started event before the write (fail closed), one entry.create,
// entry.update or entry.delete event per change after it (fields as the
// single-entry operations, plus "batch" = the batch's request id), and
// one "entry.batch" outcome event; a refused batch records only the
// outcome with the error.
func (r *Registry) ApplyBatch(ctx context.Context, b Batch) (BatchResult, error) {
	n := len(b.Create) + len(b.Update) + len(b.Delete)
	summary := map[string]string{"create": strconv.Itoa(len(b.Create)), "update": strconv.Itoa(len(b.Update)), "delete": strconv.Itoa(len(b.Delete))}
	if n == 0 {
		return BatchResult{}, nil
	}
	fail := func(err error) (BatchResult, error) {
		return BatchResult{}, r.auditEnd(ctx, "entry.batch", summary, err)
	}
	if n > r.MaxBatchEntries() {
		return fail(errs.Errorf(errs.Invalid, "batch has %d entry changes; this store takes at most %d in one atomic write: split it (ward apply does)", n, r.MaxBatchEntries()))
	}
	p, err := r.planBatch(ctx, b)
	if err != nil {
		return fail(err)
	}
	if err := r.auditStart(ctx, "entry.batch", summary); err != nil {
		return BatchResult{}, err
	}
	rev, err := r.st.Batch(ctx, p.ops)
	if errors.Is(err, store.ErrConflict) {
		return fail(r.batchConflict(ctx, p))
	}
	if err != nil {
		return fail(storeErr("storing a batch of entries", err))
	}
	res := BatchResult{Created: p.created, Updated: p.updated, Revision: rev}
	for i := range res.Created {
		res.Created[i].Revision = rev
	}
	for i := range res.Updated {
		res.Updated[i].Revision = rev
	}
	for _, d := range p.deleted {
		res.Deleted = append(res.Deleted, d.ID)
	}
	return res, r.auditBatch(ctx, summary, p)
}

type batchPlan struct {
	ops                       []store.Op
	created, updated, deleted []Entry
}

// planBatch validates b and builds its store ops. Index keys released by
// one change and taken by another in the same batch become one
// unconditional put (the entry records' revisions guard the change).
func (r *Registry) planBatch(ctx context.Context, b Batch) (*batchPlan, error) {
	p := &batchPlan{}
	now := r.now()
	ids := map[string]string{}     // entry ID → which change names it
	claims := map[string]string{}  // index key → ID of the entry taking it
	release := map[string]string{} // index key → ID of the entry giving it up
	held := map[string]bool{}      // index keys an update keeps (no op)
	var records []store.Op
	claim := func(where string, e *Entry) error {
		k := identityKey(e)
		if other, dup := claims[k]; dup {
			return errs.Errorf(errs.Invalid, "%s: another change in this batch (entry %s) also has SPIFFE ID %s, parent %s and these selectors: an entry is unique by the three", where, other, e.SPIFFEID, e.ParentID)
		}
		claims[k] = e.ID
		return nil
	}
	useID := func(where, id string) error {
		if other, dup := ids[id]; dup {
			return errs.Errorf(errs.Invalid, "%s: entry %s is also named by %s: a batch changes an entry once", where, id, other)
		}
		ids[id] = where
		return nil
	}
	for i, in := range b.Create {
		where := fmt.Sprintf("create[%d]", i)
		e := cloneEntry(in)
		if err := r.Validate(&e); err != nil {
			return nil, errs.Wrap(errs.KindOf(err), err, where)
		}
		if e.ID == "" {
			id, err := randomHex(16)
			if err != nil {
				return nil, err
			}
			e.ID = id
		} else if !validEntryID(e.ID) {
			return nil, errs.Errorf(errs.Invalid, "%s: entry ID %q is malformed: entry IDs are 32 lowercase hex digits (or leave it empty)", where, e.ID)
		}
		if err := useID(where, e.ID); err != nil {
			return nil, err
		}
		if err := claim(where, &e); err != nil {
			return nil, err
		}
		e.Created, e.Updated = now, now
		v, err := json.Marshal(e)
		if err != nil {
			return nil, errs.Errorf(errs.Internal, "encoding entry: %v", err)
		}
		records = append(records, store.Op{Key: entryPrefix + e.ID, Value: v, ExpectRevision: 0})
		p.created = append(p.created, e)
	}
	for i, in := range b.Update {
		where := fmt.Sprintf("update[%d] (entry %s)", i, in.ID)
		e := cloneEntry(in)
		if err := r.Validate(&e); err != nil {
			return nil, errs.Wrap(errs.KindOf(err), err, where)
		}
		if err := useID(where, e.ID); err != nil {
			return nil, err
		}
		cur, err := r.GetEntry(ctx, e.ID)
		if err != nil {
			return nil, errs.Wrap(errs.KindOf(err), err, where)
		}
		if in.Revision != 0 && in.Revision != cur.Revision {
			return nil, errs.Errorf(errs.Conflict, "%s is at revision %d, not %d: it changed since you read it; re-run the plan", where, cur.Revision, in.Revision)
		}
		if err := claim(where, &e); err != nil {
			return nil, err
		}
		if k := identityKey(&cur); k != identityKey(&e) {
			release[k] = e.ID
		} else {
			held[k] = true
		}
		e.Created, e.Updated = cur.Created, now
		v, err := json.Marshal(e)
		if err != nil {
			return nil, errs.Errorf(errs.Internal, "encoding entry: %v", err)
		}
		records = append(records, store.Op{Key: entryPrefix + e.ID, Value: v, ExpectRevision: cur.Revision})
		p.updated = append(p.updated, e)
	}
	for i, d := range b.Delete {
		where := fmt.Sprintf("delete[%d] (entry %s)", i, d.ID)
		if err := useID(where, d.ID); err != nil {
			return nil, err
		}
		cur, err := r.GetEntry(ctx, d.ID)
		if err != nil {
			return nil, errs.Wrap(errs.KindOf(err), err, where)
		}
		if d.Revision != 0 && d.Revision != cur.Revision {
			return nil, errs.Errorf(errs.Conflict, "%s is at revision %d, not %d: it changed since you read it; re-run the plan", where, cur.Revision, d.Revision)
		}
		release[identityKey(&cur)] = cur.ID
		records = append(records, store.Op{Key: entryPrefix + cur.ID, Delete: true, ExpectRevision: cur.Revision})
		p.deleted = append(p.deleted, cur)
	}
	p.ops = records
	for k, id := range claims {
		if held[k] {
			continue
		}
		exp := int64(0)
		if _, freed := release[k]; freed {
			exp = -1 // given up by another change here, whose record revision is checked
		}
		p.ops = append(p.ops, store.Op{Key: k, Value: []byte(id), ExpectRevision: exp})
	}
	for k := range release {
		if _, taken := claims[k]; !taken {
			p.ops = append(p.ops, store.Op{Key: k, Delete: true, ExpectRevision: -1})
		}
	}
	return p, nil
}

// CheckBatch validates b as ApplyBatch would and checks it against the
// stored entries (a create whose identity or ID is taken, a missing entry,
// a stale revision), writing and auditing nothing: `ward apply` checks
// every batch before it changes anything.
func (r *Registry) CheckBatch(ctx context.Context, b Batch) error {
	if n := len(b.Create) + len(b.Update) + len(b.Delete); n > r.MaxBatchEntries() {
		return errs.Errorf(errs.Invalid, "batch has %d entry changes; this store takes at most %d in one atomic write: split it", n, r.MaxBatchEntries())
	}
	p, err := r.planBatch(ctx, b)
	if err != nil {
		return err
	}
	for _, op := range p.ops {
		if op.ExpectRevision != 0 {
			continue
		}
		if _, err := r.st.Get(ctx, op.Key); err == nil {
			return r.batchConflict(ctx, p)
		} else if !errors.Is(err, store.ErrNotFound) {
			return storeErr("checking a batch of entries", err)
		}
	}
	return nil
}

// batchConflict names what made a batch's conditions fail.
func (r *Registry) batchConflict(ctx context.Context, p *batchPlan) error {
	for _, e := range p.created {
		if kv, err := r.st.Get(ctx, identityKey(&e)); err == nil && string(kv.Value) != e.ID {
			return errs.Errorf(errs.Exists, "an entry for %s under %s with the same selectors already exists (entry %s); nothing in the batch was applied: update it instead", e.SPIFFEID, e.ParentID, kv.Value)
		}
		if _, err := r.st.Get(ctx, entryPrefix+e.ID); err == nil {
			return errs.Errorf(errs.Exists, "entry %s already exists; nothing in the batch was applied: update it instead", e.ID)
		}
	}
	for _, e := range p.updated {
		if kv, err := r.st.Get(ctx, identityKey(&e)); err == nil && string(kv.Value) != e.ID {
			return errs.Errorf(errs.Exists, "entry %s cannot take SPIFFE ID %s, parent %s and these selectors: entry %s has them; nothing in the batch was applied", e.ID, e.SPIFFEID, e.ParentID, kv.Value)
		}
	}
	return errs.Errorf(errs.Conflict, "entries changed concurrently while the batch was applied; nothing in it was applied: re-run the plan")
}

// auditBatch records one event per change (concurrently, so the audit
// log commits them as one group) and the batch's outcome.
func (r *Registry) auditBatch(ctx context.Context, summary map[string]string, p *batchPlan) error {
	type item struct {
		op string
		e  *Entry
	}
	var items []item
	for i := range p.created {
		items = append(items, item{"entry.create", &p.created[i]})
	}
	for i := range p.updated {
		items = append(items, item{"entry.update", &p.updated[i]})
	}
	for i := range p.deleted {
		items = append(items, item{"entry.delete", &p.deleted[i]})
	}
	batchID := audit.NewEvent(ctx, "entry.batch", audit.ResultOK).RequestID
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, 512)
	for _, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			f := entryFields(it.e)
			if batchID != "" {
				f["batch"] = batchID
			}
			if err := r.opts.Audit.Record(ctx, event(ctx, it.op, audit.ResultOK, f)); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := r.auditEnd(ctx, "entry.batch", summary, nil); err != nil {
		return err
	}
	if first != nil {
		return errs.Errorf(errs.Unavailable, "the batch of entries was applied but some of its audit events could not be written: %v", first)
	}
	return nil
}
