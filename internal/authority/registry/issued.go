package registry

import (
	"context"
	"encoding/json"
	"errors"
	"hash/maphash"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// The X509-SVIDs the authority signed through an agent (its workloads'
// and its own), so that evicting the agent can revoke every one still
// valid (docs/agents.md). Per agent, a head under issuedPrefix+<agent
// path> (evicted or not) and one record per entry under
// issuedPrefix+<agent path>+entrySep+<entry ID>: a signing rewrites the
// head and the records of the entries it signed for, never the others
// (one record for all entries made every rotation rewrite them all: 19 ms
// for one SVID of a 1,000-entry agent, 50 times the signing;
// BenchmarkRecordIssued). Only unexpired serials are kept, at most
// MaxIssuedPerEntry per entry (and for the agent itself); beyond that the
// oldest are displaced to the deny-list (at most MaxDisplacedPerEntry
// still on it), so an agent asking for SVIDs in a loop grows neither the
// record nor the deny-list past entries x (MaxIssuedPerEntry +
// MaxDisplacedPerEntry).
const issuedPrefix = "identity/issued/"

// entrySep separates an agent's path from an entry ID in the keys of its
// entry records: '#' is in no SPIFFE path, so the records of agent
// "rack1/node-7" never share a prefix with those of "rack1/node-70".
const entrySep = "/#/"

// MaxIssuedPerEntry is the default of how many unexpired X509-SVIDs one
// entry (or the agent itself) may hold at once (IssueLimits.SVIDsPerEntry,
// identity.max_svids_per_entry). A rotating agent holds 2-3 (the current
// one and the next, renewed at half its lifetime; a restart adds one).
// Beyond it, a signing displaces the oldest (RecordIssuedDisplacing) or,
// without a deny-list to displace them to, is refused (FailedPrecondition)
// until one of them expires.
const MaxIssuedPerEntry = 8

// MaxDisplacedPerEntry is the default of how many X509-SVIDs of one entry
// displaced to the deny-list may be on it at once
// (IssueLimits.DisplacedPerEntry, identity.max_displaced_per_entry) (until DenyListSkew past their
// NotAfter): an entry gets at most MaxIssuedPerEntry+MaxDisplacedPerEntry
// SVIDs within one lifetime. 24 covers an agent crash-looping under
// Kubernetes' CrashLoopBackOff (at most one restart per 5 minutes after
// the first few, 17 in the first hour) with a 1 h SVID TTL; a signing
// beyond it is refused (FailedPrecondition) until a displaced one leaves.
const MaxDisplacedPerEntry = 16

// DenyListSkew is how long past its NotAfter a displaced serial stays on
// the deny-list, counted against MaxDisplacedPerEntry until then: the
// policy store's PruneSkew (policystore.PruneSkew; a test holds them
// equal).
const DenyListSkew = 5 * time.Minute

// MaxDisplacementsPerAgent is the default of how many displacements (each
// a new policy version, kept like every version) one agent may cause
// within DisplaceWindow (IssueLimits.DisplacementsPerAgent,
// identity.max_displacements_per_agent_hour), whatever its number of entries: without it an agent
// looping over its entries one at a time made a version per call, up to
// entries x MaxDisplacedPerEntry per lifetime. An agent restarting makes
// at most one for its own SVID and one per SignX509SVIDs batch (500
// entries), and only from its 9th start within a lifetime, so 32 an hour
// covers CrashLoopBackOff's pace (17 starts in the first hour) for agents
// of up to 1,000 entries; beyond
// it, a signing that needs room is refused (FailedPrecondition) until the
// window moves on or an old SVID expires.
const MaxDisplacementsPerAgent = 32

// DisplaceWindow is the window of MaxDisplacementsPerAgent.
const DisplaceWindow = time.Hour

// IssueLimits are the bounds of what is recorded and displaced per agent
// (Options.Limits; authority config identity.max_svids_per_entry,
// max_displaced_per_entry, max_displacements_per_agent_hour,
// max_jwt_svids_per_entry). Zero fields take the defaults: the Max*
// constants.
type IssueLimits struct {
	// SVIDsPerEntry: unexpired X509-SVIDs per entry (MaxIssuedPerEntry).
	SVIDsPerEntry int
	// DisplacedPerEntry: displaced X509-SVIDs of an entry on the
	// deny-list at once (MaxDisplacedPerEntry).
	DisplacedPerEntry int
	// DisplacementsPerAgent: displacements (policy versions) per agent
	// within DisplaceWindow (MaxDisplacementsPerAgent).
	DisplacementsPerAgent int
	// JWTsPerEntry: unexpired JWT-SVIDs per entry (MaxJWTPerEntry).
	JWTsPerEntry int
	// JWTsPerAgent: unexpired JWT-SVIDs per agent, all its entries
	// together (MaxJWTPerAgent).
	JWTsPerAgent int
}

// Effective returns l with defaults filled in.
func (l IssueLimits) Effective() IssueLimits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.SVIDsPerEntry, MaxIssuedPerEntry)
	def(&l.DisplacedPerEntry, MaxDisplacedPerEntry)
	def(&l.DisplacementsPerAgent, MaxDisplacementsPerAgent)
	def(&l.JWTsPerEntry, MaxJWTPerEntry)
	def(&l.JWTsPerAgent, MaxJWTPerAgent)
	return l
}

