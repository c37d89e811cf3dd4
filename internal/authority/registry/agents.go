package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Attestation types.
const (
	AttestJoinToken = "join_token"
	AttestX509Pop   = "x509pop"
	AttestK8sPSAT   = "k8s_psat"
)

// tokenRecord is what is stored for a join token: never the token itself,
// only its SHA-256 (the store key).
type tokenRecord struct {
	ID      string    `json:"id"`
	AgentID string    `json:"agent_id"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	Used    time.Time `json:"used,omitzero"`
}

// JoinToken is a freshly created token. Token is the secret, shown once.
type JoinToken struct {
	Token   string
	ID      string
	AgentID spiffeid.ID
	Expires time.Time
}

const tokenBytes = 32 // 256-bit tokens

func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return tokenPrefix + hex.EncodeToString(sum[:])
}

// agentIDFor validates an operator-chosen agent path ("rack1/node-7").
func (r *Registry) agentIDFor(path string) (spiffeid.ID, error) {
	path = strings.Trim(path, "/")
	for _, r := range []string{AttestJoinToken, AttestX509Pop, AttestK8sPSAT} {
		if strings.HasPrefix(path, r+"/") || path == r {
			return spiffeid.ID{}, errs.Errorf(errs.Invalid, "agent path %q: %s/, %s/ and %s/ are reserved for derived agent IDs; choose another path", path, AttestJoinToken, AttestX509Pop, AttestK8sPSAT)
		}
	}
	id, err := spiffeid.FromPath(r.opts.TrustDomain, AgentIDPrefix+path)
	if err != nil {
		return spiffeid.ID{}, errs.Errorf(errs.Invalid, "agent path %q is not a valid SPIFFE path (%v): use segments of letters, digits, '.', '-' and '_', e.g. rack1/node-7", path, err)
	}
	return id, nil
}

// CreateJoinToken creates a single-use join token valid for ttl (0 = 10m,
// at most Options.MaxTokenTTL). agentPath, if set, names the agent
// (spiffe://TD/ward/agent/<agentPath>); by default the agent ID is
// spiffe://TD/ward/agent/join_token/<token ID>.
func (r *Registry) CreateJoinToken(ctx context.Context, ttl time.Duration, agentPath string) (JoinToken, error) {
	fields := map[string]string{"ttl": ttl.String()}
	if ttl == 0 {
		ttl = defaultToken
	}
	if ttl < time.Second || ttl > r.opts.MaxTokenTTL {
		return JoinToken{}, r.auditEnd(ctx, "token.create", fields, errs.Errorf(errs.Invalid,
			"join token ttl %s is out of range: use between 1s and %s (identity.join_token_max_ttl)", ttl, r.opts.MaxTokenTTL))
	}
	tid, err := randomHex(8)
	if err != nil {
		return JoinToken{}, err
	}
	var agentID spiffeid.ID
	if agentPath != "" {
		if agentID, err = r.agentIDFor(agentPath); err != nil {
			return JoinToken{}, r.auditEnd(ctx, "token.create", fields, err)
		}
	} else {
		agentID = spiffeid.RequireFromPath(r.opts.TrustDomain, AgentIDPrefix+AttestJoinToken+"/"+tid)
	}
	secret, err := randomHex(tokenBytes)
	if err != nil {
		return JoinToken{}, err
	}
	now := r.now()
	rec := tokenRecord{ID: tid, AgentID: agentID.String(), Created: now, Expires: now.Add(ttl)}
	fields["token_id"], fields["agent_id"], fields["expires"] = tid, rec.AgentID, rec.Expires.Format(time.RFC3339)
	if err := r.auditStart(ctx, "token.create", fields); err != nil {
		return JoinToken{}, err
	}
	b, _ := json.Marshal(rec)
	if _, err := r.st.CompareAndSwap(ctx, tokenKey(secret), b, 0); err != nil {
		return JoinToken{}, r.auditEnd(ctx, "token.create", fields, storeErr("storing join token "+tid, err))
	}
	return JoinToken{Token: secret, ID: tid, AgentID: agentID, Expires: rec.Expires},
		r.auditEnd(ctx, "token.create", fields, nil)
}

// ConsumeJoinToken redeems token once: it returns the agent ID the token
// grants and the token's ID. Unknown, expired and used tokens are refused
// (errs.Denied); of two concurrent redemptions exactly one wins.
func (r *Registry) ConsumeJoinToken(ctx context.Context, token string) (spiffeid.ID, string, error) {
	if len(token) != 2*tokenBytes {
		return spiffeid.ID{}, "", errs.Errorf(errs.Denied, "join token rejected: malformed (a token is %d hex digits from `ward token create`)", 2*tokenBytes)
	}
	key := tokenKey(token)
	for attempt := 0; attempt < maxCASRetry; attempt++ {
		kv, err := r.st.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			return spiffeid.ID{}, "", errs.Errorf(errs.Denied, "join token rejected: unknown token; create one with `ward token create`")
		}
		if err != nil {
			return spiffeid.ID{}, "", storeErr("reading join token", err)
		}
		var rec tokenRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return spiffeid.ID{}, "", errs.Errorf(errs.Internal, "stored join token is unreadable: %v", err)
		}
		now := r.now()
		if !rec.Used.IsZero() {
			return spiffeid.ID{}, rec.ID, errs.Errorf(errs.Denied, "join token %s rejected: already used at %s; tokens are single-use, create a new one", rec.ID, rec.Used.Format(time.RFC3339))
		}
		if !now.Before(rec.Expires) {
			return spiffeid.ID{}, rec.ID, errs.Errorf(errs.Denied, "join token %s rejected: expired at %s; create a new one", rec.ID, rec.Expires.Format(time.RFC3339))
		}
		id, err := spiffeid.FromString(rec.AgentID)
		if err != nil {
			return spiffeid.ID{}, rec.ID, errs.Errorf(errs.Internal, "join token %s holds a bad agent ID: %v", rec.ID, err)
		}
		rec.Used = now
		b, _ := json.Marshal(rec)
		if _, err := r.st.CompareAndSwap(ctx, key, b, kv.Revision); errors.Is(err, store.ErrConflict) {
			continue // someone else touched it: re-read (it is probably used now)
		} else if err != nil {
			return spiffeid.ID{}, rec.ID, storeErr("redeeming join token "+rec.ID, err)
		}
		return id, rec.ID, nil
	}
	return spiffeid.ID{}, "", errs.Errorf(errs.Conflict, "join token: too much contention; retry")
}

// PurgeTokens deletes tokens that expired (or were used) more than grace
// ago and returns how many went.
func (r *Registry) PurgeTokens(ctx context.Context, grace time.Duration) (int, error) {
	kvs, err := r.st.List(ctx, tokenPrefix)
	if err != nil {
		return 0, storeErr("listing join tokens", err)
	}
	cut := r.now().Add(-grace)
	n := 0
	for _, kv := range kvs {
		var rec tokenRecord
		if json.Unmarshal(kv.Value, &rec) != nil {
			continue
		}
		if rec.Expires.Before(cut) || !rec.Used.IsZero() && rec.Used.Before(cut) {
			if _, err := r.st.Batch(ctx, []store.Op{{Key: kv.Key, Delete: true, ExpectRevision: kv.Revision}}); err == nil {
				n++
			}
		}
	}
	return n, nil
}

// Agent is an attested node.
type Agent struct {
	SPIFFEID        string            `json:"spiffe_id"`
	AttestationType string            `json:"attestation_type"`
	Selectors       []attest.Selector `json:"selectors,omitempty"`
	// Serial (hex) and expiry of the current agent SVID; PrevSerial is the
	// one it replaced (still accepted for SupersededGrace after the
	// renewal, so calls in flight on the old connection finish).
	// CurrentSeen says the current SVID has been presented to the Node API
	// since it was issued: until then PrevSerial may renew again (the
	// agent never got the renewal's response), after that it may not.
	Serial      string    `json:"serial"`
	CurrentSeen bool      `json:"current_seen,omitempty"`
	PrevSerial  string    `json:"prev_serial,omitempty"`
	PrevExpiry  time.Time `json:"prev_expiry,omitzero"`
	Expires     time.Time `json:"expires"`
	Attested    time.Time `json:"attested"`
	LastSeen    time.Time `json:"last_seen"`
	Evicted     bool      `json:"evicted,omitempty"`
	EvictedAt   time.Time `json:"evicted_at,omitzero"`
	// EvictPending: an eviction marked the agent but has not revoked the
	// SVIDs signed through it yet (it failed, or is under way): the agent
	// may not attest again until an eviction completes, or its old SVIDs
	// would stay valid beside its new ones (EvictAgent).
	EvictPending bool  `json:"evict_pending,omitempty"`
	Revision     int64 `json:"-"`
}

func (r *Registry) agentKey(id spiffeid.ID) (string, error) {
	if !IsAgentID(r.opts.TrustDomain, id) {
		return "", errs.Errorf(errs.Invalid, "%q is not an agent ID of trust domain %q (agent IDs are spiffe://%s%s...; see `ward agent list`)",
			id.String(), r.opts.TrustDomain.Name(), r.opts.TrustDomain.Name(), AgentIDPrefix)
	}
	return agentPrefix + strings.TrimPrefix(id.Path(), AgentIDPrefix), nil
}

// GetAgent returns the record of agent id.
func (r *Registry) GetAgent(ctx context.Context, id spiffeid.ID) (Agent, error) {
	key, err := r.agentKey(id)
	if err != nil {
		return Agent{}, err
	}
	kv, err := r.st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return Agent{}, errs.Errorf(errs.NotFound, "agent %s not found: see `ward agent list`", id)
	}
	if err != nil {
		return Agent{}, storeErr("reading agent "+id.String(), err)
	}
	return decodeAgent(kv)
}

func decodeAgent(kv store.KV) (Agent, error) {
	var a Agent
	if err := json.Unmarshal(kv.Value, &a); err != nil {
		return Agent{}, errs.Errorf(errs.Internal, "stored agent %s is unreadable: %v", kv.Key, err)
	}
	a.Revision = kv.Revision
	return a, nil
}

// ListAgents returns every agent record, sorted by SPIFFE ID.
func (r *Registry) ListAgents(ctx context.Context) ([]Agent, error) {
	kvs, err := r.st.List(ctx, agentPrefix)
	if err != nil {
		return nil, storeErr("listing agents", err)
	}
	out := make([]Agent, 0, len(kvs))
	for _, kv := range kvs {
		a, err := decodeAgent(kv)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// update applies fn to agent id's record with compare-and-swap; create
// allows a missing record (fn then gets a zero Agent with ok false).
func (r *Registry) update(ctx context.Context, id spiffeid.ID, create bool, fn func(a *Agent, exists bool) error) (Agent, error) {
	key, err := r.agentKey(id)
	if err != nil {
		return Agent{}, err
	}
	for attempt := 0; attempt < maxCASRetry; attempt++ {
		var a Agent
		kv, err := r.st.Get(ctx, key)
		exists := err == nil
		switch {
		case exists:
			if a, err = decodeAgent(kv); err != nil {
				return Agent{}, err
			}
		case errors.Is(err, store.ErrNotFound):
			if !create {
				return Agent{}, errs.Errorf(errs.NotFound, "agent %s not found: see `ward agent list`", id)
			}
		default:
			return Agent{}, storeErr("reading agent "+id.String(), err)
		}
		if err := fn(&a, exists); err != nil {
			return Agent{}, err
		}
		b, _ := json.Marshal(a)
		rev, err := r.st.CompareAndSwap(ctx, key, b, a.Revision)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Agent{}, storeErr("writing agent "+id.String(), err)
		}
		a.Revision = rev
		return a, nil
	}
	return Agent{}, errs.Errorf(errs.Conflict, "agent %s: too much contention; retry", id)
}

// RecordAttestation stores (or replaces) the record of a freshly attested
// agent holding the SVID serial, clearing any eviction. The caller audits
// the attestation with the issued SVID.
func (r *Registry) RecordAttestation(ctx context.Context, id spiffeid.ID, typ string, sels []attest.Selector, serial string, expires time.Time) (Agent, error) {
	return r.RecordAttestationIf(ctx, id, typ, sels, serial, expires, nil)
}

// RecordAttestationIf is RecordAttestation with a rule on the record it
// replaces: allow (when not nil) sees the current record in the same
// compare-and-swap as the write, and its error refuses the attestation
// and leaves the record as it is.
func (r *Registry) RecordAttestationIf(ctx context.Context, id spiffeid.ID, typ string, sels []attest.Selector, serial string, expires time.Time,
	allow func(prev Agent, exists bool) error) (Agent, error) {
	now := r.now()
	return r.update(ctx, id, true, func(a *Agent, exists bool) error {
		if a.EvictPending {
			return errs.Errorf(errs.Precondition, "agent %s may not attest: its eviction at %s has not revoked the SVIDs signed through it "+
				"yet (it failed or is under way): run `ward agent evict %s` again until it succeeds", id, a.EvictedAt.Format(time.RFC3339), id)
		}
		if allow != nil {
			if err := allow(*a, exists); err != nil {
				return err
			}
		}
		rev := a.Revision
		*a = Agent{SPIFFEID: id.String(), AttestationType: typ, Selectors: attest.Normalize(sels), Serial: serial,
			Expires: expires, Attested: now, LastSeen: now, Revision: rev}
		return nil
	})
}

// RecordRenewal makes serial the agent's current SVID, replacing from, the
// serial of the SVID the renewal was made with. from must be the current
// serial, or the one it replaced (within SupersededGrace) while the
// current one has never been presented: that is the agent retrying a
// renewal whose response it never got (lost, timed out, or withheld because
// the audit log was down), and the unseen serial is dropped for good. Once
// the current SVID has been used, a superseded SVID may not renew: its
// holder would make their own certificate current and lock the real agent
// out. The check is in the same compare-and-swap as the write. An evicted
// agent is refused (errs.Denied): it must attest again.
func (r *Registry) RecordRenewal(ctx context.Context, id spiffeid.ID, from, serial string, expires time.Time) (Agent, error) {
	now := r.now()
	return r.update(ctx, id, false, func(a *Agent, _ bool) error {
		if err := checkSerial(a, id, from, now, renewing); err != nil {
			return err
		}
		if from == a.Serial {
			a.PrevSerial, a.PrevExpiry = a.Serial, a.Expires
			if grace := now.Add(SupersededGrace); grace.Before(a.PrevExpiry) {
				a.PrevExpiry = grace
			}
		}
		// A retry from PrevSerial keeps it, and its grace, as they are: the
		// grace is not extended, and the never-presented serial it
		// replaces is accepted no more.
		a.Serial, a.CurrentSeen, a.Expires, a.LastSeen = serial, false, expires, now
		return nil
	})
}

// SupersededGrace is how long an agent SVID that a renewal replaced is still
// accepted: long enough for calls already in flight on the old connection
// (the agent reconnects with the new SVID at once), short enough that a
// stolen superseded SVID is worth nothing after it.
const SupersededGrace = time.Minute

// lastSeenEvery bounds how often Authorize writes LastSeen.
const lastSeenEvery = time.Minute

// Authorize checks that agent id, presenting an SVID with serial, may call
// the Node API: it exists, is not evicted and the serial is its current
// (or, for SupersededGrace, just-replaced) SVID. It refreshes LastSeen at
// most once a minute, and records the first presentation of the current
// SVID (CurrentSeen), after which the replaced one may no longer renew.
// RenewAgent needs AuthorizeRenewal instead.
func (r *Registry) Authorize(ctx context.Context, id spiffeid.ID, serial string) (Agent, error) {
	return r.authorize(ctx, id, serial, calling)
}

// AuthorizeRenewal is Authorize for RenewAgent: the current SVID may renew,
// and the one it replaced only within SupersededGrace and only while the
// current one has never been presented (a renewal whose response the agent
// never got); see RecordRenewal.
func (r *Registry) AuthorizeRenewal(ctx context.Context, id spiffeid.ID, serial string) (Agent, error) {
	return r.authorize(ctx, id, serial, renewing)
}

type use int

const (
	calling use = iota
	renewing
)

// checkSerial says whether agent record a accepts serial for u at now.
func checkSerial(a *Agent, id spiffeid.ID, serial string, now time.Time, u use) error {
	if a.Evicted {
		return errs.Errorf(errs.Denied, "agent evicted: attest again (agent %s was evicted at %s)", id, a.EvictedAt.Format(time.RFC3339))
	}
	if serial == a.Serial {
		return nil
	}
	if serial != a.PrevSerial || !now.Before(a.PrevExpiry) {
		return errs.Errorf(errs.Denied, "agent %s presented SVID serial %s, which is no longer its current one: attest again", id, serial)
	}
	if u == renewing && a.CurrentSeen {
		return errs.Errorf(errs.Denied, "agent %s presented SVID serial %s, which a renewal superseded and whose successor is in use: only the current agent SVID may renew; use it (or attest again)", id, serial)
	}
	return nil
}

func (r *Registry) authorize(ctx context.Context, id spiffeid.ID, serial string, u use) (Agent, error) {
	a, err := r.GetAgent(ctx, id)
	if errs.KindOf(err) == errs.NotFound {
		return Agent{}, errs.Errorf(errs.Denied, "agent %s is not registered: attest again", id)
	}
	if err != nil {
		return Agent{}, err
	}
	now := r.now()
	if err := checkSerial(&a, id, serial, now, u); err != nil {
		return Agent{}, err
	}
	firstUse := serial == a.Serial && !a.CurrentSeen
	if !firstUse && now.Sub(a.LastSeen) < lastSeenEvery {
		return a, nil
	}
	u2, err := r.update(ctx, id, false, func(x *Agent, _ bool) error {
		// Checked again in the compare-and-swap: a renewal may have
		// replaced the serial since the read.
		if err := checkSerial(x, id, serial, now, u); err != nil {
			return err
		}
		if serial == x.Serial {
			x.CurrentSeen = true
		}
		x.LastSeen = now
		return nil
	})
	switch {
	case err == nil:
		return u2, nil
	case errs.KindOf(err) == errs.NotFound:
		return Agent{}, errs.Errorf(errs.Denied, "agent %s is not registered: attest again", id)
	case errs.KindOf(err) == errs.Denied, firstUse:
		// Refused; or the first use could not be recorded, and until it
		// is the replaced SVID could still renew: fail closed.
		return Agent{}, err
	}
	return a, nil // LastSeen is best effort
}

// EvictAgent marks agent id evicted: it can no longer renew, sync or sign
// and must attest again. With revoke set, the X509-SVIDs still valid that
// were signed through the agent (its workloads' and its own), and the
// JWT-SVIDs minted through it still unexpired (Issued.JWT: their jti and
// exp), are handed to revoke (the deny-list) in the same audited step, and no signing in
// flight is released after that (RecordIssued refuses an evicted agent).
// revoke returns how many it revoked (0: kept in the record, e.g. no
// policy applied yet, when everything is refused anyway; a later evict
// revokes them). Until that step succeeds the agent is EvictPending and
// may not attest again (RecordAttestationIf): an eviction that failed
// (the deny-list or the audit log down) leaves the agent out, not back
// with its old SVIDs still valid; running it again completes it. It
// returns how many were revoked. Audited (agent.evict, with the count).
func (r *Registry) EvictAgent(ctx context.Context, id spiffeid.ID, revoke func(context.Context, []Issued) (int, error)) (Agent, int, error) {
	fields := map[string]string{"agent_id": id.String()}
	if _, err := r.agentKey(id); err != nil {
		return Agent{}, 0, r.auditEnd(ctx, "agent.evict", fields, err)
	}
	if err := r.auditStart(ctx, "agent.evict", fields); err != nil {
		return Agent{}, 0, err
	}
	now := r.now()
	a, err := r.update(ctx, id, false, func(a *Agent, _ bool) error {
		if !a.Evicted {
			a.Evicted, a.EvictedAt = true, now
		}
		a.EvictPending = true
		return nil
	})
	n := 0
	if err == nil {
		fields["serial"] = a.Serial
		var svids []Issued
		if svids, err = r.takeIssued(ctx, id); err == nil && revoke != nil && len(svids) > 0 {
			if n, err = revoke(ctx, svids); err != nil {
				err = fmt.Errorf("agent %s is evicted, but revoking its %d unexpired SVIDs failed (run `ward agent evict` again; "+
					"until it succeeds the agent may not attest again): %w", id, len(svids), err)
			}
		}
		if err == nil {
			a, err = r.update(ctx, id, false, func(a *Agent, _ bool) error {
				a.EvictPending = false
				return nil
			})
		}
		if err == nil && n > 0 {
			err = r.forgetIssued(ctx, id, svids)
		}
		if j := CountJWT(svids); n > 0 {
			// X509-SVIDs and JWT-SVIDs (their jti on the deny-list until
			// exp) apart.
			fields["revoked_svids"], fields["revoked_jwt_svids"] = strconv.Itoa(n-j), strconv.Itoa(j)
		} else {
			fields["revoked_svids"] = "0"
		}
	}
	if err = r.auditEnd(ctx, "agent.evict", fields, err); err != nil {
		return a, n, err
	}
	return a, n, r.deleteEvictedTunnel(ctx, id)
}

// CountJWT counts the JWT-SVIDs in s (Issued.JWT).
func CountJWT(s []Issued) int {
	n := 0
	for _, x := range s {
		if x.JWT {
			n++
		}
	}
	return n
}

// deleteEvictedTunnel removes an evicted agent's tunnel record (it no
// longer holds its key or prefixes), audited as tunnel.delete.
func (r *Registry) deleteEvictedTunnel(ctx context.Context, id spiffeid.ID) error {
	key, err := r.tunnelKey(id)
	if err != nil {
		return err
	}
	kv, err := r.st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return storeErr("reading the tunnel of "+id.String(), err)
	}
	var t Tunnel
	_ = json.Unmarshal(kv.Value, &t)
	f := map[string]string{"agent_id": id.String(), "allowed_ips": strings.Join(t.AllowedIPs, ","), "endpoint": t.Endpoint, "reason": "agent evicted"}
	if err := r.auditStart(ctx, "tunnel.delete", f); err != nil {
		return err
	}
	err = r.st.Delete(ctx, key)
	if err != nil {
		err = storeErr("deleting the tunnel of "+id.String(), err)
	}
	return r.auditEnd(ctx, "tunnel.delete", f, err)
}
