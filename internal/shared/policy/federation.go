package policy

import (
	"fmt"

	"github.com/cedar-policy/cedar-go/types"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// AnnotationFederated marks a permit that is meant to admit workloads of
// federated trust domains: @federated("allow") silences the federation
// warning for it.
const (
	AnnotationFederated = "federated"
	FederatedAllow      = "allow"
	// KindFederation is the Kind of the warning about a permit that does
	// not constrain the caller's trust domain.
	KindFederation = "federation"
)

// federationWarning returns the warning for a permit whose match does not
// provably fix the caller's trust domain, or false. It is a compile-time
// analysis only. It is conservative: a permit is fine only when every way it
// can match implies one of
//
//	principal == Workload::"spiffe://td/..." (scope or condition)
//	principal in TrustDomain::"td" / in Workload::"..." (scope or condition)
//	principal.trust_domain == "td", context.source_trust_domain == "td"
//	["td1", "td2"].contains(principal.trust_domain)
//
// through &&, ||, !, if-then-else, `when` and `unless`.
func federationWarning(p *xast.Policy, loc Problem) (Problem, bool) {
	if p.Effect != xast.EffectPermit {
		return Problem{}, false
	}
	if scopeFixesTD(p.Principal) {
		return Problem{}, false
	}
	for _, c := range p.Conditions {
		a := &tdCheck{budget: tdCheckBudget}
		if c.Condition == xast.ConditionWhen && a.ifTrue(c.Body) {
			return Problem{}, false
		}
		if c.Condition == xast.ConditionUnless && a.ifFalse(c.Body) {
			return Problem{}, false
		}
	}
	q := loc
	q.Kind, q.Warning = KindFederation, true
	q.Message = "this permit does not constrain the caller's trust domain, so workloads of federated trust domains " +
		"with the same path or labels match it too; add `principal in TrustDomain::\"<your trust domain>\"` to its scope " +
		"(or `when { principal.trust_domain == \"<your trust domain>\" }`), or annotate it @federated(\"allow\") if it is meant to admit peers"
	return q, true
}

// fixesTD reports whether an entity a principal is equal to or in pins the
// trust domain: a trust domain, or a workload (which has no members).
func fixesTD(e types.EntityUID) bool {
	return e.Type == TypeTrustDomain || e.Type == TypeWorkload
}

func scopeFixesTD(s xast.IsScopeNode) bool {
	switch x := s.(type) {
	case xast.ScopeTypeEq:
		return fixesTD(x.Entity)
	case xast.ScopeTypeIn:
		return fixesTD(x.Entity)
	case xast.ScopeTypeIsIn:
		return fixesTD(x.Entity)
	}
	return false
}

func isVar(n xast.IsNode, name types.String) bool {
	v, ok := n.(xast.NodeTypeVariable)
	return ok && v.Name == name
}

// isTDAttr: principal.trust_domain or context.source_trust_domain.
func isTDAttr(n xast.IsNode) bool {
	a, ok := n.(xast.NodeTypeAccess)
	if !ok {
		return false
	}
	return (isVar(a.Arg, "principal") && a.Value == "trust_domain") ||
		(isVar(a.Arg, "context") && a.Value == "source_trust_domain")
}

func isStringLit(n xast.IsNode) bool {
	v, ok := n.(xast.NodeValue)
	if !ok {
		return false
	}
	_, ok = v.Value.(types.String)
	return ok
}

// literalElems returns the elements of a set literal, as nodes.
func literalElems(n xast.IsNode) ([]xast.IsNode, bool) {
	switch x := n.(type) {
	case xast.NodeTypeSet:
		return x.Elements, true
	case xast.NodeValue:
		s, ok := x.Value.(types.Set)
		if !ok {
			return nil, false
		}
		var out []xast.IsNode
		for v := range s.All() {
			out = append(out, xast.NodeValue{Value: v})
		}
		return out, true
	}
	return nil, false
}

func entityFixesTD(n xast.IsNode) bool {
	v, ok := n.(xast.NodeValue)
	if !ok {
		return false
	}
	e, ok := v.Value.(types.EntityUID)
	return ok && fixesTD(e)
}

// tdCheckBudget bounds the work on one condition: `if` nested in the
// condition of `if` visits that condition twice, so a hostile policy could
// make the walk exponential. Out of budget, the answer is "not constrained"
// (a warning), never a wrong silence.
const tdCheckBudget = 1 << 16

type tdCheck struct{ budget int }

// ifTrue: n evaluating to true implies the caller's trust domain is one
// named in the policy.
func (a *tdCheck) ifTrue(n xast.IsNode) bool {
	if a.budget--; a.budget < 0 {
		return false
	}
	switch x := n.(type) {
	case xast.NodeTypeEquals:
		return (isTDAttr(x.Left) && isStringLit(x.Right)) || (isTDAttr(x.Right) && isStringLit(x.Left)) ||
			(isVar(x.Left, "principal") && entityFixesTD(x.Right)) || (isVar(x.Right, "principal") && entityFixesTD(x.Left))
	case xast.NodeTypeIn:
		if !isVar(x.Left, "principal") {
			return false
		}
		if entityFixesTD(x.Right) {
			return true
		}
		if es, ok := literalElems(x.Right); ok {
			for _, e := range es {
				if !entityFixesTD(e) {
					return false
				}
			}
			return true // an empty set matches nothing
		}
	case xast.NodeTypeIsIn:
		return isVar(x.Left, "principal") && entityFixesTD(x.Entity)
	case xast.NodeTypeContains:
		if !isTDAttr(x.Right) {
			return false
		}
		es, ok := literalElems(x.Left)
		if !ok {
			return false
		}
		for _, e := range es {
			if !isStringLit(e) {
				return false
			}
		}
		return true
	case xast.NodeTypeLike:
		return isTDAttr(x.Arg) && !hasWildcard(x.Value)
	case xast.NodeTypeAnd:
		return a.ifTrue(x.Left) || a.ifTrue(x.Right)
	case xast.NodeTypeOr:
		return a.ifTrue(x.Left) && a.ifTrue(x.Right)
	case xast.NodeTypeNot:
		return a.ifFalse(x.Arg)
	case xast.NodeTypeIfThenElse:
		// true means (If && Then) or (!If && Else).
		return (a.ifTrue(x.If) || a.ifTrue(x.Then)) && (a.ifFalse(x.If) || a.ifTrue(x.Else))
	case xast.NodeValue:
		// `false` never matches.
		b, ok := x.Value.(types.Boolean)
		return ok && !bool(b)
	}
	return false
}

// ifFalse: n evaluating to false implies the caller's trust domain is one
// named in the policy. (An evaluation error never makes a policy match.)
func (a *tdCheck) ifFalse(n xast.IsNode) bool {
	if a.budget--; a.budget < 0 {
		return false
	}
	switch x := n.(type) {
	case xast.NodeTypeNotEquals:
		return (isTDAttr(x.Left) && isStringLit(x.Right)) || (isTDAttr(x.Right) && isStringLit(x.Left)) ||
			(isVar(x.Left, "principal") && entityFixesTD(x.Right)) || (isVar(x.Right, "principal") && entityFixesTD(x.Left))
	case xast.NodeTypeAnd:
		return a.ifFalse(x.Left) && a.ifFalse(x.Right)
	case xast.NodeTypeOr:
		return a.ifFalse(x.Left) || a.ifFalse(x.Right)
	case xast.NodeTypeNot:
		return a.ifTrue(x.Arg)
	case xast.NodeTypeIfThenElse:
		return (a.ifTrue(x.If) || a.ifFalse(x.Then)) && (a.ifFalse(x.If) || a.ifFalse(x.Else))
	case xast.NodeValue:
		b, ok := x.Value.(types.Boolean)
		return ok && bool(b)
	}
	return false
}

func hasWildcard(p types.Pattern) bool {
	s := p.MarshalCedar()
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			continue
		}
		if s[i] == '*' {
			return true
		}
	}
	return false
}

// Warnings are the problems Compile found that do not stop the Set from
// being used (today: permits that admit federated workloads), in file order.
func (s *Set) Warnings() []Problem { return s.warnings }

func federatedAnnotation(v string) (bool, error) {
	if v == FederatedAllow {
		return true, nil
	}
	return false, fmt.Errorf("@federated(%q): the only value is \"allow\" (this permit is meant to admit workloads of federated trust domains)", v)
}