// Limits returns the registry's effective issue limits.
func (r *Registry) Limits() IssueLimits { return r.opts.Limits }

// AgentSelf is the entry key of the agent's own SVIDs in RecordIssued.
const AgentSelf = "agent"

// Issued is one signed X509-SVID: the entry it was signed for (AgentSelf:
// the agent's own), its serial (hex) and its NotAfter; or, with JWT set,
// one minted JWT-SVID: its entry, its jti (hex, in Serial) and its exp.
type Issued struct {
	Entry    string    `json:"e"`
	Serial   string    `json:"s"`
	NotAfter time.Time `json:"x"`
	JWT      bool      `json:"j,omitempty"`
}

// MaxJWTPerEntry is the default of how many unexpired JWT-SVIDs minted
// through an agent one entry may hold at once (IssueLimits.JWTsPerEntry,
// identity.max_jwt_svids_per_entry). An agent caches one token per (entry,
// audience set) and mints the next at half its lifetime: 2 per audience
// set, so 64 covers a workload using 32 audiences at once. Beyond it a
// mint is refused (FailedPrecondition) until one expires (jwt_svid_ttl,
// 5m by default), so an agent minting in a loop holds at most entries x
// 64 records and puts at most that many jtis on the deny-list when it is
// evicted.
const MaxJWTPerEntry = 64

// MaxJWTPerAgent is the default of how many unexpired JWT-SVIDs minted
// through one agent, all its entries together, may be recorded at once
// (IssueLimits.JWTsPerAgent, identity.max_jwt_svids_per_agent). Without
// it an agent with many entries (or a compromised one minting for each)
// held entries x MaxJWTPerEntry records, and its eviction put as many
// jtis on the deny-list: past ~30,000 serials (about 35 bytes each) the
// deny-list exceeds the federation revocation channel's 1 MiB
// (federation.MaxRevocationUpdate), and federated peers refuse every
// revocation of this trust domain until it shrinks; a little more and the
// policy version exceeds etcd's 1.5 MiB request. 1024 jtis are about 36
// KB of deny-list; an agent caching 2 per (workload, audience set) covers
// 512 of those. Beyond it a mint is refused (FailedPrecondition), before
// signing, until one expires.
const MaxJWTPerAgent = 1024

// JWTLeeway is how long past its exp a JWT-SVID is still accepted: the
// Workload API's ValidateJWTSVID (go-spiffe's jwtsvid.ParseAndValidate)
// validates the claims with go-jose's jwt.DefaultLeeway, one minute. A
// JWT-SVID's record is kept, and an eviction revokes it, until exp plus
// this: one minted through the agent whose exp had just passed when the
// agent was evicted is still accepted for up to a minute, and was left
// off the deny-list (the deny-list keeps it policystore.PruneSkew past
// exp, longer than this).
const JWTLeeway = time.Minute

// issuedHead is an agent's head record.
type issuedHead struct {
	// Evicted: the agent was evicted; no signing is recorded (so none is
	// released) until it attests again.
	Evicted bool `json:"evicted,omitempty"`
	// SVIDs: the one-record form's SVIDs (before the entry records), only
	// ever pruned, taken by an eviction or forgotten; never added to.
	SVIDs []Issued `json:"svids,omitempty"`
	// Displacements: when each displacement within the last
	// DisplaceWindow was made (each one a policy version).
	Displacements []time.Time `json:"displacements,omitempty"`
	// JWTExps: the exp (Unix seconds) of each JWT-SVID recorded in the
	// agent's entry records and not yet forgotten, kept until JWTLeeway
	// past it like the records: their number is held to
	// IssueLimits.JWTsPerAgent without reading every entry record.
	JWTExps []int64 `json:"jwt_exps,omitempty"`
}

