package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/node/workloadapi"
	"github.com/wardproject/ward/internal/shared/attest"
)

// entry is one registration entry the agent issues SVIDs for.
type entry struct {
	id        string
	spiffeID  spiffeid.ID
	selectors []attest.Selector // normalized, non-empty
	ttl       time.Duration
	dns       []string
	hint      string
	fed       []spiffeid.TrustDomain
	revision  int64
	// spec names what the X509-SVID depends on (ID, TTL, DNS names): an
	// SVID issued for another spec is replaced at once.
	spec string
}

// svid is an X509-SVID the agent holds for an entry.
type svid struct {
	chain    []*x509.Certificate
	key      crypto.Signer
	rotateAt time.Time
	spec     string
}

func (s *svid) notAfter() time.Time { return s.chain[0].NotAfter }

func entrySpec(id spiffeid.ID, ttl time.Duration, dns []string) string {
	return id.String() + "|" + strconv.FormatInt(int64(ttl/time.Second), 10) + "|" + strings.Join(dns, ",")
}

// entryFromProto validates an entry received from the authority.
func entryFromProto(td spiffeid.TrustDomain, p *wardv1.Entry) (*entry, error) {
	if p.GetId() == "" {
		return nil, fmt.Errorf("entry without id")
	}
	id, err := spiffeid.FromString(p.GetSpiffeId())
	if err != nil {
		return nil, fmt.Errorf("entry %s: SPIFFE ID %q: %v", p.GetId(), p.GetSpiffeId(), err)
	}
	if !id.MemberOf(td) {
		return nil, fmt.Errorf("entry %s: SPIFFE ID %s is outside trust domain %s", p.GetId(), id, td)
	}
	if len(p.GetSelectors()) == 0 {
		return nil, fmt.Errorf("entry %s (%s) has no selectors", p.GetId(), id)
	}
	strs := make([]string, 0, len(p.GetSelectors()))
	for _, s := range p.GetSelectors() {
		strs = append(strs, s.GetType()+":"+s.GetValue())
	}
	sel, err := attest.ParseSelectors(strs)
	if err != nil {
		return nil, fmt.Errorf("entry %s (%s): %v", p.GetId(), id, err)
	}
	e := &entry{
		id: p.GetId(), spiffeID: id, selectors: sel,
		ttl: time.Duration(max(p.GetTtlSeconds(), 0)) * time.Second,
		dns: slices.Clone(p.GetDnsNames()), hint: p.GetHint(), revision: p.GetRevision(),
	}
	for _, f := range p.GetFederatesWith() {
		ftd, err := spiffeid.TrustDomainFromString(f)
		if err != nil {
			return nil, fmt.Errorf("entry %s (%s): federates_with %q: %v", p.GetId(), id, f, err)
		}
		e.fed = append(e.fed, ftd)
	}
	e.spec = entrySpec(id, e.ttl, e.dns)
	return e, nil
}

func (e *entry) toCache() cachedEntry {
	c := cachedEntry{ID: e.id, SPIFFEID: e.spiffeID.String(), TTLSeconds: int64(e.ttl / time.Second),
		DNSNames: e.dns, Hint: e.hint, Revision: e.revision}
	for _, s := range e.selectors {
		c.Selectors = append(c.Selectors, s.String())
	}
	for _, f := range e.fed {
		c.FederatesWith = append(c.FederatesWith, f.Name())
	}
	return c
}

func entryFromCache(td spiffeid.TrustDomain, c cachedEntry) (*entry, error) {
	p := &wardv1.Entry{Id: c.ID, SpiffeId: c.SPIFFEID, TtlSeconds: c.TTLSeconds, DnsNames: c.DNSNames,
		Hint: c.Hint, FederatesWith: c.FederatesWith, Revision: c.Revision}
	for _, s := range c.Selectors {
		typ, val, _ := strings.Cut(s, ":")
		p.Selectors = append(p.Selectors, &wardv1.Selector{Type: typ, Value: val})
	}
	return entryFromProto(td, p)
}

