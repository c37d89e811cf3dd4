package registry

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// The X509-SVIDs the authority signed through an agent (its workloads'
// and its own), so that evicting the agent can revoke every one still
// valid (docs/agents.md). One record per agent, under issuedPrefix; only
// unexpired serials are kept (expired ones are dropped on every write),
// and at most MaxIssuedPerEntry per entry (and per agent for its own), so
// an agent asking for SVIDs in a loop cannot grow the record: it is
// bounded by the agent's entries x MaxIssuedPerEntry.
const issuedPrefix = "identity/issued/"

// MaxIssuedPerEntry is how many unexpired X509-SVIDs one entry (or the
// agent itself) may hold at once. A rotating agent holds 2-3 (the current
// one and the next, renewed at half its lifetime; a restart adds one); a
// signing beyond the bound is refused (FailedPrecondition) until one of the
// older SVIDs expires.
const MaxIssuedPerEntry = 8

// AgentSelf is the entry key of the agent's own SVIDs in RecordIssued.
const AgentSelf = "agent"

// Issued is one signed X509-SVID: the entry it was signed for (AgentSelf:
// the agent's own), its serial (hex) and its NotAfter.
type Issued struct {
	Entry    string    `json:"e"`
	Serial   string    `json:"s"`
	NotAfter time.Time `json:"x"`
}

type issuedRecord struct {
	// Evicted: the agent was evicted; no signing is recorded (so none is
	// released) until it attests again.
	Evicted bool     `json:"evicted,omitempty"`
	SVIDs   []Issued `json:"svids,omitempty"`
}

func (r *Registry) issuedKey(id spiffeid.ID) (string, error) {
	k, err := r.agentKey(id)
	if err != nil {
		return "", err
	}
	return issuedPrefix + strings.TrimPrefix(k, agentPrefix), nil
}

// updateIssued applies fn to agent id's record (pruned of expired SVIDs)
// in one compare-and-swap.
func (r *Registry) updateIssued(ctx context.Context, id spiffeid.ID, fn func(rec *issuedRecord) error) (issuedRecord, error) {
	key, err := r.issuedKey(id)
	if err != nil {
		return issuedRecord{}, err
	}
	for range maxCASRetry {
		var rec issuedRecord
		var rev int64
		kv, err := r.st.Get(ctx, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				return issuedRecord{}, errs.Errorf(errs.Internal, "the SVIDs issued through %s: bad record: %v", id, err)
			}
			rev = kv.Revision
		case errors.Is(err, store.ErrNotFound):
		default:
			return issuedRecord{}, storeErr("reading the SVIDs issued through "+id.String(), err)
		}
		now := r.now()
		rec.SVIDs = slices.DeleteFunc(rec.SVIDs, func(s Issued) bool { return !s.NotAfter.After(now) })
		if err := fn(&rec); err != nil {
			return issuedRecord{}, err
		}
		b, _ := json.Marshal(rec)
		if _, err = r.st.CompareAndSwap(ctx, key, b, rev); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return issuedRecord{}, storeErr("writing the SVIDs issued through "+id.String(), err)
		}
		return rec, nil
	}
	return issuedRecord{}, errs.Errorf(errs.Conflict, "the SVIDs issued through %s: too much contention; retry", id)
}