// displaceBudget refuses (Precondition) one more displacement by agent
// once it made lim.DisplacementsPerAgent within DisplaceWindow (those
// older were pruned on reading).
func (h *issuedHead) displaceBudget(agent spiffeid.ID, lim IssueLimits) error {
	if len(h.Displacements) < lim.DisplacementsPerAgent {
		return nil
	}
	return errs.Errorf(errs.Precondition, "agent %s displaced old X509-SVIDs %d times within %s (each a policy version): "+
		"no more until the window moves on or an old SVID expires (identity.max_displacements_per_agent_hour)", agent, lim.DisplacementsPerAgent, DisplaceWindow)
}

// issuedEntry is the record of the SVIDs of one entry signed through an
// agent.
type issuedEntry struct {
	SVIDs []Issued `json:"svids,omitempty"`
	// JWTs: the JWT-SVIDs minted for the entry, unexpired (their jti and
	// exp), so an eviction revokes them.
	JWTs []Issued `json:"jwts,omitempty"`
	// Displaced: SVIDs put on the deny-list to make room, kept until
	// DenyListSkew past their NotAfter (when the deny-list drops them).
	Displaced []Issued `json:"displaced,omitempty"`
}

func (r *Registry) issuedKeys(id spiffeid.ID) (head, entries string, err error) {
	k, err := r.agentKey(id)
	if err != nil {
		return "", "", err
	}
	head = issuedPrefix + strings.TrimPrefix(k, agentPrefix)
	return head, head + entrySep, nil
}

func pruneIssued(s []Issued, now time.Time, keep time.Duration) []Issued {
	return slices.DeleteFunc(s, func(x Issued) bool { return !x.NotAfter.Add(keep).After(now) })
}

// issuedState is what one read of an agent's records holds: the head and
// the records of some entries, pruned, with their revisions (0: absent).
type issuedState struct {
	head    issuedHead
	headRev int64
	recs    map[string]*issuedEntry
	revs    map[string]int64
}

func (st *issuedState) rec(entry string) *issuedEntry {
	if st.recs[entry] == nil {
		st.recs[entry] = &issuedEntry{}
	}
	return st.recs[entry]
}

// readIssued reads agent's head and the records of entries (all of them
// when all is set), pruned of what has expired.
func (r *Registry) readIssued(ctx context.Context, agent spiffeid.ID, entries []string, all bool) (issuedState, error) {
	hkey, prefix, err := r.issuedKeys(agent)
	if err != nil {
		return issuedState{}, err
	}
	st := issuedState{recs: map[string]*issuedEntry{}, revs: map[string]int64{}}
	bad := func(err error) error {
		return errs.Errorf(errs.Internal, "the SVIDs issued through %s: bad record: %v", agent, err)
	}
	kv, err := r.st.Get(ctx, hkey)
	switch {
	case err == nil:
		if err := json.Unmarshal(kv.Value, &st.head); err != nil {
			return issuedState{}, bad(err)
		}
		st.headRev = kv.Revision
	case errors.Is(err, store.ErrNotFound):
	default:
		return issuedState{}, storeErr("reading the SVIDs issued through "+agent.String(), err)
	}
	load := func(entry string, kv store.KV) error {
		var e issuedEntry
		if err := json.Unmarshal(kv.Value, &e); err != nil {
			return bad(err)
		}
		st.recs[entry], st.revs[entry] = &e, kv.Revision
		return nil
	}
	if all || len(entries) > 32 {
		// One read for many: the agent's records, those asked for kept.
		kvs, err := r.st.List(ctx, prefix)
		if err != nil {
			return issuedState{}, storeErr("reading the SVIDs issued through "+agent.String(), err)
		}
		want := make(map[string]bool, len(entries))
		for _, e := range entries {
			want[e], st.revs[e] = true, 0
		}
		for _, kv := range kvs {
			entry := strings.TrimPrefix(kv.Key, prefix)
			if all || want[entry] {
				if err := load(entry, kv); err != nil {
					return issuedState{}, err
				}
			}
		}
	} else {
		for _, entry := range entries {
			if _, ok := st.revs[entry]; ok {
				continue
			}
			kv, err := r.st.Get(ctx, prefix+entry)
			switch {
			case err == nil:
				if err := load(entry, kv); err != nil {
					return issuedState{}, err
				}
			case errors.Is(err, store.ErrNotFound):
				st.revs[entry] = 0
			default:
				return issuedState{}, storeErr("reading the SVIDs issued through "+agent.String(), err)
			}
		}
	}
	now := r.now()
	st.head.SVIDs = pruneIssued(st.head.SVIDs, now, 0)
	st.head.Displacements = slices.DeleteFunc(st.head.Displacements, func(t time.Time) bool { return !t.Add(DisplaceWindow).After(now) })
	st.head.JWTExps = slices.DeleteFunc(st.head.JWTExps, func(x int64) bool { return !time.Unix(x, 0).Add(JWTLeeway).After(now) })
	for _, e := range st.recs {
		e.SVIDs = pruneIssued(e.SVIDs, now, 0)
		e.JWTs = pruneIssued(e.JWTs, now, JWTLeeway) // still accepted that long past exp
		e.Displaced = pruneIssued(e.Displaced, now, DenyListSkew)
	}
	return st, nil
}

