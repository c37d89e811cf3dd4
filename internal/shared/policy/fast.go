package policy

import (
	"slices"
	"time"

	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// Fast path. Handing candidates to cedar.Authorize allocates per call (the
// entities, the request record, its diagnostics), which bounds how fast a
// proxy accepts connections and re-decides them on a new version. Most
// policies are scopes plus simple conditions over the context, the
// resource and the principal's attributes; such a policy is compiled once
// more into a small expression tree that evaluates without allocating.
//
// The fast path decides a request only when it can be sure of Cedar's
// answer: every candidate policy has a fast form and none of them would
// raise an evaluation error for this request (a missing attribute, a type
// mismatch). Anything else (a policy using a construct not below, an
// error, a bad or deny-listed request, duplicate groups) falls back to
// cedar-go, so decisions are identical by construction; the property test
// (TestIndexMatchesUnindexed) compares the two on random sets.

type fop uint8

const (
	fLit fop = iota
	fVar
	fAttr
	fLabel
	fAnd
	fOr
	fNot
	fEq
	fNe
	fLt
	fLe
	fGt
	fGe
	fLike
	fIn
	// specialisations of the commonest forms: a string attribute compared
	// with a string literal, or matched by like
	fEqStr
	fNeStr
	fLikeStr
)

// fkind is the type of a fast value.
type fkind uint8

const (
	kBool fkind = iota + 1
	kLong
	kString
	kEntity
)

type fval struct {
	kind fkind
	b    bool
	n    int64
	s    string
	e    types.EntityUID
}

// Variables and attributes the fast path knows.
const (
	vPrincipal = iota
	vAction
	vResource

	aCtxSourceTD = iota
	aCtxDest
	aCtxTLS
	aCtxUnix
	aResName
	aResClass
	aResPort
	aPrinTD
	aPrinPath
)

type fexpr struct {
	op   fop
	a, b *fexpr
	lit  fval
	id   int    // variable or attribute
	name string // label name
	pat  types.Pattern
}

type fscopeKind uint8

const (
	sAll fscopeKind = iota
	sEq
	sIn
	sIs
	sIsIn
)

type fscope struct {
	kind fscopeKind
	typ  types.EntityType
	ent  types.EntityUID
}

type fcond struct {
	when bool
	e    *fexpr
}

// fastPolicy is the fast form of a policy (its action scope is the
// compiled's actionMask, which is exact).
type fastPolicy struct {
	principal, resource fscope
	conds               []fcond
}

// compileFast returns the fast form of p, or nil when p uses anything the
// fast path does not evaluate.
func compileFast(p *xast.Policy) *fastPolicy {
	fp := &fastPolicy{}
	var ok bool
	if fp.principal, ok = fastScope(p.Principal); !ok {
		return nil
	}
	if fp.resource, ok = fastScope(p.Resource); !ok {
		return nil
	}
	for _, c := range p.Conditions {
		e, ok := compileExpr(c.Body)
		if !ok {
			return nil
		}
		fp.conds = append(fp.conds, fcond{when: c.Condition == xast.ConditionWhen, e: e})
	}
	return fp
}

func fastScope(s any) (fscope, bool) {
	switch x := s.(type) {
	case xast.ScopeTypeAll:
		return fscope{kind: sAll}, true
	case xast.ScopeTypeEq:
		return fscope{kind: sEq, ent: x.Entity}, true
	case xast.ScopeTypeIn:
		return fscope{kind: sIn, ent: x.Entity}, true
	case xast.ScopeTypeIs:
		return fscope{kind: sIs, typ: x.Type}, true
	case xast.ScopeTypeIsIn:
		return fscope{kind: sIsIn, typ: x.Type, ent: x.Entity}, true
	}
	return fscope{}, false
}

var (
	ctxAttrs  = map[types.String]int{"source_trust_domain": aCtxSourceTD, "destination": aCtxDest, "tls_version": aCtxTLS, "unix_time": aCtxUnix}
	resAttrs  = map[types.String]int{"name": aResName, "classification": aResClass, "port": aResPort}
	prinAttrs = map[types.String]int{"trust_domain": aPrinTD, "path": aPrinPath}
	variables = map[types.String]int{"principal": vPrincipal, "action": vAction, "resource": vResource}
)

func compileExpr(n xast.IsNode) (*fexpr, bool) {
	bin := func(op fop, l, r xast.IsNode) (*fexpr, bool) {
		a, ok := compileExpr(l)
		if !ok {
			return nil, false
		}
		b, ok := compileExpr(r)
		if !ok {
			return nil, false
		}
		return specialise(&fexpr{op: op, a: a, b: b}), true
	}
	switch x := n.(type) {
	case xast.NodeValue:
		switch v := x.Value.(type) {
		case types.Boolean:
			return &fexpr{op: fLit, lit: fval{kind: kBool, b: bool(v)}}, true
		case types.Long:
			return &fexpr{op: fLit, lit: fval{kind: kLong, n: int64(v)}}, true
		case types.String:
			return &fexpr{op: fLit, lit: fval{kind: kString, s: string(v)}}, true
		case types.EntityUID:
			return &fexpr{op: fLit, lit: fval{kind: kEntity, e: v}}, true
		}
	case xast.NodeTypeVariable:
		if id, ok := variables[x.Name]; ok {
			return &fexpr{op: fVar, id: id}, true
		}
	case xast.NodeTypeAccess:
		switch arg := x.Arg.(type) {
		case xast.NodeTypeVariable:
			var m map[types.String]int
			switch arg.Name {
			case "context":
				m = ctxAttrs
			case "resource":
				m = resAttrs
			case "principal":
				m = prinAttrs
			}
			if id, ok := m[x.Value]; ok {
				return &fexpr{op: fAttr, id: id}, true
			}
		case xast.NodeTypeAccess:
			if v, ok := arg.Arg.(xast.NodeTypeVariable); ok && v.Name == "principal" && arg.Value == "labels" {
				return &fexpr{op: fLabel, name: string(x.Value)}, true
			}
		}
	case xast.NodeTypeAnd:
		return bin(fAnd, x.Left, x.Right)
	case xast.NodeTypeOr:
		return bin(fOr, x.Left, x.Right)
	case xast.NodeTypeNot:
		a, ok := compileExpr(x.Arg)
		if !ok {
			return nil, false
		}
		return &fexpr{op: fNot, a: a}, true
	case xast.NodeTypeEquals:
		return bin(fEq, x.Left, x.Right)
	case xast.NodeTypeNotEquals:
		return bin(fNe, x.Left, x.Right)
	case xast.NodeTypeLessThan:
		return bin(fLt, x.Left, x.Right)
	case xast.NodeTypeLessThanOrEqual:
		return bin(fLe, x.Left, x.Right)
	case xast.NodeTypeGreaterThan:
		return bin(fGt, x.Left, x.Right)
	case xast.NodeTypeGreaterThanOrEqual:
		return bin(fGe, x.Left, x.Right)
	case xast.NodeTypeLike:
		a, ok := compileExpr(x.Arg)
		if !ok {
			return nil, false
		}
		return specialise(&fexpr{op: fLike, a: a, pat: x.Value}), true
	case xast.NodeTypeIn:
		// Only `variable in Entity`: the ancestors of the request's own
		// entities are known without an entity store.
		v, okv := x.Left.(xast.NodeTypeVariable)
		r, okr := x.Right.(xast.NodeValue)
		if !okv || !okr {
			return nil, false
		}
		id, ok := variables[v.Name]
		e, oke := r.Value.(types.EntityUID)
		if !ok || !oke {
			return nil, false
		}
		return &fexpr{op: fIn, id: id, lit: fval{kind: kEntity, e: e}}, true
	}
	return nil, false
}

// freq is a request as the fast path sees it.
type freq struct {
	// r is a copy: holding the caller's request by pointer would move it
	// to the heap (escape analysis cannot follow the evaluator's recursion).
	r        Request
	s        *Set
	td, path string
	pUID     types.EntityUID
	rUID     types.EntityUID
	bit      uint64
	hasPort  bool
	unix     int64
	unixSet  bool
}

// inPrincipal reports whether the principal is e or has e as a parent (its
// trust domain, one of its groups).
func (q *freq) inPrincipal(e types.EntityUID) bool {
	switch e.Type {
	case TypeWorkload:
		return e == q.pUID
	case TypeTrustDomain:
		return string(e.ID) == q.td
	case TypeGroup:
		return slices.Contains(q.r.Groups, string(e.ID))
	}
	return false
}

func (q *freq) scope(sc *fscope, principal bool) bool {
	uid := q.rUID
	if principal {
		uid = q.pUID
	}
	in := func() bool {
		if principal {
			return q.inPrincipal(sc.ent)
		}
		return uid == sc.ent // resources have no parents
	}
	switch sc.kind {
	case sAll:
		return true
	case sEq:
		return uid == sc.ent
	case sIn:
		return in()
	case sIs:
		return uid.Type == sc.typ
	case sIsIn:
		return uid.Type == sc.typ && in()
	}
	return false
}

// eval evaluates x; ok is false where Cedar would raise an error.
func (q *freq) eval(x *fexpr) (fval, bool) {
	switch x.op {
	case fLit:
		return x.lit, true
	case fVar:
		switch x.id {
		case vPrincipal:
			return fval{kind: kEntity, e: q.pUID}, true
		case vAction:
			return fval{kind: kEntity, e: types.EntityUID{Type: TypeAction, ID: types.String(q.r.Action)}}, true
		default:
			return fval{kind: kEntity, e: q.rUID}, true
		}
	case fAttr:
		switch x.id {
		case aCtxUnix:
			if !q.unixSet {
				now := q.r.Context.Time
				if now.IsZero() {
					now = time.Now()
				}
				q.unix, q.unixSet = now.Unix(), true
			}
			return fval{kind: kLong, n: q.unix}, true
		case aResPort:
			return fval{kind: kLong, n: int64(q.r.Resource.Port)}, q.hasPort
		}
		if stringAttr(x.id) {
			return fval{kind: kString, s: q.str(x.id)}, true
		}
	case fLabel:
		v, ok := q.r.Labels[x.name]
		return fval{kind: kString, s: v}, ok
	case fAnd, fOr, fNot, fEqStr, fNeStr, fLikeStr:
		b, ok := q.test(x)
		return fval{kind: kBool, b: b}, ok
	case fEq, fNe:
		a, ok := q.eval(x.a)
		if !ok {
			return fval{}, false
		}
		b, ok := q.eval(x.b)
		if !ok {
			return fval{}, false
		}
		return fval{kind: kBool, b: a.equal(&b) == (x.op == fEq)}, true
	case fLt, fLe, fGt, fGe:
		a, ok := q.eval(x.a)
		if !ok || a.kind != kLong {
			return fval{}, false
		}
		b, ok := q.eval(x.b)
		if !ok || b.kind != kLong {
			return fval{}, false
		}
		var r bool
		switch x.op {
		case fLt:
			r = a.n < b.n
		case fLe:
			r = a.n <= b.n
		case fGt:
			r = a.n > b.n
		default:
			r = a.n >= b.n
		}
		return fval{kind: kBool, b: r}, true
	case fLike:
		a, ok := q.eval(x.a)
		if !ok || a.kind != kString {
			return fval{}, false
		}
		return fval{kind: kBool, b: x.pat.Match(types.String(a.s))}, true
	case fIn:
		e := x.lit.e
		switch x.id {
		case vPrincipal:
			return fval{kind: kBool, b: q.pUID == e || q.inPrincipal(e)}, true
		case vAction:
			m := uint64(0)
			if e.Type == TypeAction {
				m = q.s.model.actionDesc[e.ID]
			}
			return fval{kind: kBool, b: m&q.bit != 0}, true
		default:
			return fval{kind: kBool, b: q.rUID == e}, true
		}
	}
	return fval{}, false
}

// matches reports whether fp matches q; ok is false where Cedar would
// raise an error.
func (q *freq) matches(fp *fastPolicy) (match, ok bool) {
	if !q.scope(&fp.principal, true) || !q.scope(&fp.resource, false) {
		return false, true
	}
	return q.conds(fp)
}

// conds evaluates the conditions of fp alone (its scopes are known to
// match); ok is false where Cedar would raise an error.
func (q *freq) conds(fp *fastPolicy) (match, ok bool) {
	for i := range fp.conds {
		v, ok := q.test(fp.conds[i].e)
		if !ok {
			return false, false
		}
		if v != fp.conds[i].when {
			return false, true
		}
	}
	return true, true
}

// fastIDs collects matching policy ids without allocating for the first few.
type fastIDs struct {
	buf [8]string
	n   int
	ext []string
}

func (f *fastIDs) add(id string) {
	if f.n < len(f.buf) {
		f.buf[f.n] = id
		f.n++
		return
	}
	f.ext = append(f.ext, id)
}

// sorted returns the ids, sorted, in a new slice (nil when none).
func (f *fastIDs) sorted() []string {
	if f.n == 0 {
		return nil
	}
	out := make([]string, 0, f.n+len(f.ext))
	out = append(out, f.buf[:f.n]...)
	out = append(out, f.ext...)
	slices.Sort(out)
	return out
}

type fastMatches struct {
	forbids, permits, dryForbids, dryPermits fastIDs
	readsTime                                bool
}

// fastEvaluate is evaluate's fast path; ok is false when the request must
// go to cedar-go (see the top of this file).
func (s *Set) fastEvaluate(req *Request) (d Decision, cacheable, ok bool) {
	return s.fastEvaluateChecked(req, false)
}

// fastEvaluateChecked is fastEvaluate; checked says Decide has already
// filled in the principal, checked the deny-list and the serial's syntax.
func (s *Set) fastEvaluateChecked(req *Request, checked bool) (d Decision, cacheable, ok bool) {
	if !checked {
		s.fillPrincipal(req)
		if _, denied := s.denied(req); denied {
			return d, false, false
		}
		if req.CertSerial != "" && !validSerial(req.CertSerial) {
			return d, false, false
		}
	}
	td, path, err := parseSPIFFEID(req.Principal)
	if err != nil {
		return d, false, false
	}
	m := s.model
	bit, known := m.actionBit[types.String(req.Action)]
	if !known {
		return d, false, false
	}
	rt := types.EntityType(req.Resource.Type)
	attrs, known := m.resources[rt]
	if !known || req.Resource.Name == "" {
		return d, false, false
	}
	q := freq{
		r: *req, s: s, td: td, path: path, bit: bit, hasPort: attrs["port"],
		pUID: types.EntityUID{Type: TypeWorkload, ID: types.String(req.Principal)},
		rUID: types.EntityUID{Type: rt, ID: types.String(req.Resource.Name)},
	}
	ix := s.ix
	rid := ix.resID(q.rUID)
	var fm fastMatches
	if b := ix.workloads[req.Principal]; b != nil && !fastBucket(b, rid, &q, &fm) {
		return d, false, false
	}
	if b := ix.tds[td]; b != nil && !fastBucket(b, rid, &q, &fm) {
		return d, false, false
	}
	for i, g := range req.Groups {
		if slices.Contains(req.Groups[:i], g) {
			continue // a parent named twice is one parent
		}
		if b := ix.groups[g]; b != nil && !fastBucket(b, rid, &q, &fm) {
			return d, false, false
		}
	}
	if !fastBucket(&ix.anyPrincipal, rid, &q, &fm) {
		return d, false, false
	}

	d.Version = s.version
	switch {
	case fm.forbids.n > 0:
		d.Cause, d.Reasons = CauseForbid, fm.forbids.sorted()
	case fm.permits.n > 0:
		d.Allowed, d.Cause, d.Reasons = true, CausePermit, fm.permits.sorted()
	default:
		d.Cause = CauseDefaultDeny
	}
	switch {
	case d.Allowed:
		d.DryRunDenials = fm.dryForbids.sorted()
	case d.Cause == CauseDefaultDeny && fm.dryForbids.n == 0:
		d.DryRunPermits = fm.dryPermits.sorted()
	}
	return d, !fm.readsTime, true
}

// fastBucket evaluates the candidates of b for resource rid into fm;
// false means the request must go to cedar-go.
func fastBucket(b *bucket, rid int32, q *freq, fm *fastMatches) bool {
	if !fastList(&b.any, q, fm) {
		return false
	}
	if l := b.forRes(rid); l != nil {
		return fastList(l, q, fm)
	}
	return true
}

// fastList evaluates the candidates of l: every plain entry, and of each
// guard only the entries under the request's own value.
func fastList(l *plist, q *freq, fm *fastMatches) bool {
	if !fastEntries(l.plain, q, fm) {
		return false
	}
	for i := range l.guards {
		g := &l.guards[i]
		if es := g.byLit[q.str(g.attr)]; es != nil && !fastEntries(es, q, fm) {
			return false
		}
	}
	return true
}

func fastEntries(es []entry, q *freq, fm *fastMatches) bool {
	for i := range es {
		e := &es[i]
		if e.mask&q.bit == 0 {
			continue
		}
		if e.fast == nil {
			return false
		}
		fm.readsTime = fm.readsTime || e.readsTime
		match, ok := true, true
		if e.scoped {
			match, ok = q.matches(e.fast)
		} else if e.hasConds {
			match, ok = q.conds(e.fast)
		}
		if !ok {
			return false
		}
		if !match {
			continue
		}
		switch e.role {
		case roleForbid:
			fm.forbids.add(e.id)
		case rolePermit:
			fm.permits.add(e.id)
		case roleDryForbid:
			fm.dryForbids.add(e.id)
		default:
			fm.dryPermits.add(e.id)
		}
	}
	return true
}

// stringAttr reports whether attribute id is a string that is always
// present (its access cannot fail).
func stringAttr(id int) bool {
	switch id {
	case aCtxSourceTD, aCtxDest, aCtxTLS, aResName, aResClass, aPrinTD, aPrinPath:
		return true
	}
	return false
}

// specialise rewrites `attr == "lit"`, `"lit" == attr`, their != forms and
// `attr like p` over always-present string attributes into single nodes.
func specialise(x *fexpr) *fexpr {
	isAttr := func(e *fexpr) bool { return e.op == fAttr && stringAttr(e.id) }
	isLit := func(e *fexpr) bool { return e.op == fLit && e.lit.kind == kString }
	switch x.op {
	case fEq, fNe:
		a, b := x.a, x.b
		if isLit(a) && isAttr(b) {
			a, b = b, a
		}
		if isAttr(a) && isLit(b) {
			op := fEqStr
			if x.op == fNe {
				op = fNeStr
			}
			return &fexpr{op: op, id: a.id, lit: b.lit}
		}
	case fLike:
		if isAttr(x.a) {
			return &fexpr{op: fLikeStr, id: x.a.id, pat: x.pat}
		}
	}
	return x
}

// str returns string attribute id (see stringAttr).
func (q *freq) str(id int) string {
	r := &q.r
	switch id {
	case aCtxSourceTD:
		if r.Context.SourceTrustDomain == "" {
			return q.td
		}
		return r.Context.SourceTrustDomain
	case aCtxDest:
		return r.Context.Destination
	case aCtxTLS:
		return r.Context.TLSVersion
	case aResName:
		return r.Resource.Name
	case aResClass:
		return r.Resource.Classification
	case aPrinTD:
		return q.td
	default:
		return q.path
	}
}

// test evaluates a boolean expression; ok is false where Cedar would raise
// an error (including a non-boolean result).
func (q *freq) test(x *fexpr) (b, ok bool) {
	switch x.op {
	case fEqStr:
		return q.str(x.id) == x.lit.s, true
	case fNeStr:
		return q.str(x.id) != x.lit.s, true
	case fLikeStr:
		return x.pat.Match(types.String(q.str(x.id))), true
	case fAnd, fOr:
		a, ok := q.test(x.a)
		if !ok {
			return false, false
		}
		if a == (x.op == fOr) { // short circuit
			return a, true
		}
		return q.test(x.b)
	case fNot:
		a, ok := q.test(x.a)
		return !a, ok
	}
	v, ok := q.eval(x)
	if !ok || v.kind != kBool {
		return false, false
	}
	return v.b, true
}

// equal is Cedar's == on fast values: values of different types differ.
func (a *fval) equal(b *fval) bool {
	if a.kind != b.kind {
		return false
	}
	switch a.kind {
	case kBool:
		return a.b == b.b
	case kLong:
		return a.n == b.n
	case kString:
		return a.s == b.s
	}
	return a.e == b.e
}