// RecordIssued records X509-SVIDs signed through agent before they are
// released. It returns one error per item (nil: recorded, release it): an
// entry that already holds MaxIssuedPerEntry unexpired SVIDs gets
// Precondition. attested clears an eviction (the agent attested again,
// its attestation already recorded) unless the agent's record is evicted
// again by now; otherwise an evicted agent's items are all refused
// (Denied), so a signing in flight while the agent is evicted is never
// released unrevoked. err is set when nothing could be recorded.
func (r *Registry) RecordIssued(ctx context.Context, agent spiffeid.ID, items []Issued, attested bool) (perItem []error, err error) {
	_, err = r.updateIssued(ctx, agent, func(rec *issuedRecord) error {
		perItem = make([]error, len(items))
		if attested && rec.Evicted {
			// An eviction may have run between the attestation's record
			// and this one (EvictAgent marks the agent, then takes this
			// record): the agent's record, read after this record and
			// before the compare-and-swap that writes it, says. Cleared
			// unchecked, the attestation's SVID was released unrevoked by
			// an eviction that had already taken the record.
			a, err := r.GetAgent(ctx, agent)
			if err != nil {
				return err
			}
			if a.Evicted {
				return errs.Errorf(errs.Denied, "agent %s was evicted while it attested: attest again", agent)
			}
			rec.Evicted = false
		}
		if rec.Evicted {
			return errs.Errorf(errs.Denied, "agent %s was evicted: attest again", agent)
		}
		count := map[string]int{}
		for _, s := range rec.SVIDs {
			count[s.Entry]++
		}
		for i, it := range items {
			if count[it.Entry] >= MaxIssuedPerEntry {
				perItem[i] = errs.Errorf(errs.Precondition, "entry %s already holds %d unexpired X509-SVIDs signed through agent %s: "+
					"no more until one expires (an agent rotates at half the lifetime and holds 2-3)", it.Entry, MaxIssuedPerEntry, agent)
				continue
			}
			count[it.Entry]++
			rec.SVIDs = append(rec.SVIDs, it)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return perItem, nil
}

// IssuedSVIDs returns the unexpired X509-SVIDs recorded for agent (for
// tests and `ward agent list`-style views).
func (r *Registry) IssuedSVIDs(ctx context.Context, agent spiffeid.ID) ([]Issued, error) {
	key, err := r.issuedKey(agent)
	if err != nil {
		return nil, err
	}
	kv, err := r.st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, storeErr("reading the SVIDs issued through "+agent.String(), err)
	}
	var rec issuedRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, errs.Errorf(errs.Internal, "the SVIDs issued through %s: bad record: %v", agent, err)
	}
	now := r.now()
	return slices.DeleteFunc(rec.SVIDs, func(s Issued) bool { return !s.NotAfter.After(now) }), nil
}

// takeIssued marks agent's record evicted (no signing recorded, so none
// released, until it attests again) and returns its unexpired SVIDs.
func (r *Registry) takeIssued(ctx context.Context, agent spiffeid.ID) ([]Issued, error) {
	rec, err := r.updateIssued(ctx, agent, func(rec *issuedRecord) error {
		rec.Evicted = true
		return nil
	})
	return rec.SVIDs, err
}

// forgetIssued drops the SVIDs of an evicted agent once they are revoked
// (the record stays evicted).
func (r *Registry) forgetIssued(ctx context.Context, agent spiffeid.ID, revoked []Issued) error {
	_, err := r.updateIssued(ctx, agent, func(rec *issuedRecord) error {
		rec.SVIDs = slices.DeleteFunc(rec.SVIDs, func(s Issued) bool {
			return slices.ContainsFunc(revoked, func(x Issued) bool { return x.Serial == s.Serial })
		})
		return nil
	})
	return err
}

// ForgetWithheld drops serials recorded by RecordIssued whose SVIDs were
// then withheld (the audit log was down): never released, they need no
// revocation, and kept they held the entry's bound, so an agent retrying
// through an audit outage was refused (FailedPrecondition) for up to a
// whole SVID lifetime once the log was back. An eviction is kept.
func (r *Registry) ForgetWithheld(ctx context.Context, agent spiffeid.ID, serials []string) error {
	if len(serials) == 0 {
		return nil
	}
	_, err := r.updateIssued(ctx, agent, func(rec *issuedRecord) error {
		rec.SVIDs = slices.DeleteFunc(rec.SVIDs, func(s Issued) bool { return slices.Contains(serials, s.Serial) })
		return nil
	})
	return err
}