// chunkSize is how many entry records one batch writes (with the head).
func (r *Registry) chunkSize() int { return max(1, r.st.MaxBatch()-1) }

// updateIssued applies fn to agent's head and the records of entries (at
// most chunkSize): read, then written in one batch conditional on every
// revision read, the head's included (so an eviction, which writes the
// head, fails any signing record in flight: it is read again and
// refused). fn is called again after a conflict.
func (r *Registry) updateIssued(ctx context.Context, agent spiffeid.ID, entries []string, fn func(st *issuedState) error) error {
	hkey, prefix, err := r.issuedKeys(agent)
	if err != nil {
		return err
	}
	for range maxCASRetry {
		st, err := r.readIssued(ctx, agent, entries, false)
		if err != nil {
			return err
		}
		if err := fn(&st); err != nil {
			return err
		}
		hv, _ := json.Marshal(st.head)
		ops := []store.Op{{Key: hkey, Value: hv, ExpectRevision: st.headRev}}
		written := map[string]bool{}
		for _, entry := range entries {
			if written[entry] {
				continue
			}
			written[entry] = true
			e, rev := st.recs[entry], st.revs[entry]
			switch {
			case e != nil && (len(e.SVIDs) > 0 || len(e.Displaced) > 0 || len(e.JWTs) > 0):
				v, _ := json.Marshal(e)
				ops = append(ops, store.Op{Key: prefix + entry, Value: v, ExpectRevision: rev})
			case rev > 0:
				ops = append(ops, store.Op{Key: prefix + entry, Delete: true, ExpectRevision: rev})
			}
		}
		if _, err := r.st.Batch(ctx, ops); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return storeErr("writing the SVIDs issued through "+agent.String(), err)
		}
		return nil
	}
	return errs.Errorf(errs.Conflict, "the SVIDs issued through %s: too much contention; retry", agent)
}

// RecordIssued records X509-SVIDs signed through agent before they are
// released, refusing (Precondition) those of an entry already at
// MaxIssuedPerEntry: RecordIssuedDisplacing with nothing to displace to.
func (r *Registry) RecordIssued(ctx context.Context, agent spiffeid.ID, items []Issued, attested bool) (perItem []error, err error) {
	perItem, _, err = r.RecordIssuedDisplacing(ctx, agent, items, attested, nil)
	return perItem, err
}

// Displace puts SVIDs on the deny-list until their NotAfter; its error
// refuses the signings that needed the room.
type Displace func(ctx context.Context, svids []Issued) error

// room decides whether entry's record has room for one more SVID: nil
// and nothing to displace, nil and the oldest SVIDs to displace (when
// displacing), or an error (Precondition).
func room(agent spiffeid.ID, entry string, e *issuedEntry, displacing bool, lim IssueLimits) ([]Issued, error) {
	over := len(e.SVIDs) + 1 - lim.SVIDsPerEntry
	if over <= 0 {
		return nil, nil
	}
	if !displacing {
		return nil, errs.Errorf(errs.Precondition, "entry %s already holds %d unexpired X509-SVIDs signed through agent %s: "+
			"no more until one expires (an agent rotates at half the lifetime and holds 2-3)", entry, len(e.SVIDs), agent)
	}
	if len(e.Displaced)+over > lim.DisplacedPerEntry {
		return nil, errs.Errorf(errs.Precondition, "entry %s already holds %d unexpired X509-SVIDs signed through agent %s and %d more "+
			"were revoked to make room, the most within a lifetime: no more until one expires (a crash-looping agent: give it a "+
			"persistent data directory)", entry, len(e.SVIDs), agent, len(e.Displaced))
	}
	old := slices.SortedFunc(slices.Values(e.SVIDs), func(a, b Issued) int { return a.NotAfter.Compare(b.NotAfter) })
	return old[:over], nil
}