// rotateAt picks when an SVID received at now, valid from notBefore to
// notAfter, is replaced: uniformly in [45%, 55%] of its remaining lifetime
// (u is a uniform draw from [0, 1)), so workloads issued together do not
// all rotate in the same second. The lifetime counts from now if NotBefore
// was backdated for clock skew, so short TTLs still get half their life.
func rotateAt(now, notBefore, notAfter time.Time, u float64) time.Time {
	start := notBefore
	if now.After(start) {
		start = now
	}
	life := notAfter.Sub(start)
	if life <= 0 {
		return start
	}
	window := life / 10
	d := time.Duration(u * float64(window))
	if d >= window {
		d = window - 1 // float rounding of u close to 1
	}
	return start.Add(life*45/100 + max(d, 0))
}

// subsetSorted reports whether every selector of req is in have; both are
// normalized (sorted, deduplicated). It does not allocate. Like
// attest.Subset, it never matches an entry whose binary selectors lack a
// uid/gid selector (entryFromProto already refuses those).
func subsetSorted(req, have []attest.Selector) bool {
	if len(req) == 0 || attest.CheckEntrySelectors(req) != nil {
		return false
	}
	j := 0
	for _, r := range req {
		for j < len(have) && less(have[j], r) {
			j++
		}
		if j == len(have) || have[j] != r {
			return false
		}
		j++
	}
	return true
}

func less(a, b attest.Selector) bool {
	if a.Type != b.Type {
		return a.Type < b.Type
	}
	return a.Value < b.Value
}

// Identities implements workloadapi.Source: the entries whose selectors are
// all among the caller's, each with its X509-SVID if one is held and not
// expired. The order is stable (by SPIFFE ID, then entry ID); one identity
// per SPIFFE ID.
func (a *Agent) Identities(selectors []attest.Selector) []workloadapi.Identity {
	now := a.now()
	a.mu.RLock()
	defer a.mu.RUnlock()
	var matched []*entry
	for _, s := range selectors {
		for _, e := range a.index[s] {
			if subsetSorted(e.selectors, selectors) {
				matched = append(matched, e)
			}
		}
	}
	if len(matched) == 0 {
		return nil
	}
	slices.SortFunc(matched, func(x, y *entry) int {
		if c := strings.Compare(x.spiffeID.String(), y.spiffeID.String()); c != 0 {
			return c
		}
		return strings.Compare(x.id, y.id)
	})
	out := make([]workloadapi.Identity, 0, len(matched))
	for i, e := range matched {
		if i > 0 && matched[i-1].spiffeID == e.spiffeID {
			// Same ID from a second entry: prefer one that has an SVID.
			if last := &out[len(out)-1]; last.Chain == nil {
				if sv := a.svids[e.id]; sv != nil && now.Before(sv.notAfter()) {
					last.Chain, last.Key = sv.chain, sv.key
				}
			}
			continue
		}
		ident := workloadapi.Identity{ID: e.spiffeID, Hint: e.hint, FederatesWith: e.fed}
		if sv := a.svids[e.id]; sv != nil && now.Before(sv.notAfter()) {
			ident.Chain, ident.Key = sv.chain, sv.key
		}
		out = append(out, ident)
	}
	return out
}

// Bundles implements workloadapi.Source.
func (a *Agent) Bundles() (*spiffebundle.Bundle, []*spiffebundle.Bundle) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.bundle, a.federated
}

// Changed implements workloadapi.Source.
func (a *Agent) Changed() <-chan struct{} {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.changed
}

// notifyLocked wakes every stream; a.mu must be held for writing.
func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// MintJWTSVID implements workloadapi.Source (jwt.go).
func (a *Agent) MintJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (string, error) {
	return a.jwt.mint(ctx, a, id, audience)
}

// indexLocked rebuilds the selector index: each entry is listed under its
// first selector, so a caller's lookup visits each candidate once.
func (a *Agent) indexLocked() {
	a.index = make(map[attest.Selector][]*entry, len(a.entries))
	for _, e := range a.entries {
		a.index[e.selectors[0]] = append(a.index[e.selectors[0]], e)
	}
}
