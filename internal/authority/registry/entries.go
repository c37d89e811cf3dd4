package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Limits on entry fields.
const (
	MinEntryTTL    = time.Minute
	maxSelectors   = 64
	maxDNSNames    = 32
	maxLabels      = 64
	maxHint        = 1024
	maxLabelKey    = 63
	maxLabelValue  = 256
	maxFederations = 64
)

// Entry is a registration entry: workloads matching Selectors under the
// agent (or parent entry) ParentID receive SPIFFEID.
type Entry struct {
	ID            string            `json:"id"`
	SPIFFEID      string            `json:"spiffe_id"`
	ParentID      string            `json:"parent_id"`
	Selectors     []attest.Selector `json:"selectors"`
	TTL           time.Duration     `json:"ttl,omitempty"` // 0 = CA default
	DNSNames      []string          `json:"dns_names,omitempty"`
	Hint          string            `json:"hint,omitempty"`
	FederatesWith []string          `json:"federates_with,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Created       time.Time         `json:"created"`
	Updated       time.Time         `json:"updated"`
	// Revision is the store revision of the record (not stored in it).
	Revision int64 `json:"-"`
}

// Validate checks e against the registry's rules and normalizes it
// (selectors sorted and deduplicated, DNS names lowercased). It does not
// look at other entries.
func (r *Registry) Validate(e *Entry) error {
	td := r.opts.TrustDomain
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return errs.Errorf(errs.Invalid, "spiffe_id %q is not a SPIFFE ID (%v): use spiffe://%s/PATH", e.SPIFFEID, err, td.Name())
	}
	if !id.MemberOf(td) {
		return errs.Errorf(errs.Invalid, "spiffe_id %s is outside this authority's trust domain %q: use spiffe://%s/PATH", id, td.Name(), td.Name())
	}
	if id.Path() == "" {
		return errs.Errorf(errs.Invalid, "spiffe_id %s has no path: a workload ID needs one, e.g. spiffe://%s/ns/prod/sa/payments", id, td.Name())
	}
	if id.Path() == "/ward" || strings.HasPrefix(id.Path(), "/ward/") {
		return errs.Errorf(errs.Invalid, "spiffe_id %s is under /ward/, which is reserved for the authority and its agents: choose another path", id)
	}
	parent, err := spiffeid.FromString(e.ParentID)
	if err != nil {
		return errs.Errorf(errs.Invalid, "parent_id %q is not a SPIFFE ID (%v): give the agent's ID (see `ward agent list`)", e.ParentID, err)
	}
	if !parent.MemberOf(td) || parent.Path() == "" {
		return errs.Errorf(errs.Invalid, "parent_id %s must be an agent or entry ID inside trust domain %q (see `ward agent list`)", parent, td.Name())
	}
	if parent == id {
		return errs.Errorf(errs.Invalid, "parent_id equals spiffe_id %s: an entry cannot be its own parent", id)
	}
	e.SPIFFEID, e.ParentID = id.String(), parent.String()
	if len(e.Selectors) == 0 {
		return errs.Errorf(errs.Invalid, "entry %s has no selectors: give at least one, e.g. unix:uid:1000", id)
	}
	if len(e.Selectors) > maxSelectors {
		return errs.Errorf(errs.Invalid, "entry %s has %d selectors; at most %d are allowed", id, len(e.Selectors), maxSelectors)
	}
	for i, s := range e.Selectors {
		p, err := attest.ParseSelector(s.String())
		if err != nil || p != s {
			if err == nil {
				err = fmt.Errorf("type %q and value %q do not round-trip", s.Type, s.Value)
			}
			return errs.Errorf(errs.Invalid, "entry %s selector %d: %v", id, i+1, err)
		}
	}
	e.Selectors = attest.Normalize(e.Selectors)
	if err := attest.CheckEntrySelectors(e.Selectors); err != nil {
		return errs.Errorf(errs.Invalid, "entry %s: %v", id, err)
	}
	if e.TTL < 0 || e.TTL > 0 && (e.TTL < MinEntryTTL || e.TTL > r.opts.MaxEntryTTL) {
		return errs.Errorf(errs.Invalid, "entry %s ttl %s is out of range: use 0 (the CA default) or between %s and %s", id, e.TTL, MinEntryTTL, r.opts.MaxEntryTTL)
	}
	if len(e.DNSNames) > maxDNSNames {
		return errs.Errorf(errs.Invalid, "entry %s has %d DNS names; at most %d are allowed", id, len(e.DNSNames), maxDNSNames)
	}
	for i, n := range e.DNSNames {
		n = strings.ToLower(n)
		if err := CheckDNSName(n); err != nil {
			return errs.Errorf(errs.Invalid, "entry %s: %v", id, err)
		}
		e.DNSNames[i] = n
	}
	if slices.Contains(e.DNSNames, "") || hasDup(e.DNSNames) {
		return errs.Errorf(errs.Invalid, "entry %s lists a DNS name twice", id)
	}
	if len(e.Hint) > maxHint || !printable(e.Hint) {
		return errs.Errorf(errs.Invalid, "entry %s hint must be at most %d printable characters", id, maxHint)
	}
	if len(e.FederatesWith) > maxFederations {
		return errs.Errorf(errs.Invalid, "entry %s federates with %d trust domains; at most %d are allowed", id, len(e.FederatesWith), maxFederations)
	}
	for i, f := range e.FederatesWith {
		ftd, err := spiffeid.TrustDomainFromString(f)
		if err != nil || strings.Contains(f, "/") {
			return errs.Errorf(errs.Invalid, "entry %s federates_with %q is not a trust domain name (e.g. prod-us.example.org)", id, f)
		}
		if ftd == td {
			return errs.Errorf(errs.Invalid, "entry %s federates_with its own trust domain %q: list foreign trust domains only", id, f)
		}
		e.FederatesWith[i] = ftd.Name()
	}
	if hasDup(e.FederatesWith) {
		return errs.Errorf(errs.Invalid, "entry %s lists a federated trust domain twice", id)
	}
	if len(e.Labels) > maxLabels {
		return errs.Errorf(errs.Invalid, "entry %s has %d labels; at most %d are allowed", id, len(e.Labels), maxLabels)
	}
	for k, v := range e.Labels {
		if !validLabelKey(k) {
			return errs.Errorf(errs.Invalid, "entry %s label key %q: use 1-%d letters, digits, '.', '_', '-' or '/'", id, k, maxLabelKey)
		}
		if len(v) > maxLabelValue || !printable(v) {
			return errs.Errorf(errs.Invalid, "entry %s label %q: the value must be at most %d printable characters", id, k, maxLabelValue)
		}
	}
	if len(e.Labels) == 0 {
		e.Labels = nil
	}
	return nil
}

func hasDup(ss []string) bool {
	seen := make(map[string]struct{}, len(ss))
	for _, s := range ss {
		if _, ok := seen[s]; ok {
			return true
		}
		seen[s] = struct{}{}
	}
	return false
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func validLabelKey(k string) bool {
	if k == "" || len(k) > maxLabelKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return false
		}
	}
	return true
}

// CheckDNSName is the CA's DNS-name rule (ca.CheckDNSName), checked at
// registration so an entry the CA would refuse is never stored.
func CheckDNSName(n string) error { return ca.CheckDNSName(n) }

// identityKey is the uniqueness key: one entry per (spiffe_id, parent_id,
// selector set).
func identityKey(e *Entry) string {
	h := sha256.New()
	h.Write([]byte(e.SPIFFEID))
	h.Write([]byte{0})
	h.Write([]byte(e.ParentID))
	for _, s := range e.Selectors {
		h.Write([]byte{0})
		h.Write([]byte(s.String()))
	}
	return indexPrefix + hex.EncodeToString(h.Sum(nil))
}

func entryFields(e *Entry) map[string]string {
	f := map[string]string{"entry": e.ID, "spiffe_id": e.SPIFFEID, "parent_id": e.ParentID}
	sels := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = s.String()
	}
	f["selectors"] = strings.Join(sels, ",")
	if e.TTL > 0 {
		f["ttl"] = e.TTL.String()
	}
	if len(e.DNSNames) > 0 {
		f["dns_names"] = strings.Join(e.DNSNames, ",")
	}
	return f
}

func cloneEntry(e Entry) Entry {
	e.Selectors = slices.Clone(e.Selectors)
	e.DNSNames = slices.Clone(e.DNSNames)
	e.FederatesWith = slices.Clone(e.FederatesWith)
	e.Labels = maps.Clone(e.Labels)
	return e
}

func validEntryID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// CreateEntry validates and stores a new entry; ID, Created and Updated are
// assigned. A second entry with the same SPIFFE ID, parent and selectors is
// refused (errs.Exists).
func (r *Registry) CreateEntry(ctx context.Context, in Entry) (Entry, error) {
	e := cloneEntry(in)
	e.ID = ""
	if err := r.Validate(&e); err != nil {
		return Entry{}, r.auditEnd(ctx, "entry.create", map[string]string{"spiffe_id": in.SPIFFEID, "parent_id": in.ParentID}, err)
	}
	id, err := randomHex(16)
	if err != nil {
		return Entry{}, err
	}
	e.ID = id
	now := r.now()
	e.Created, e.Updated = now, now
	fields := entryFields(&e)
	if err := r.auditStart(ctx, "entry.create", fields); err != nil {
		return Entry{}, err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return Entry{}, r.auditEnd(ctx, "entry.create", fields, errs.Errorf(errs.Internal, "encoding entry: %v", err))
	}
	rev, err := r.st.Batch(ctx, []store.Op{
		{Key: identityKey(&e), Value: []byte(e.ID), ExpectRevision: 0},
		{Key: entryPrefix + e.ID, Value: b, ExpectRevision: 0},
	})
	if errors.Is(err, store.ErrConflict) {
		other := ""
		if kv, gerr := r.st.Get(ctx, identityKey(&e)); gerr == nil {
			other = " (entry " + string(kv.Value) + ")"
		}
		return Entry{}, r.auditEnd(ctx, "entry.create", fields, errs.Errorf(errs.Exists,
			"an entry for %s under %s with the same selectors already exists%s: update it instead", e.SPIFFEID, e.ParentID, other))
	}
	if err != nil {
		return Entry{}, r.auditEnd(ctx, "entry.create", fields, storeErr("storing entry for "+e.SPIFFEID, err))
	}
	e.Revision = rev
	return e, r.auditEnd(ctx, "entry.create", fields, nil)
}

// GetEntry returns the entry with id.
func (r *Registry) GetEntry(ctx context.Context, id string) (Entry, error) {
	if !validEntryID(id) {
		return Entry{}, errs.Errorf(errs.Invalid, "entry ID %q is malformed: entry IDs are 32 lowercase hex digits (see `ward entry list`)", id)
	}
	kv, err := r.st.Get(ctx, entryPrefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return Entry{}, errs.Errorf(errs.NotFound, "entry %s not found: see `ward entry list`", id)
	}
	if err != nil {
		return Entry{}, storeErr("reading entry "+id, err)
	}
	return decodeEntry(kv)
}

func decodeEntry(kv store.KV) (Entry, error) {
	var e Entry
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return Entry{}, errs.Errorf(errs.Internal, "stored entry %s is unreadable: %v", kv.Key, err)
	}
	e.Revision = kv.Revision
	return e, nil
}

// ListFilter selects entries; empty fields match everything.
type ListFilter struct {
	ParentID       string
	SPIFFEIDPrefix string
}

// ListEntries returns the entries matching f, sorted by SPIFFE ID then ID.
func (r *Registry) ListEntries(ctx context.Context, f ListFilter) ([]Entry, error) {
	kvs, err := r.st.List(ctx, entryPrefix)
	if err != nil {
		return nil, storeErr("listing entries", err)
	}
	out := make([]Entry, 0, len(kvs))
	for _, kv := range kvs {
		e, err := decodeEntry(kv)
		if err != nil {
			return nil, err
		}
		if f.ParentID != "" && e.ParentID != f.ParentID || !strings.HasPrefix(e.SPIFFEID, f.SPIFFEIDPrefix) {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SPIFFEID != out[j].SPIFFEID {
			return out[i].SPIFFEID < out[j].SPIFFEID
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// UpdateEntry replaces every field of the entry named by in.ID except
// Created. If expectRevision is non-zero the update applies only at that
// revision (errs.Conflict otherwise).
func (r *Registry) UpdateEntry(ctx context.Context, in Entry, expectRevision int64) (Entry, error) {
	e := cloneEntry(in)
	fail := func(err error) (Entry, error) {
		return Entry{}, r.auditEnd(ctx, "entry.update", map[string]string{"entry": in.ID, "spiffe_id": in.SPIFFEID}, err)
	}
	if err := r.Validate(&e); err != nil {
		return fail(err)
	}
	cur, err := r.GetEntry(ctx, in.ID)
	if err != nil {
		return fail(err)
	}
	if expectRevision != 0 && expectRevision != cur.Revision {
		return fail(errs.Errorf(errs.Conflict, "entry %s is at revision %d, not %d: it changed since you read it; re-read and retry", in.ID, cur.Revision, expectRevision))
	}
	e.Created, e.Updated = cur.Created, r.now()
	fields := entryFields(&e)
	if err := r.auditStart(ctx, "entry.update", fields); err != nil {
		return Entry{}, err
	}
	b, err := json.Marshal(e)
	if err != nil {
		return Entry{}, r.auditEnd(ctx, "entry.update", fields, errs.Errorf(errs.Internal, "encoding entry: %v", err))
	}
	ops := []store.Op{{Key: entryPrefix + e.ID, Value: b, ExpectRevision: cur.Revision}}
	if oldKey, newKey := identityKey(&cur), identityKey(&e); oldKey != newKey {
		ops = append(ops, store.Op{Key: oldKey, Delete: true, ExpectRevision: -1},
			store.Op{Key: newKey, Value: []byte(e.ID), ExpectRevision: 0})
	}
	rev, err := r.st.Batch(ctx, ops)
	if errors.Is(err, store.ErrConflict) {
		return Entry{}, r.auditEnd(ctx, "entry.update", fields, errs.Errorf(errs.Conflict,
			"entry %s changed concurrently, or another entry already has SPIFFE ID %s, parent %s and these selectors; re-read and retry", e.ID, e.SPIFFEID, e.ParentID))
	}
	if err != nil {
		return Entry{}, r.auditEnd(ctx, "entry.update", fields, storeErr("updating entry "+e.ID, err))
	}
	e.Revision = rev
	return e, r.auditEnd(ctx, "entry.update", fields, nil)
}

// DeleteEntry removes the entry with id.
func (r *Registry) DeleteEntry(ctx context.Context, id string) error {
	cur, err := r.GetEntry(ctx, id)
	if err != nil {
		return r.auditEnd(ctx, "entry.delete", map[string]string{"entry": id}, err)
	}
	fields := entryFields(&cur)
	if err := r.auditStart(ctx, "entry.delete", fields); err != nil {
		return err
	}
	_, err = r.st.Batch(ctx, []store.Op{
		{Key: entryPrefix + id, Delete: true, ExpectRevision: cur.Revision},
		{Key: identityKey(&cur), Delete: true, ExpectRevision: -1},
	})
	if err != nil {
		return r.auditEnd(ctx, "entry.delete", fields, storeErr("deleting entry "+id, err))
	}
	return r.auditEnd(ctx, "entry.delete", fields, nil)
}