// RecordIssuedDisplacing records X509-SVIDs signed through agent before
// they are released. It returns one error per item (nil: recorded,
// release it) and the SVIDs displaced. An entry at MaxIssuedPerEntry
// makes room by displacing its oldest SVIDs (earliest NotAfter) to the
// deny-list through displace (before the record drops them, so an
// eviction always finds every unexpired SVID in the record or on the
// deny-list), at most MaxDisplacedPerEntry on it at once; nil displace,
// a displace error, or the displaced bound refuse the item instead
// (Precondition, or displace's error). attested clears an eviction (the
// agent attested again, its attestation already recorded) unless the
// agent's record is evicted again by now; otherwise an evicted agent's
// items are all refused (Denied), so a signing in flight while the agent
// is evicted is never released unrevoked. err is set when nothing could
// be recorded.
func (r *Registry) RecordIssuedDisplacing(ctx context.Context, agent spiffeid.ID, items []Issued, attested bool, displace Displace) (perItem []error, displaced []Issued, err error) {
	// One call of an agent at a time on this authority (issuedLock): its
	// calls no longer compare-and-swap against each other, so none gives
	// up with Conflict however many there are at once
	// (TestConcurrentRecordsOfOneAgentAllSucceed). A displacement (a
	// policy version) is made inside the record's compare-and-swap: calls
	// of one agent at once would each make one on the same head, and only
	// the one whose write won would be counted against
	// MaxDisplacementsPerAgent (the others retry on the moved head and
	// displace again). A retry never displaces what this call already did
	// (TestConcurrentDisplacementsStayCounted); authorities sharing a
	// store can still each lose one race, no more.
	unlock := r.issuedLock(agent)
	defer unlock()
	if displace != nil {
		displace = displaceOnce(displace)
	}
	perItem = make([]error, len(items))
	entries := distinct(items, func(it Issued) string { return it.Entry })
	recorded := false
	for len(entries) > 0 {
		chunk := entries[:min(r.chunkSize(), len(entries))]
		entries = entries[len(chunk):]
		var out []Issued
		err := r.updateIssued(ctx, agent, chunk, func(st *issuedState) error {
			out = nil
			if st.head.Evicted && attested {
				// An eviction may have run between the attestation's
				// record and this one (EvictAgent marks the agent, then
				// takes this record): the agent's record, read after this
				// record and before the batch that writes it, says.
				// Cleared unchecked, the attestation's SVID was released
				// unrevoked by an eviction that had already taken the
				// record.
				a, err := r.GetAgent(ctx, agent)
				if err != nil {
					return err
				}
				if a.Evicted {
					return errs.Errorf(errs.Denied, "agent %s was evicted while it attested: attest again", agent)
				}
				st.head.Evicted = false
			}
			if st.head.Evicted {
				return errs.Errorf(errs.Denied, "agent %s was evicted: attest again", agent)
			}
			out = r.placeIssued(ctx, agent, st, chunk, items, perItem, displace)
			return nil
		})
		if err != nil {
			if !recorded {
				return nil, displaced, err
			}
			// Earlier chunks are recorded: this one's items and the
			// rest are refused.
			left := map[string]bool{}
			for _, e := range append(chunk, entries...) {
				left[e] = true
			}
			for i, it := range items {
				if left[it.Entry] {
					perItem[i] = err
				}
			}
			return perItem, displaced, nil
		}
		recorded = true
		displaced = append(displaced, out...)
	}
	return perItem, displaced, nil
}

// issuedLock takes the lock of agent's issued records on this authority
// and returns its unlock: every write of them (recording, an eviction
// taking them, forgetting) holds it, so the calls of one agent queue here
// instead of retrying their compare-and-swap against each other (which
// gave up with Conflict after maxCASRetry under a burst of one agent's
// calls). Only authorities sharing the store still race, each retrying.
// Striped: agents sharing a stripe queue behind each other too.
func (r *Registry) issuedLock(agent spiffeid.ID) (unlock func()) {
	mu := &r.issuedMu[maphash.String(issuedSeed, agent.String())%uint64(len(r.issuedMu))]
	mu.Lock()
	return mu.Unlock
}

