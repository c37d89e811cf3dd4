package policy

import (
	"slices"

	"github.com/cedar-policy/cedar-go/types"
)

// Index. A decision only looks at the policies whose scopes can match the
// request: those anchored to the principal itself, to its trust domain or
// one of its groups, or to no principal; of those, the ones anchored to
// the request's resource or to no resource. The index is built once per
// compiled Set so that finding them costs a few map lookups and a binary
// search, and the candidates of one list sit next to each other in memory:
//
//   - principal anchors are keyed by plain strings, one map per entity type
//     (workload, trust domain, group); anchors of other types can never
//     match (a request's principal is a Workload whose only parents are its
//     trust domain and groups) and are left out;
//   - resources are interned: each anchored resource has a small integer,
//     looked up once per request, and a bucket keeps its per-resource
//     lists sorted by that integer;
//   - an entry records whether the list it sits in already proves its
//     scopes match (then the fast path evaluates only its conditions);
//   - within a list, policies whose first condition starts with
//     `attr == "literal"` over an always-present string attribute are
//     grouped by attribute and literal (a guard): a request meets only the
//     group of its own value. Skipping the others is exact, since such a
//     policy evaluates its guard first, which cannot fail, and stops there
//     when it is false. The unscoped conditional forbids every request
//     would otherwise meet (`forbid (principal, action, resource) when {
//     context.tls_version == "1.0" && ... }`) cost one map lookup.

// role is what a matching policy does to a decision.
type role uint8

const (
	roleForbid role = iota
	rolePermit
	roleDryForbid
	roleDryPermit
)

// entry is one policy in an index list, with what the fast path needs
// beside it.
type entry struct {
	mask uint64 // the actions it applies to
	id   string
	c    *compiled
	fast *fastPolicy // nil: cedar-go must evaluate it
	role role
	// scoped: the principal and resource scopes must still be checked;
	// false when the list the entry sits in proves they match.
	scoped    bool
	hasConds  bool // fast has conditions (unscoped entries without any match at once)
	readsTime bool
}

// minGuarded is the fewest policies sharing a guard attribute that are
// worth a map lookup; fewer are evaluated one by one.
const minGuarded = 4

// plist is a list of candidate policies.
type plist struct {
	plain  []entry
	guards []guard
}

// guard holds the policies of a list whose first condition starts with
// attr == literal, by literal.
type guard struct {
	attr  int
	byLit map[string][]entry
}

func (l *plist) add(e entry) {
	attr, lit, ok := guardOf(e.fast)
	if !ok {
		l.plain = append(l.plain, e)
		return
	}
	for i := range l.guards {
		if l.guards[i].attr == attr {
			l.guards[i].byLit[lit] = append(l.guards[i].byLit[lit], e)
			return
		}
	}
	l.guards = append(l.guards, guard{attr: attr, byLit: map[string][]entry{lit: {e}}})
}

// finish moves guards too small to pay for their lookup back to plain.
func (l *plist) finish() {
	kept := l.guards[:0]
	for _, g := range l.guards {
		n := 0
		for _, es := range g.byLit {
			n += len(es)
		}
		if n >= minGuarded {
			kept = append(kept, g)
			continue
		}
		for _, es := range g.byLit {
			l.plain = append(l.plain, es...)
		}
	}
	clear(l.guards[len(kept):])
	l.guards = kept
	if len(l.guards) == 0 {
		l.guards = nil
	}
}

// each calls f on every entry of l (for the cedar-go path and Explain).
func (l *plist) each(f func(*entry)) {
	for i := range l.plain {
		f(&l.plain[i])
	}
	for _, g := range l.guards {
		for _, es := range g.byLit {
			for i := range es {
				f(&es[i])
			}
		}
	}
}

// guardOf returns the guard of fp: the attribute and literal of an
// `attr == "literal"` that is the leftmost conjunct of fp's first
// condition, a `when`. Such a comparison cannot fail (stringAttr).
func guardOf(fp *fastPolicy) (attr int, lit string, ok bool) {
	if fp == nil || len(fp.conds) == 0 || !fp.conds[0].when {
		return 0, "", false
	}
	x := fp.conds[0].e
	for x.op == fAnd {
		x = x.a
	}
	if x.op != fEqStr {
		return 0, "", false
	}
	return x.id, x.lit.s, true
}

// bucket holds the policies of one principal anchor (or of none).
type bucket struct {
	any   plist   // no resource anchor
	res   []int32 // sorted resource ids, parallel to byRes
	byRes []plist
}

