package policy

import (
	"fmt"
	"hash/maphash"
	"iter"
	"slices"
	"sort"
	"strings"
	"time"

	cedar "github.com/cedar-policy/cedar-go"
	"github.com/cedar-policy/cedar-go/types"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// Reasons used when no policy decided. They contain spaces, which policy
// ids cannot, so they never collide with a policy id.
const (
	ReasonNoPolicy       = "no valid policy"
	ReasonDenyListID     = "deny-list: SPIFFE ID"
	ReasonDenyListSerial = "deny-list: certificate serial"
	ReasonBadRequest     = "invalid request"
	// ReasonTaintedKeyPrefix starts the reason of a CauseTaintedKey
	// decision; the tainted key's ID follows.
	ReasonTaintedKeyPrefix = "deny-list: tainted CA key "
)

// Cause says what kind of rule determined a Decision.
type Cause int

const (
	CauseDefaultDeny Cause = iota // no permit matched
	CausePermit                   // a permit matched and no forbid did
	CauseForbid                   // a forbid matched
	CauseDenyList                 // the principal or its certificate is deny-listed
	CauseNoPolicy                 // no valid policy set is loaded (fail closed)
	CauseBadRequest               // the request itself is invalid
	CauseTaintedKey               // the peer's certificate chain holds a tainted CA key (deny-list tainted_keys)
)

var causeNames = [...]string{"default-deny", "permit", "forbid", "deny-list", "no-policy", "bad-request", "tainted-ca-key"}

func (c Cause) String() string {
	if c >= 0 && int(c) < len(causeNames) {
		return causeNames[c]
	}
	return fmt.Sprintf("cause(%d)", int(c))
}

// MarshalText makes Cause log as its name.
func (c Cause) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Resource is the object of a request: a Service (for connect) or a Key
// (for kms:*).
type Resource struct {
	Type           string // TypeService or TypeKey
	Name           string
	Port           int // services only
	Classification string
}

// Context is what the enforcement point knows about the request.
type Context struct {
	SourceTrustDomain string    // defaults to the principal's trust domain
	Destination       string    // e.g. host:port the caller asked for
	TLSVersion        string    // e.g. "1.3"
	Time              time.Time // zero means now; policies see it to the second
}

// Request is one authorization question.
type Request struct {
	Principal  string            // SPIFFE ID of the caller
	Labels     map[string]string // labels of its registration entry
	Groups     []string          // groups of its registration entry (Group::"g")
	CertSerial string            // hex serial of its certificate, for the deny-list (optional)
	// ChainKeyIDs are the CA key IDs (see DenyList.TaintedKeys) of every
	// certificate in the caller's verified chain, for the deny-list's
	// tainted keys (optional; enforcement points that verify X.509 chains
	// fill it in).
	ChainKeyIDs []string
	Action      string // e.g. ActionConnect, ActionKMSDecrypt
	Resource    Resource
	Context     Context
}

// EvalError is a policy that failed to evaluate for a request; Cedar skips
// such a policy.
type EvalError struct {
	Policy  string `json:"policy"`
	Message string `json:"message"`
}

// Decision is the answer to a Request.
type Decision struct {
	Allowed bool  `json:"allowed"`
	Cause   Cause `json:"cause"`
	// Reasons are the ids of the policies that determined the decision (the
	// matching forbids when denied by policy, the matching permits when
	// allowed), or one of the Reason* constants. Empty for default deny.
	Reasons []string `json:"reasons,omitempty"`
	// DryRunDenials are dry-run forbids that would have turned this allow
	// into a deny. They never block.
	DryRunDenials []string `json:"dry_run_denials,omitempty"`
	// DryRunPermits are dry-run permits that would have turned this deny
	// into an allow. They never grant.
	DryRunPermits []string    `json:"dry_run_permits,omitempty"`
	Errors        []EvalError `json:"errors,omitempty"`
	// Version is the policy set version that decided.
	Version uint64 `json:"version"`
}

// compiled is one policy of a Set.
type compiled struct {
	id         string
	policy     *cedar.Policy
	forbid     bool
	dryRun     bool
	file       string
	line       int
	column     int
	text       string
	actionMask uint64
	pKey, rKey types.EntityUID
	pAny, rAny bool
	// needsAttrs: the policy may read the principal's attributes;
	// needsContext: it reads the context; readsTime: it may read the
	// request time. Conservative (true when unsure).
	needsAttrs, needsContext, readsTime bool
	// fast is the form the fast path evaluates (fast.go); nil when it cannot.
	fast *fastPolicy
}

// Set is an immutable, compiled and indexed policy set version with its
// deny-list. It is safe for concurrent use.
type Set struct {
	model   *model
	version uint64
	all     []*compiled // in file order
	byID    map[string]*compiled
	deny    *denySet
	// remote are the remote deny-lists by trust domain (remote.go).
	remote map[string]*denySet
	// services is the catalog of exported services (services.go).
	services map[string][]catalog.Service
	// principals fill in Labels and Groups of requests that carry none.
	principals map[string]Principal

	// ix finds a request's candidate policies (index.go).
	ix *index

	// cache holds recent decisions of this Set (cache.go); every Set,
	// copies made by WithDenyList and WithVersion included, has its own.
	cache *decisionCache

	// warnings are compile-time warnings (federation.go).
	warnings []Problem
}

// Version is the version the Set was labelled with (0 if none).
func (s *Set) Version() uint64 { return s.version }

// Len is the number of policies.
func (s *Set) Len() int { return len(s.all) }

// TaintedKey returns the first of keyIDs (CA key IDs of a verified chain)
// that the deny-list names as tainted, or "".
func (s *Set) TaintedKey(keyIDs []string) string {
	if s.deny == nil || len(s.deny.keys) == 0 {
		return ""
	}
	for _, k := range keyIDs {
		if _, ok := s.deny.keys[strings.ToLower(k)]; ok {
			return strings.ToLower(k)
		}
	}
	return ""
}

// DenyList returns the deny-list in canonical form.
func (s *Set) DenyList() DenyList {
	if s.deny == nil {
		return DenyList{}
	}
	return s.deny.canonical()
}

// PolicyInfo describes one policy for listing and display.
type PolicyInfo struct {
	ID     string `json:"id"`
	Effect string `json:"effect"` // "permit" or "forbid"
	DryRun bool   `json:"dry_run"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
	Text   string `json:"text"` // canonical Cedar text
}

func (c *compiled) info() PolicyInfo {
	return PolicyInfo{ID: c.id, Effect: c.effect(), DryRun: c.dryRun, File: c.file, Line: c.line, Column: c.column, Text: c.text}
}

func (c *compiled) effect() string {
	if c.forbid {
		return "forbid"
	}
	return "permit"
}

// Policies lists the policies in file order.
func (s *Set) Policies() []PolicyInfo {
	out := make([]PolicyInfo, len(s.all))
	for i, c := range s.all {
		out[i] = c.info()
	}
	return out
}

// policyList hands a candidate slice to cedar.Authorize.
type policyList []*compiled

func (l policyList) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for _, c := range l {
			if !yield(cedar.PolicyID(c.id), c.policy) {
				return
			}
		}
	}
}

// env is a request translated into Cedar terms.
type env struct {
	req       cedar.Request
	principal types.Entity
	resource  types.Entity
	actions   map[types.EntityUID]types.Entity
	actionBit uint64
	td, path  string
	r         *Request
	m         *model
}

func (e *env) Get(uid types.EntityUID) (types.Entity, bool) {
	switch uid {
	case e.principal.UID:
		return e.principal, true
	case e.resource.UID:
		return e.resource, true
	}
	a, ok := e.actions[uid]
	return a, ok
}

var emptyRecord = types.NewRecord(nil)

// maxCachedResources bounds the resource entity cache of a model.
const maxCachedResources = 4096

// resourceEntity returns the Cedar entity for r. Enforcement points see few
// distinct resources (a proxy guards one service), and building a record is
// a large share of a decision's cost, so entities are cached (immutable,
// bounded; past the bound they are built per request).
func (m *model) resourceEntity(r Resource) types.Entity {
	if v, ok := m.resCache.Load(r); ok {
		return v.(types.Entity)
	}
	rt := types.EntityType(r.Type)
	rattrs := types.RecordMap{
		"name":           types.String(r.Name),
		"classification": types.String(r.Classification),
	}
	if m.resources[rt]["port"] {
		rattrs["port"] = types.Long(r.Port)
	}
	ent := types.Entity{UID: types.NewEntityUID(rt, types.String(r.Name)), Attributes: types.NewRecord(rattrs)}
	if m.resCached.Add(1) <= maxCachedResources {
		m.resCache.Store(r, ent)
	}
	return ent
}

func (m *model) env(r *Request) (*env, error) {
	td, path, err := parseSPIFFEID(r.Principal)
	if err != nil {
		return nil, fmt.Errorf("principal: %w", err)
	}
	bit, ok := m.actionBit[types.String(r.Action)]
	if !ok {
		return nil, fmt.Errorf("unknown action %q (known actions: %s)", r.Action, m.actionNames())
	}
	rt := types.EntityType(r.Resource.Type)
	if _, ok := m.resources[rt]; !ok {
		return nil, fmt.Errorf("unknown resource type %q (resource types: %s)", r.Resource.Type, keys(m.resources))
	}
	if r.Resource.Name == "" {
		return nil, fmt.Errorf("resource %s has no name", r.Resource.Type)
	}

	parents := make([]types.EntityUID, 0, 1+len(r.Groups))
	parents = append(parents, types.NewEntityUID(TypeTrustDomain, types.String(td)))
	for _, g := range r.Groups {
		parents = append(parents, types.NewEntityUID(TypeGroup, types.String(g)))
	}
	pUID := types.NewEntityUID(TypeWorkload, types.String(r.Principal))
	e := &env{
		principal: types.Entity{UID: pUID, Parents: types.NewEntityUIDSet(parents...)},
		actions:   m.actionEnts,
		actionBit: bit,
		td:        td,
		path:      path,
		r:         r,
		m:         m,
	}
	e.resource = m.resourceEntity(r.Resource)
	e.req = cedar.Request{
		Principal: pUID,
		Action:    types.NewEntityUID(TypeAction, types.String(r.Action)),
		Resource:  e.resource.UID,
	}
	return e, nil
}

// fill builds the principal's attributes and the context record, which are
// a large share of a decision's cost, only when some candidate reads them.
func (e *env) fill(cs *candidates) {
	var attrs, ctx bool
	for _, l := range []policyList{cs.enforced, cs.dryForbid, cs.dryPermit} {
		for _, c := range l {
			attrs = attrs || c.needsAttrs
			ctx = ctx || c.needsContext
		}
	}
	r := e.r
	if attrs {
		labels := emptyRecord
		if len(r.Labels) > 0 {
			lm := make(types.RecordMap, len(r.Labels))
			for k, v := range r.Labels {
				lm[types.String(k)] = types.String(v)
			}
			labels = types.NewRecord(lm)
		}
		e.principal.Attributes = types.NewRecord(types.RecordMap{
			"trust_domain": types.String(e.td),
			"path":         types.String(e.path),
			"labels":       labels,
		})
	}
	if ctx {
		e.req.Context = e.m.contextRecord(r, e.td)
	}
}

// ctxKey identifies a context record; time is kept to the second.
type ctxKey struct {
	std, dest, tls string
	unix           int64
}

type ctxEntry struct {
	key ctxKey
	rec types.Record
}

// contextRecord returns the context record of r. Recent records are reused
// (a small direct-mapped cache): an enforcement point sees the same source,
// destination and TLS version many times a second, and records are
// immutable.
func (m *model) contextRecord(r *Request, td string) types.Record {
	now := r.Context.Time
	if now.IsZero() {
		now = time.Now()
	}
	k := ctxKey{std: r.Context.SourceTrustDomain, dest: r.Context.Destination, tls: r.Context.TLSVersion, unix: now.Unix()}
	if k.std == "" {
		k.std = td
	}
	slot := &m.ctxCache[maphash.Comparable(m.ctxSeed, k)%uint64(len(m.ctxCache))]
	if last := slot.Load(); last != nil && last.key == k {
		return last.rec
	}
	rec := types.NewRecord(types.RecordMap{
		"source_trust_domain": types.String(k.std),
		"destination":         types.String(k.dest),
		"tls_version":         types.String(k.tls),
		"time":                types.NewDatetime(time.Unix(k.unix, 0)),
		"unix_time":           types.Long(k.unix),
	})
	slot.Store(&ctxEntry{key: k, rec: rec})
	return rec
}

// candidates are the policies a request may match, split by role.
type candidates struct {
	enforced, dryForbid, dryPermit policyList
}

func (cs *candidates) add(l *plist, bit uint64) {
	l.each(func(e *entry) {
		if e.mask&bit == 0 {
			return
		}
		switch e.role {
		case roleForbid, rolePermit:
			cs.enforced = append(cs.enforced, e.c)
		case roleDryForbid:
			cs.dryForbid = append(cs.dryForbid, e.c)
		default:
			cs.dryPermit = append(cs.dryPermit, e.c)
		}
	})
}

// lookup returns every policy whose scopes can match e: principal anchored
// to the principal or one of its parents (or unanchored), resource anchored
// to the resource (or unanchored), action scope covering the action. The
// resource has no parents in ward's model, so `resource in E` is anchored
// to E like `resource == E`. A group named twice is looked at once.
func (s *Set) lookup(e *env) candidates {
	cs := candidates{enforced: make(policyList, 0, 32)}
	rid := s.ix.resID(e.resource.UID)
	s.ix.buckets(e.r.Principal, e.td, e.r.Groups, func(b *bucket) {
		cs.add(&b.any, e.actionBit)
		if l := b.forRes(rid); l != nil {
			cs.add(l, e.actionBit)
		}
	})
	return cs
}

// lookupAll is the unindexed reference: every policy is a candidate.
func (s *Set) lookupAll() candidates {
	var cs candidates
	for _, c := range s.all {
		switch {
		case !c.dryRun:
			cs.enforced = append(cs.enforced, c)
		case c.forbid:
			cs.dryForbid = append(cs.dryForbid, c)
		default:
			cs.dryPermit = append(cs.dryPermit, c)
		}
	}
	return cs
}

// Decide answers req. It never fails: problems with the request deny with
// CauseBadRequest. Recent decisions that cannot depend on the time are
// answered from the Set's cache (cache.go) after the deny-list check.
func (s *Set) Decide(req Request) Decision {
	s.fillPrincipal(&req)
	if d, denied := s.denied(&req); denied {
		return d
	}
	if s.cache == nil || req.CertSerial != "" && !validSerial(req.CertSerial) || !cacheSized(&req) {
		return s.decideCopy(req)
	}
	return s.cachedDecide(&req)
}

// maxCachedKey bounds the caller-supplied strings of a request the cache
// keeps (an entry holds them until it is replaced): a request naming
// longer ones is decided without the cache, so a caller sending made-up
// names cannot park megabytes in every slot.
const maxCachedKey = 4096

func cacheSized(req *Request) bool {
	return len(req.Principal)+len(req.Action)+len(req.Resource.Name)+len(req.Resource.Classification)+
		len(req.Context.Destination)+len(req.Context.SourceTrustDomain)+len(req.Context.TLSVersion) <= maxCachedKey
}

// decideCopy decides a copy of req without the cache, so that Decide's own
// request stays on the stack.
//
//go:noinline
func (s *Set) decideCopy(req Request) Decision { return s.decide(&req, false) }

// fillPrincipal fills in the labels and groups of a request that carries
// none from the Set's principals.
func (s *Set) fillPrincipal(req *Request) {
	if req.Labels == nil && req.Groups == nil {
		if p, ok := s.principals[req.Principal]; ok {
			req.Labels, req.Groups = p.Labels, p.Groups
		}
	}
}

func (s *Set) preCheck(req *Request) (Decision, *env, bool) {
	s.fillPrincipal(req)
	if d, denied := s.denied(req); denied {
		return d, nil, true
	}
	d := Decision{Version: s.version}
	e, err := s.model.env(req)
	if err != nil {
		d.Cause, d.Reasons = CauseBadRequest, []string{ReasonBadRequest}
		d.Errors = []EvalError{{Message: err.Error()}}
		return d, nil, true
	}
	if req.CertSerial != "" {
		if _, err := NormalizeSerial(req.CertSerial); err != nil {
			d.Cause, d.Reasons = CauseBadRequest, []string{ReasonBadRequest}
			d.Errors = []EvalError{{Message: err.Error()}}
			return d, nil, true
		}
	}
	return d, e, false
}

// denied checks req against the deny-list.
func (s *Set) denied(req *Request) (Decision, bool) {
	d := Decision{Version: s.version}
	if rd, ok := s.remoteDenied(req); ok {
		return rd, true
	}
	if s.deny != nil {
		if _, ok := s.deny.ids[req.Principal]; ok {
			d.Cause, d.Reasons = CauseDenyList, []string{ReasonDenyListID}
			return d, true
		}
		if req.CertSerial != "" {
			if n, err := NormalizeSerial(req.CertSerial); err == nil {
				if _, ok := s.deny.serials[n]; ok {
					d.Cause, d.Reasons = CauseDenyList, []string{ReasonDenyListSerial}
					return d, true
				}
			}
		}
		if len(s.deny.keys) > 0 {
			for _, k := range req.ChainKeyIDs {
				if _, ok := s.deny.keys[strings.ToLower(k)]; ok {
					d.Cause, d.Reasons = CauseTaintedKey, []string{ReasonTaintedKeyPrefix + strings.ToLower(k)}
					return d, true
				}
			}
		}
	}
	return d, false
}

func validSerial(serial string) bool {
	_, err := NormalizeSerial(serial)
	return err == nil
}

// decide evaluates req without the cache (unindexed: hand cedar-go every
// policy, the reference the index is tested against).
func (s *Set) decide(req *Request, unindexed bool) Decision {
	d, _ := s.evaluate(req, unindexed)
	return d
}

// evaluate decides req and reports whether the decision may be cached: it
// passed the deny-list, the request is valid, and no candidate policy may
// read the time.
func (s *Set) evaluate(req *Request, unindexed bool) (Decision, bool) {
	if !unindexed {
		if d, cacheable, ok := s.fastEvaluate(req); ok {
			return d, cacheable
		}
	}
	return s.cedarEvaluate(*req, unindexed)
}

// evaluateChecked is evaluate (indexed) of a request Decide has checked
// (principal filled in, deny-list passed, serial well-formed).
func (s *Set) evaluateChecked(req *Request) (Decision, bool) {
	if d, cacheable, ok := s.fastEvaluateChecked(req, true); ok {
		return d, cacheable
	}
	return s.cedarEvaluate(*req, false)
}

// cedarEvaluate is evaluate through cedar-go. It takes req by value: the
// Cedar entities keep it, which moves it to the heap, and evaluate's own
// request must stay where its caller put it.
func (s *Set) cedarEvaluate(req Request, unindexed bool) (Decision, bool) {
	d, e, done := s.preCheck(&req)
	if done {
		return d, false
	}
	var cs candidates
	if unindexed {
		cs = s.lookupAll()
	} else {
		cs = s.lookup(e)
	}
	e.fill(&cs)

	ok, diag := cedar.Authorize(cs.enforced, e, e.req)
	d.Allowed = bool(ok)
	d.Reasons = reasonIDs(diag.Reasons)
	d.Errors = appendErrors(d.Errors, diag.Errors)
	if d.Allowed {
		// Fail closed: an enforced forbid that could not be evaluated (for
		// example it reads a label this principal lacks) might have denied,
		// so it denies. Cedar itself would skip it.
		if ids := s.erroredForbids(diag.Errors); len(ids) > 0 {
			d.Allowed, d.Reasons = false, ids
		}
	}
	switch {
	case d.Allowed:
		d.Cause = CausePermit
	case len(d.Reasons) > 0:
		d.Cause = CauseForbid
	default:
		d.Cause = CauseDefaultDeny
	}

	// Shadow decision: only a dry-run forbid can flip an allow, only a
	// dry-run permit (and no dry-run forbid) can flip a default deny. Both
	// kinds are always evaluated so a canary surfaces its errors.
	var dryForbids, dryPermits []string
	if len(cs.dryForbid) > 0 {
		dec, dd := cedar.Authorize(cs.dryForbid, e, e.req)
		d.Errors = appendErrors(d.Errors, dd.Errors)
		if dec == cedar.Deny {
			dryForbids = reasonIDs(dd.Reasons)
		}
	}
	if len(cs.dryPermit) > 0 {
		dec, dd := cedar.Authorize(cs.dryPermit, e, e.req)
		d.Errors = appendErrors(d.Errors, dd.Errors)
		if dec == cedar.Allow {
			dryPermits = reasonIDs(dd.Reasons)
		}
	}
	switch {
	case d.Allowed:
		d.DryRunDenials = dryForbids
	case d.Cause == CauseDefaultDeny && len(dryForbids) == 0:
		d.DryRunPermits = dryPermits
	}
	sort.Slice(d.Errors, func(i, j int) bool { return d.Errors[i].Policy < d.Errors[j].Policy })
	return d, !cs.readTime()
}

// readTime reports whether a candidate may read the request time.
func (cs *candidates) readTime() bool {
	for _, l := range []policyList{cs.enforced, cs.dryForbid, cs.dryPermit} {
		for _, c := range l {
			if c.readsTime {
				return true
			}
		}
	}
	return false
}

// erroredForbids returns the ids of enforced forbid policies among errs.
func (s *Set) erroredForbids(errs []types.DiagnosticError) []string {
	var out []string
	for _, e := range errs {
		if c := s.byID[string(e.PolicyID)]; c != nil && c.forbid && !c.dryRun {
			out = append(out, c.id)
		}
	}
	sort.Strings(out)
	return out
}

func reasonIDs(rs []types.DiagnosticReason) []string {
	if len(rs) == 0 {
		return nil
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r.PolicyID)
	}
	sort.Strings(out)
	return out
}

func appendErrors(dst []EvalError, es []types.DiagnosticError) []EvalError {
	for _, e := range es {
		dst = append(dst, EvalError{Policy: string(e.PolicyID), Message: e.Message})
	}
	return dst
}

// Outcome of one candidate policy in an Explanation.
const (
	OutcomeNoMatch      = "no match"
	OutcomePermit       = "permit"
	OutcomeForbid       = "forbid"
	OutcomeDryRunPermit = "dry-run permit"
	OutcomeDryRunForbid = "dry-run forbid"
	OutcomeError        = "error"
)

// ExplainedPolicy is one candidate policy and what it did for the request.
type ExplainedPolicy struct {
	PolicyInfo
	Outcome string `json:"outcome"`         // one of the Outcome* constants
	Error   string `json:"error,omitempty"` // when Outcome is OutcomeError
}

// Explanation is what `ward policy test` shows.
type Explanation struct {
	Decision   Decision          `json:"decision"`
	Total      int               `json:"total_policies"`
	Candidates []ExplainedPolicy `json:"candidates"` // policies whose scope can match, in file order
}

// Explain decides req and evaluates each candidate policy on its own to say
// whether it matched.
func (s *Set) Explain(req Request) Explanation {
	x := Explanation{Decision: s.Decide(req), Total: len(s.all)}
	_, e, done := s.preCheck(&req)
	if done {
		return x
	}
	cs := s.lookup(e)
	e.fill(&cs)
	all := slices.Concat(cs.enforced, cs.dryForbid, cs.dryPermit)
	order := map[*compiled]int{}
	for i, c := range s.all {
		order[c] = i
	}
	sort.Slice(all, func(i, j int) bool { return order[all[i]] < order[all[j]] })
	for _, c := range all {
		ep := ExplainedPolicy{PolicyInfo: c.info(), Outcome: OutcomeNoMatch}
		_, diag := cedar.Authorize(policyList{c}, e, e.req)
		switch {
		case len(diag.Errors) > 0:
			ep.Outcome, ep.Error = OutcomeError, diag.Errors[0].Message
		case len(diag.Reasons) > 0:
			switch {
			case c.dryRun && c.forbid:
				ep.Outcome = OutcomeDryRunForbid
			case c.dryRun:
				ep.Outcome = OutcomeDryRunPermit
			case c.forbid:
				ep.Outcome = OutcomeForbid
			default:
				ep.Outcome = OutcomePermit
			}
		}
		x.Candidates = append(x.Candidates, ep)
	}
	return x
}

// Diff lists what changed from one Set to another.
type Diff struct {
	Added   []string `json:"added,omitempty"`   // policy ids only in the new set
	Removed []string `json:"removed,omitempty"` // policy ids only in the old set
	Changed []string `json:"changed,omitempty"` // same id, different canonical text (effect, scope, conditions or annotations)
	// Deny-list entries added and removed.
	DenyAdded   DenyList `json:"deny_added"`
	DenyRemoved DenyList `json:"deny_removed"`
}

// Empty reports whether nothing changed.
func (d Diff) Empty() bool {
	return len(d.Added)+len(d.Removed)+len(d.Changed)+
		len(d.DenyAdded.SPIFFEIDs)+len(d.DenyAdded.Serials)+
		len(d.DenyRemoved.SPIFFEIDs)+len(d.DenyRemoved.Serials)+
		len(d.DenyAdded.TaintedKeys)+len(d.DenyRemoved.TaintedKeys) == 0
}

// String renders the diff one change per line (+ added, - removed, ~ changed).
func (d Diff) String() string {
	var b strings.Builder
	for _, id := range d.Added {
		fmt.Fprintf(&b, "+ policy %s\n", id)
	}
	for _, id := range d.Removed {
		fmt.Fprintf(&b, "- policy %s\n", id)
	}
	for _, id := range d.Changed {
		fmt.Fprintf(&b, "~ policy %s\n", id)
	}
	for _, id := range d.DenyAdded.SPIFFEIDs {
		fmt.Fprintf(&b, "+ deny spiffe id %s\n", id)
	}
	for _, id := range d.DenyRemoved.SPIFFEIDs {
		fmt.Fprintf(&b, "- deny spiffe id %s\n", id)
	}
	for _, sn := range d.DenyAdded.Serials {
		fmt.Fprintf(&b, "+ deny serial %s\n", sn)
	}
	for _, sn := range d.DenyRemoved.Serials {
		fmt.Fprintf(&b, "- deny serial %s\n", sn)
	}
	for _, k := range d.DenyAdded.TaintedKeys {
		fmt.Fprintf(&b, "+ deny tainted CA key %s\n", k)
	}
	for _, k := range d.DenyRemoved.TaintedKeys {
		fmt.Fprintf(&b, "- deny tainted CA key %s\n", k)
	}
	return b.String()
}

// DiffSets compares old and new; a nil Set counts as empty.
func DiffSets(old, new *Set) Diff {
	var d Diff
	o, n := map[string]*compiled{}, map[string]*compiled{}
	if old != nil {
		o = old.byID
	}
	if new != nil {
		n = new.byID
	}
	for id, c := range n {
		if oc, ok := o[id]; !ok {
			d.Added = append(d.Added, id)
		} else if oc.text != c.text {
			d.Changed = append(d.Changed, id)
		}
	}
	for id := range o {
		if _, ok := n[id]; !ok {
			d.Removed = append(d.Removed, id)
		}
	}
	sort.Strings(d.Added)
	sort.Strings(d.Removed)
	sort.Strings(d.Changed)
	var od, nd DenyList
	if old != nil {
		od = old.DenyList()
	}
	if new != nil {
		nd = new.DenyList()
	}
	d.DenyAdded.SPIFFEIDs = minus(nd.SPIFFEIDs, od.SPIFFEIDs)
	d.DenyRemoved.SPIFFEIDs = minus(od.SPIFFEIDs, nd.SPIFFEIDs)
	d.DenyAdded.Serials = minus(nd.Serials, od.Serials)
	d.DenyRemoved.Serials = minus(od.Serials, nd.Serials)
	d.DenyAdded.TaintedKeys = minus(nd.TaintedKeys, od.TaintedKeys)
	d.DenyRemoved.TaintedKeys = minus(od.TaintedKeys, nd.TaintedKeys)
	return d
}

func minus(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var out []string
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}