var issuedSeed = maphash.MakeSeed()

// displaceOnce wraps displace for one call: SVIDs it already put on the
// deny-list (an attempt whose write then lost the compare-and-swap) are
// not displaced again, and a retry that needs nothing new makes no
// version.
func displaceOnce(displace Displace) Displace {
	done := map[string]bool{}
	return func(ctx context.Context, svids []Issued) error {
		var fresh []Issued
		for _, sv := range svids {
			if !done[sv.Serial] {
				fresh = append(fresh, sv)
			}
		}
		if len(fresh) == 0 {
			return nil
		}
		if err := displace(ctx, fresh); err != nil {
			return err
		}
		for _, sv := range fresh {
			done[sv.Serial] = true
		}
		return nil
	}
}

// placeIssued adds the items of chunk's entries to st, setting their
// perItem; an entry at its bound displaces its oldest SVIDs through
// displace first. It returns the SVIDs displaced.
func (r *Registry) placeIssued(ctx context.Context, agent spiffeid.ID, st *issuedState, chunk []string, items []Issued, perItem []error, displace Displace) []Issued {
	try := func(displacing bool) (map[string]*issuedEntry, []Issued, []bool) {
		plan := map[string]*issuedEntry{}
		for _, entry := range chunk {
			e := st.rec(entry)
			plan[entry] = &issuedEntry{SVIDs: slices.Clone(e.SVIDs), Displaced: slices.Clone(e.Displaced), JWTs: slices.Clone(e.JWTs)}
		}
		var out []Issued
		needed := make([]bool, len(items))
		for i, it := range items {
			e := plan[it.Entry]
			if e == nil {
				continue // another chunk's
			}
			old, err := room(agent, it.Entry, e, displacing, r.opts.Limits)
			perItem[i] = err
			if err != nil {
				continue
			}
			needed[i] = len(old) > 0
			e.SVIDs = slices.DeleteFunc(e.SVIDs, func(s Issued) bool { return slices.Contains(old, s) })
			e.Displaced = append(e.Displaced, old...)
			e.SVIDs = append(e.SVIDs, it)
			out = append(out, old...)
		}
		return plan, out, needed
	}
	plan, out, needed := try(displace != nil)
	if len(out) > 0 {
		err := st.head.displaceBudget(agent, r.opts.Limits)
		if err == nil {
			err = displace(ctx, out)
		}
		if err != nil {
			// Nothing displaced: the items that needed room are refused
			// with that error, the others recorded as they fit.
			plan, out, _ = try(false)
			for i := range items {
				if needed[i] {
					perItem[i] = err
				}
			}
		} else {
			st.head.Displacements = append(st.head.Displacements, r.now())
		}
	}
	for entry, e := range plan {
		st.recs[entry] = e
	}
	return out
}

// RecordJWT records a JWT-SVID minted for entry through agent (its jti
// and exp) before it is released, so that evicting the agent revokes it
// until exp. Refused: an evicted agent (Denied: a mint in flight when the
// agent is evicted is never released unrecorded), an entry or the agent
// already holding its bound of unexpired ones (Limits: JWTsPerEntry,
// JWTsPerAgent; Precondition).
func (r *Registry) RecordJWT(ctx context.Context, agent spiffeid.ID, entry, jti string, exp time.Time) error {
	if entry == "" || jti == "" {
		return errs.Errorf(errs.Invalid, "recording a JWT-SVID through %s: no entry or jti", agent)
	}
	unlock := r.issuedLock(agent)
	defer unlock()
	return r.updateIssued(ctx, agent, []string{entry}, func(st *issuedState) error {
		if st.head.Evicted {
			return errs.Errorf(errs.Denied, "agent %s was evicted: attest again", agent)
		}
		e := st.rec(entry)
		if err := r.jwtBound(agent, entry, &st.head, e); err != nil {
			return err
		}
		e.JWTs = append(e.JWTs, Issued{Entry: entry, Serial: jti, NotAfter: exp, JWT: true})
		st.head.JWTExps = append(st.head.JWTExps, exp.Unix())
		return nil
	})
}

