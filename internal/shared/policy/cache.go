package policy

import (
	"hash/maphash"
	"maps"
	"slices"
	"sync/atomic"

	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// Decision cache. A proxy decides once per connection and re-decides every
// open connection on each new version, and most of them ask the same few
// questions; evaluating Cedar allocates per call. A Set therefore keeps
// recent decisions, keyed by everything a decision can depend on except
// the time:
//
//   - the Set itself: a Set is immutable, and a new version or deny-list is
//     a new Set with an empty cache (every entry also names its Set);
//   - the deny-list is checked before the cache, on every call;
//   - principal (and so its trust domain and path), labels and groups
//     (compared in full, not by hash), action, resource (type, name, port,
//     classification) and the context values other than time (source
//     trust domain, destination, TLS version).
//
// A decision is cached only when no candidate policy may read the time
// (context.time, context.unix_time, or the context record as a whole:
// readsTime is conservative); such requests are always evaluated. A
// request whose certificate serial is malformed is evaluated too (it is a
// bad request, whose error the full path words), and so is one whose
// strings exceed maxCachedKey (made-up names are not kept). The cache is a bounded
// table of decisionCacheSlots entries, decisionCacheWays per hash: a
// colliding request replaces an entry.

// decisionCacheSlots bounds the cached decisions of one Set; a request
// may live in any of decisionCacheWays adjacent slots (set associative).
const (
	decisionCacheSlots = 16384
	decisionCacheWays  = 4
)

// decisionCache is allocated at a Set's first decision, so Sets that never
// decide (dry runs, listings, old versions) cost nothing.
type decisionCache struct {
	seed  maphash.Seed
	table atomic.Pointer[[decisionCacheSlots]atomic.Pointer[decisionEntry]]
}

func newDecisionCache() *decisionCache { return &decisionCache{seed: maphash.MakeSeed()} }

func (c *decisionCache) slots() *[decisionCacheSlots]atomic.Pointer[decisionEntry] {
	if t := c.table.Load(); t != nil {
		return t
	}
	c.table.CompareAndSwap(nil, new([decisionCacheSlots]atomic.Pointer[decisionEntry]))
	return c.table.Load()
}

// decisionKey is the comparable part of a cache key; labels and groups are
// kept beside it in the entry.
type decisionKey struct {
	principal, action string
	resource          Resource
	std, dest, tls    string
}

type decisionEntry struct {
	h      uint64 // the hash of its request, compared before the key
	set    *Set
	key    decisionKey
	labels map[string]string
	groups []string
	d      Decision
	// reasons holds d.Reasons when they are few (one allocation per entry).
	reasons [2]string
}

func keyOf(req *Request) decisionKey {
	return decisionKey{
		principal: req.Principal, action: req.Action, resource: req.Resource,
		std: req.Context.SourceTrustDomain, dest: req.Context.Destination, tls: req.Context.TLSVersion,
	}
}

// hash is where req (key k) lives: the decisionCacheWays slots from
// h % decisionCacheSlots rounded down to a multiple of decisionCacheWays.
// Only the fields that tell an enforcement point's requests apart are
// hashed (principal, action, resource name, destination); the rest of the
// key, the labels and the groups are compared on a hit (matches), so two
// requests differing only there share ways but never an entry.
func (c *decisionCache) hash(k *decisionKey) uint64 {
	h := maphash.String(c.seed, k.principal)
	h = h*31 + maphash.String(c.seed, k.resource.Name)
	h = h*31 + maphash.String(c.seed, k.dest)
	return h*31 + maphash.String(c.seed, k.action)
}

// matches reports whether e holds the decision of req (key k) by s.
func (e *decisionEntry) matches(s *Set, k *decisionKey, req *Request) bool {
	return e.set == s && e.key == *k && maps.Equal(e.labels, req.Labels) && slices.Equal(e.groups, req.Groups)
}

// clone returns d with slices of its own, so a caller changing a returned
// decision cannot change the cached one.
func (d Decision) clone() Decision {
	d.Reasons = slices.Clone(d.Reasons)
	d.DryRunDenials = slices.Clone(d.DryRunDenials)
	d.DryRunPermits = slices.Clone(d.DryRunPermits)
	d.Errors = slices.Clone(d.Errors)
	return d
}

// cachedDecide answers req (principal already filled in, deny-list already
// checked) from the cache, evaluating and remembering it on a miss.
func (s *Set) cachedDecide(req *Request) Decision {
	k := keyOf(req)
	h := s.cache.hash(&k)
	t := s.cache.slots()
	first := h % decisionCacheSlots &^ (decisionCacheWays - 1)
	for i := first; i < first+decisionCacheWays; i++ {
		if e := t[i].Load(); e != nil && e.h == h && e.matches(s, &k, req) {
			return e.d.clone()
		}
	}
	return s.decideAndCache(*req, k, h)
}

// decideAndCache is the miss path; it takes req by value so that the hit
// path's request does not escape to the heap. The new entry goes to an
// empty slot of its ways, else replaces one chosen by the hash.
//
//go:noinline
func (s *Set) decideAndCache(req Request, k decisionKey, h uint64) Decision {
	d, cacheable := s.evaluateChecked(&req)
	if cacheable {
		t := s.cache.slots()
		first := h % decisionCacheSlots &^ (decisionCacheWays - 1)
		i := first + h/decisionCacheSlots%decisionCacheWays
		for j := first; j < first+decisionCacheWays; j++ {
			if t[j].Load() == nil {
				i = j
				break
			}
		}
		e := &decisionEntry{h: h, set: s, key: k, labels: maps.Clone(req.Labels), groups: slices.Clone(req.Groups), d: d}
		e.d.Reasons = nil // cloned below, in the entry when few
		e.d = e.d.clone()
		if n := len(d.Reasons); d.Reasons != nil && n <= len(e.reasons) {
			copy(e.reasons[:], d.Reasons)
			e.d.Reasons = e.reasons[:n:n]
		} else {
			e.d.Reasons = slices.Clone(d.Reasons)
		}
		t[i].Store(e)
	}
	return d
}

// contextTimeless names the context attributes that do not depend on the
// time and are part of the cache key; reading any other context attribute
// (or the context record itself) makes a policy time-dependent.
var contextTimeless = map[string]bool{"source_trust_domain": true, "destination": true, "tls_version": true}

// readsTime reports whether policy p may read the request time:
// conservatively, every use of the context variable other than reading or
// testing one of the timeless attributes counts.
func readsTime(p *xast.Policy) bool {
	uses, timeless := 0, 0
	attr := func(arg xast.IsNode, name string) {
		if v, ok := arg.(xast.NodeTypeVariable); ok && v.Name == "context" && contextTimeless[name] {
			timeless++
		}
	}
	for _, c := range p.Conditions {
		xast.Inspect(xast.NewNode(c.Body), func(n xast.IsNode) bool {
			switch x := n.(type) {
			case xast.NodeTypeVariable:
				if x.Name == "context" {
					uses++
				}
			case xast.NodeTypeAccess:
				attr(x.Arg, string(x.Value))
			case xast.NodeTypeHas:
				attr(x.Arg, string(x.Value))
			}
			return true
		})
	}
	return uses > timeless
}
