package policy

import (
	"fmt"
	"hash/maphash"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// Entity type and action names of ward's model.
const (
	TypeWorkload    = "Workload"
	TypeTrustDomain = "TrustDomain"
	TypeGroup       = "Group"
	TypeService     = "Service"
	TypeKey         = "Key"
	TypeAction      = "Action"

	ActionConnect    = "connect"
	ActionKMSEncrypt = "kms:encrypt"
	ActionKMSDecrypt = "kms:decrypt"
	ActionKMSDataKey = "kms:datakey"
	ActionKMSRewrap  = "kms:rewrap"
	// ActionGroupKMS contains every kms:* action: `action in Action::"kms:*"`.
	ActionGroupKMS = "kms:*"
)

// Schema is the entity model policies are validated against. Validation is
// deliberately structural (names, not types): it rejects references to
// entity types, actions, attributes and context fields that do not exist,
// which are the mistakes that make a policy silently never match.
type Schema struct {
	// Principals maps each principal entity type to its attribute names.
	Principals map[string][]string
	// Groups are entity types a principal can be `in` (its parents).
	Groups []string
	// Resources maps each resource entity type to its attribute names.
	Resources map[string][]string
	// Actions maps each action id (entity type Action) to the action groups
	// it belongs to. Groups are actions too and must be listed (with no
	// parents of their own, or with parents forming no cycle).
	Actions map[string][]string
	// Context lists the context field names requests carry.
	Context []string
}

// DefaultSchema returns ward's entity model (see the package documentation).
func DefaultSchema() *Schema {
	return &Schema{
		Principals: map[string][]string{TypeWorkload: {"trust_domain", "path", "labels"}},
		Groups:     []string{TypeTrustDomain, TypeGroup},
		Resources: map[string][]string{
			TypeService: {"name", "port", "classification"},
			TypeKey:     {"name", "classification"},
		},
		Actions: map[string][]string{
			ActionConnect:    nil,
			ActionKMSEncrypt: {ActionGroupKMS},
			ActionKMSDecrypt: {ActionGroupKMS},
			ActionKMSDataKey: {ActionGroupKMS},
			ActionKMSRewrap:  {ActionGroupKMS},
			ActionGroupKMS:   nil,
		},
		Context: []string{"source_trust_domain", "destination", "time", "unix_time", "tls_version"},
	}
}

// model is a Schema prepared for validation and indexing.
type model struct {
	principals  map[types.EntityType]map[string]bool
	groups      map[types.EntityType]bool
	resources   map[types.EntityType]map[string]bool
	principalAt map[string]bool // union of principal attributes
	resourceAt  map[string]bool // union of resource attributes
	context     map[string]bool
	actionBit   map[types.String]uint64 // action id -> its own bit
	actionDesc  map[types.String]uint64 // action id -> bits of itself and every action below it
	actionEnts  map[types.EntityUID]types.Entity

	resCache  sync.Map // Resource -> types.Entity
	resCached atomic.Int64
	ctxCache  [16]atomic.Pointer[ctxEntry]
	ctxSeed   maphash.Seed
}

// dataNeeds reports whether policy p may read the principal's attributes
// (any attribute read that is not plainly on context or resource is taken
// to) and whether it reads the context. Resource entities are always built.
func dataNeeds(p *xast.Policy) (principal, ctx bool) {
	reads := func(n xast.IsNode) {
		v, ok := n.(xast.NodeTypeVariable)
		if !ok || v.Name != "context" && v.Name != "resource" {
			principal = true
		}
	}
	for _, c := range p.Conditions {
		xast.Inspect(xast.NewNode(c.Body), func(n xast.IsNode) bool {
			switch x := n.(type) {
			case xast.NodeTypeVariable:
				ctx = ctx || x.Name == "context"
			case xast.NodeTypeAccess:
				reads(x.Arg)
			case xast.NodeTypeHas:
				reads(x.Arg)
			case xast.NodeTypeGetTag, xast.NodeTypeHasTag:
				principal = true
			}
			return true
		})
	}
	return principal, ctx
}

func (s *Schema) prepare() (*model, error) {
	m := &model{
		principals:  map[types.EntityType]map[string]bool{},
		groups:      map[types.EntityType]bool{},
		resources:   map[types.EntityType]map[string]bool{},
		principalAt: map[string]bool{},
		resourceAt:  map[string]bool{},
		context:     map[string]bool{},
		actionBit:   map[types.String]uint64{},
		actionDesc:  map[types.String]uint64{},
		actionEnts:  map[types.EntityUID]types.Entity{},
		ctxSeed:     maphash.MakeSeed(),
	}
	for t, attrs := range s.Principals {
		m.principals[types.EntityType(t)] = setOf(attrs)
		for _, a := range attrs {
			m.principalAt[a] = true
		}
	}
	for _, g := range s.Groups {
		m.groups[types.EntityType(g)] = true
	}
	for t, attrs := range s.Resources {
		m.resources[types.EntityType(t)] = setOf(attrs)
		for _, a := range attrs {
			m.resourceAt[a] = true
		}
	}
	for _, c := range s.Context {
		m.context[c] = true
	}
	if len(s.Actions) > 64 {
		return nil, fmt.Errorf("policy schema: %d actions, at most 64 are supported", len(s.Actions))
	}
	ids := make([]string, 0, len(s.Actions))
	for a := range s.Actions {
		ids = append(ids, a)
	}
	sort.Strings(ids)
	for i, a := range ids {
		m.actionBit[types.String(a)] = 1 << uint(i)
	}
	for _, a := range ids {
		parents := make([]types.EntityUID, 0, len(s.Actions[a]))
		for _, p := range s.Actions[a] {
			if _, ok := s.Actions[p]; !ok {
				return nil, fmt.Errorf("policy schema: action %q is in group %q, which is not a declared action", a, p)
			}
			parents = append(parents, types.NewEntityUID(TypeAction, types.String(p)))
		}
		uid := types.NewEntityUID(TypeAction, types.String(a))
		m.actionEnts[uid] = types.Entity{UID: uid, Parents: types.NewEntityUIDSet(parents...)}
	}
	// Every action contributes its bit to itself and all its ancestors.
	for _, a := range ids {
		seen := map[string]bool{}
		var walk func(x string) error
		walk = func(x string) error {
			if seen[x] {
				return fmt.Errorf("policy schema: action groups form a cycle through %q", x)
			}
			seen[x] = true
			m.actionDesc[types.String(x)] |= m.actionBit[types.String(a)]
			for _, p := range s.Actions[x] {
				if err := walk(p); err != nil {
					return err
				}
			}
			delete(seen, x)
			return nil
		}
		if err := walk(a); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func setOf(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func keys[V any](m map[types.EntityType]V) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, string(k))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

func names(m map[string]bool) string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

func (m *model) actionNames() string {
	ks := make([]string, 0, len(m.actionBit))
	for k := range m.actionBit {
		ks = append(ks, string(k))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

func (m *model) knownType(t types.EntityType) bool {
	if t == TypeAction || m.groups[t] {
		return true
	}
	_, p := m.principals[t]
	_, r := m.resources[t]
	return p || r
}

func (m *model) allTypes() string {
	all := map[string]bool{TypeAction: true}
	for t := range m.principals {
		all[string(t)] = true
	}
	for t := range m.resources {
		all[string(t)] = true
	}
	for t := range m.groups {
		all[string(t)] = true
	}
	return names(all)
}

// validate checks one parsed policy against the model and returns a message
// per problem found (empty when the policy is valid).
func (m *model) validate(p *xast.Policy) []validationProblem {
	var probs []validationProblem
	var tokens []string // the source text the next add points at, best first
	add := func(format string, args ...any) {
		probs = append(probs, validationProblem{msg: fmt.Sprintf(format, args...), tokens: tokens})
	}
	at := func(t ...string) { tokens = t }

	principalType := func(t types.EntityType, where string) {
		if _, ok := m.principals[t]; !ok {
			at(string(t))
			add("%s: %q is not a principal entity type (principal types: %s)", where, t, keys(m.principals))
		}
	}
	principalOrGroup := func(e types.EntityUID, where string) {
		if _, ok := m.principals[e.Type]; !ok && !m.groups[e.Type] {
			at(string(e.Type))
			add("%s: unknown principal or group entity type %q in %s (known: %s, %s)", where, e.Type, e, keys(m.principals), keys(m.groups))
		}
	}
	resourceType := func(t types.EntityType, where string) {
		if _, ok := m.resources[t]; !ok {
			at(string(t))
			add("%s: %q is not a resource entity type (resource types: %s)", where, t, keys(m.resources))
		}
	}
	action := func(e types.EntityUID, where string) {
		if e.Type != TypeAction {
			at(string(e.Type))
			add("%s: %s is not an action; actions are Action::\"...\"", where, e)
			return
		}
		if _, ok := m.actionBit[e.ID]; !ok {
			at(strconv.Quote(string(e.ID)), string(e.ID))
			add("%s: unknown action %s (known actions: %s)", where, e, m.actionNames())
		}
	}

	switch s := p.Principal.(type) {
	case xast.ScopeTypeEq:
		principalType(s.Entity.Type, "principal scope")
	case xast.ScopeTypeIn:
		principalOrGroup(s.Entity, "principal scope")
	case xast.ScopeTypeIs:
		principalType(s.Type, "principal scope")
	case xast.ScopeTypeIsIn:
		principalType(s.Type, "principal scope")
		principalOrGroup(s.Entity, "principal scope")
	}
	switch s := p.Action.(type) {
	case xast.ScopeTypeEq:
		action(s.Entity, "action scope")
	case xast.ScopeTypeIn:
		action(s.Entity, "action scope")
	case xast.ScopeTypeInSet:
		for _, e := range s.Entities {
			action(e, "action scope")
		}
	}
	switch s := p.Resource.(type) {
	case xast.ScopeTypeEq:
		resourceType(s.Entity.Type, "resource scope")
	case xast.ScopeTypeIn:
		resourceType(s.Entity.Type, "resource scope")
	case xast.ScopeTypeIs:
		resourceType(s.Type, "resource scope")
	case xast.ScopeTypeIsIn:
		resourceType(s.Type, "resource scope")
		resourceType(s.Entity.Type, "resource scope")
	}

	literal := func(e types.EntityUID) {
		if !m.knownType(e.Type) {
			at(string(e.Type))
			add("condition: unknown entity type %q in %s (known types: %s)", e.Type, e, m.allTypes())
			return
		}
		if e.Type == TypeAction {
			action(e, "condition")
		}
	}
	var value func(v types.Value)
	value = func(v types.Value) {
		switch x := v.(type) {
		case types.EntityUID:
			literal(x)
		case types.Set:
			for e := range x.All() {
				value(e)
			}
		case types.Record:
			for _, e := range x.All() {
				value(e)
			}
		}
	}
	attr := func(arg xast.IsNode, name types.String) {
		v, ok := arg.(xast.NodeTypeVariable)
		if !ok {
			return
		}
		at("."+string(name), strconv.Quote(string(name)), " "+string(name))
		switch v.Name {
		case "context":
			if !m.context[string(name)] {
				add("condition: unknown context field %q (context fields: %s)", name, names(m.context))
			}
		case "principal":
			if !m.principalAt[string(name)] {
				add("condition: principal has no attribute %q (principal attributes: %s)", name, names(m.principalAt))
			}
		case "resource":
			if !m.resourceAt[string(name)] {
				add("condition: resource has no attribute %q (resource attributes: %s)", name, names(m.resourceAt))
			}
		case "action":
			add("condition: actions have no attributes (read %q)", name)
		}
	}
	for _, c := range p.Conditions {
		xast.Inspect(xast.NewNode(c.Body), func(n xast.IsNode) bool {
			switch x := n.(type) {
			case xast.NodeValue:
				value(x.Value)
			case xast.NodeTypeIs:
				at(string(x.EntityType))
				if !m.knownType(x.EntityType) {
					add("condition: unknown entity type %q after `is` (known types: %s)", x.EntityType, m.allTypes())
				}
			case xast.NodeTypeIsIn:
				at(string(x.EntityType))
				if !m.knownType(x.EntityType) {
					add("condition: unknown entity type %q after `is` (known types: %s)", x.EntityType, m.allTypes())
				}
			case xast.NodeTypeAccess:
				attr(x.Arg, x.Value)
			case xast.NodeTypeHas:
				attr(x.Arg, x.Value)
			case xast.NodeTypeGetTag, xast.NodeTypeHasTag:
				at("getTag", "hasTag")
				add("condition: ward entities carry no tags; read labels with principal.labels")
			}
			return true
		})
	}
	return slices.CompactFunc(probs, func(a, b validationProblem) bool { return a.msg == b.msg })
}

// validationProblem is one finding of validate and the source text it is
// about (tokens, best first), for its position.
type validationProblem struct {
	msg    string
	tokens []string
}