// JWTRoom says, before anything is signed, whether a JWT-SVID for entry
// could be recorded through agent now (one read): nil, Denied (evicted),
// or Precondition (the entry at its bound), as RecordJWT would answer. A
// Node API mint checks it first, so an agent at its bound minting in a
// loop costs no signature.
func (r *Registry) JWTRoom(ctx context.Context, agent spiffeid.ID, entry string) error {
	st, err := r.readIssued(ctx, agent, []string{entry}, false)
	if err != nil {
		return err
	}
	if st.head.Evicted {
		return errs.Errorf(errs.Denied, "agent %s was evicted: attest again", agent)
	}
	return r.jwtBound(agent, entry, &st.head, st.rec(entry))
}

func (r *Registry) jwtBound(agent spiffeid.ID, entry string, h *issuedHead, e *issuedEntry) error {
	if n := len(h.JWTExps); n >= r.opts.Limits.JWTsPerAgent {
		return errs.Errorf(errs.Precondition, "agent %s already holds %d unexpired JWT-SVIDs minted for its entries: "+
			"no more for any entry until one expires (an eviction revokes each of them on the deny-list, which federated "+
			"peers take up to 1 MiB of; identity.max_jwt_svids_per_agent)", agent, n)
	}
	if len(e.JWTs) < r.opts.Limits.JWTsPerEntry {
		return nil
	}
	return errs.Errorf(errs.Precondition, "entry %s already holds %d unexpired JWT-SVIDs minted through agent %s: "+
		"no more until one expires (an agent caches one per audience set and renews it at half its lifetime; "+
		"identity.max_jwt_svids_per_entry)", entry, len(e.JWTs), agent)
}

// IssuedJWTs returns the unexpired JWT-SVIDs recorded for agent.
func (r *Registry) IssuedJWTs(ctx context.Context, agent spiffeid.ID) ([]Issued, error) {
	st, err := r.readIssued(ctx, agent, nil, true)
	if err != nil {
		return nil, err
	}
	return st.jwts(), nil
}

// jwts is the JWT-SVIDs of st's entry records, by entry.
func (st *issuedState) jwts() []Issued {
	var out []Issued
	for _, entry := range slices.Sorted(maps.Keys(st.recs)) {
		out = append(out, st.recs[entry].JWTs...)
	}
	return out
}

// IssueRoom says, before anything is signed, whether X509-SVIDs for
// entries could be recorded through agent now (one read of its records):
// one error per entry (nil: there is room, or displacing could make it),
// the same as RecordIssuedDisplacing would give (Precondition at the
// bounds); err (Denied) for an agent evicted (unless attested: its
// attestation lifts the eviction). A Node API call checks it first, so an
// agent at its bounds costs no signing. Entries listed twice are counted
// twice.
func (r *Registry) IssueRoom(ctx context.Context, agent spiffeid.ID, entries []string, attested, displacing bool) ([]error, error) {
	st, err := r.readIssued(ctx, agent, distinct(entries, func(e string) string { return e }), false)
	if err != nil {
		return nil, err
	}
	if st.head.Evicted && !attested {
		return nil, errs.Errorf(errs.Denied, "agent %s was evicted: attest again", agent)
	}
	budget := st.head.displaceBudget(agent, r.opts.Limits)
	out := make([]error, len(entries))
	for i, entry := range entries {
		e := st.rec(entry)
		old, err := room(agent, entry, e, displacing, r.opts.Limits)
		if err == nil && len(old) > 0 && budget != nil {
			err = budget
		}
		if out[i] = err; err != nil {
			continue
		}
		e.SVIDs = slices.DeleteFunc(e.SVIDs, func(s Issued) bool { return slices.Contains(old, s) })
		e.Displaced = append(e.Displaced, old...)
		e.SVIDs = append(e.SVIDs, Issued{Entry: entry})
	}
	return out, nil
}

// IssuedSVIDs returns the unexpired X509-SVIDs recorded for agent (for
// tests and `ward agent list`-style views); displaced ones are not (they
// are on the deny-list).
func (r *Registry) IssuedSVIDs(ctx context.Context, agent spiffeid.ID) ([]Issued, error) {
	st, err := r.readIssued(ctx, agent, nil, true)
	if err != nil {
		return nil, err
	}
	return st.all(false), nil
}

// DisplacedSVIDs returns the SVIDs signed through agent that were
// displaced to the deny-list and are still on it.
func (r *Registry) DisplacedSVIDs(ctx context.Context, agent spiffeid.ID) ([]Issued, error) {
	st, err := r.readIssued(ctx, agent, nil, true)
	if err != nil {
		return nil, err
	}
	var out []Issued
	for _, entry := range slices.Sorted(maps.Keys(st.recs)) {
		out = append(out, st.recs[entry].Displaced...)
	}
	return out, nil
}