// forRes returns the list anchored to resource id rid, or nil.
func (b *bucket) forRes(rid int32) *plist {
	if i, ok := slices.BinarySearch(b.res, rid); ok {
		return &b.byRes[i]
	}
	return nil
}

// index finds the candidate policies of a request.
type index struct {
	resIDs                 map[types.EntityUID]int32
	workloads, tds, groups map[string]*bucket
	anyPrincipal           bucket
}

// noRes is the resource id of a resource no policy is anchored to.
const noRes int32 = -1

// resID returns the interned id of resource uid, or noRes.
func (ix *index) resID(uid types.EntityUID) int32 {
	if id, ok := ix.resIDs[uid]; ok {
		return id
	}
	return noRes
}

// principalImplied reports whether every principal that reaches sc's
// bucket (a Workload that is the anchor or has it as a parent) matches sc.
func principalImplied(sc *fscope) bool {
	switch sc.kind {
	case sAll, sIn:
		return true
	case sEq:
		return sc.ent.Type == TypeWorkload
	case sIs, sIsIn:
		return sc.typ == TypeWorkload
	}
	return false
}

// resourceImplied reports whether every resource that reaches sc's list
// (the anchor itself, or any resource for an unanchored scope) matches sc.
func resourceImplied(sc *fscope) bool {
	switch sc.kind {
	case sAll, sEq, sIn:
		return true
	case sIsIn:
		return sc.typ == sc.ent.Type
	}
	return false
}

func roleOf(c *compiled) role {
	switch {
	case c.dryRun && c.forbid:
		return roleDryForbid
	case c.dryRun:
		return roleDryPermit
	case c.forbid:
		return roleForbid
	}
	return rolePermit
}

func (s *Set) buildIndex() {
	ix := &index{
		resIDs:    map[types.EntityUID]int32{},
		workloads: map[string]*bucket{},
		tds:       map[string]*bucket{},
		groups:    map[string]*bucket{},
	}
	type pending struct {
		any   plist
		byRes map[int32]*plist
	}
	all := map[*bucket]*pending{}
	for _, c := range s.all {
		b := &ix.anyPrincipal
		if !c.pAny {
			var m map[string]*bucket
			switch c.pKey.Type {
			case TypeWorkload:
				m = ix.workloads
			case TypeTrustDomain:
				m = ix.tds
			case TypeGroup:
				m = ix.groups
			default:
				continue // never a candidate (see above)
			}
			if b = m[string(c.pKey.ID)]; b == nil {
				b = &bucket{}
				m[string(c.pKey.ID)] = b
			}
		}
		e := entry{mask: c.actionMask, id: c.id, c: c, fast: c.fast, role: roleOf(c), scoped: true, readsTime: c.readsTime}
		if c.fast != nil {
			e.scoped = !principalImplied(&c.fast.principal) || !resourceImplied(&c.fast.resource)
			e.hasConds = len(c.fast.conds) > 0
		}
		p := all[b]
		if p == nil {
			p = &pending{byRes: map[int32]*plist{}}
			all[b] = p
		}
		if c.rAny {
			p.any.add(e)
			continue
		}
		rid, ok := ix.resIDs[c.rKey]
		if !ok {
			rid = int32(len(ix.resIDs))
			ix.resIDs[c.rKey] = rid
		}
		l := p.byRes[rid]
		if l == nil {
			l = &plist{}
			p.byRes[rid] = l
		}
		l.add(e)
	}
	for b, p := range all {
		b.any = p.any
		b.any.finish()
		for rid := range p.byRes {
			b.res = append(b.res, rid)
		}
		slices.Sort(b.res)
		b.byRes = make([]plist, len(b.res))
		for i, rid := range b.res {
			b.byRes[i] = *p.byRes[rid]
			b.byRes[i].finish()
		}
	}
	s.ix = ix
}

// buckets calls f with every bucket a request can reach: its workload's,
// its trust domain's, each of its groups' (once each), the unanchored.
func (ix *index) buckets(principal, td string, groups []string, f func(*bucket)) {
	if b := ix.workloads[principal]; b != nil {
		f(b)
	}
	if b := ix.tds[td]; b != nil {
		f(b)
	}
	for i, g := range groups {
		if slices.Contains(groups[:i], g) {
			continue
		}
		if b := ix.groups[g]; b != nil {
			f(b)
		}
	}
	f(&ix.anyPrincipal)
}