// all returns the SVIDs of st (the head's, then by entry's), with the
// displaced ones when displaced is set.
func (st *issuedState) all(displaced bool) []Issued {
	out := slices.Clone(st.head.SVIDs)
	for _, entry := range slices.Sorted(maps.Keys(st.recs)) {
		e := st.recs[entry]
		out = append(out, e.SVIDs...)
		if displaced {
			out = append(out, e.Displaced...)
		}
	}
	return out
}

// takeIssued marks agent's records evicted (no signing recorded, so none
// released, until it attests again) and returns its unexpired SVIDs, the
// displaced ones included (revoking them again keeps them revoked if the
// deny-list lost them, e.g. to a rollback), then its JWT-SVIDs still
// accepted (JWT set: unexpired, or expired less than JWTLeeway ago).
func (r *Registry) takeIssued(ctx context.Context, agent spiffeid.ID) ([]Issued, error) {
	unlock := r.issuedLock(agent)
	defer unlock()
	if err := r.updateIssued(ctx, agent, nil, func(st *issuedState) error {
		st.head.Evicted = true
		return nil
	}); err != nil {
		return nil, err
	}
	// Every record written before the head is in this read; none is
	// written after it (their batches expect the head's old revision).
	st, err := r.readIssued(ctx, agent, nil, true)
	if err != nil {
		return nil, err
	}
	now := r.now()
	out := slices.DeleteFunc(st.all(true), func(s Issued) bool { return !s.NotAfter.After(now) })
	// readIssued kept the JWT-SVIDs still accepted (JWTLeeway past exp):
	// revoked until then.
	return append(out, st.jwts()...), nil
}

// forget drops serials (and JWT-SVIDs' jtis) from agent's records (the
// head's and the entries' live SVIDs and JWTs; displaced ones stay
// counted). Entries are read in one list
// and written chunkSize at a time.
func (r *Registry) forget(ctx context.Context, agent spiffeid.ID, gone []Issued) error {
	if len(gone) == 0 {
		return nil
	}
	unlock := r.issuedLock(agent)
	defer unlock()
	serials := map[string]bool{}
	for _, s := range gone {
		serials[s.Serial] = true
	}
	entries := distinct(gone, func(it Issued) string { return it.Entry })
	drop := func(s []Issued) []Issued {
		return slices.DeleteFunc(s, func(x Issued) bool { return serials[x.Serial] })
	}
	for first := true; first || len(entries) > 0; first = false {
		chunk := entries[:min(r.chunkSize(), len(entries))]
		entries = entries[len(chunk):]
		if err := r.updateIssued(ctx, agent, chunk, func(st *issuedState) error {
			st.head.SVIDs = drop(st.head.SVIDs)
			for _, e := range chunk {
				st.rec(e).SVIDs = drop(st.rec(e).SVIDs)
				for _, j := range st.rec(e).JWTs {
					if serials[j.Serial] {
						// one fewer counted against the agent's bound
						if i := slices.Index(st.head.JWTExps, j.NotAfter.Unix()); i >= 0 {
							st.head.JWTExps = slices.Delete(st.head.JWTExps, i, i+1)
						}
					}
				}
				st.rec(e).JWTs = drop(st.rec(e).JWTs)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// forgetIssued drops the SVIDs of an evicted agent once they are revoked
// (the head stays evicted).
func (r *Registry) forgetIssued(ctx context.Context, agent spiffeid.ID, revoked []Issued) error {
	return r.forget(ctx, agent, revoked)
}

// ForgetWithheld drops SVIDs recorded by RecordIssued that were then
// withheld (the audit log was down): never released, they need no
// revocation, and kept they held the entry's bound, so an agent retrying
// through an audit outage was refused (FailedPrecondition) for up to a
// whole SVID lifetime once the log was back. An eviction is kept.
func (r *Registry) ForgetWithheld(ctx context.Context, agent spiffeid.ID, withheld []Issued) error {
	return r.forget(ctx, agent, withheld)
}

// distinct returns the keys of s, each once, in their first order.
func distinct[T any](s []T, key func(T) string) []string {
	seen := make(map[string]bool, len(s))
	var out []string
	for _, x := range s {
		if k := key(x); !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}
