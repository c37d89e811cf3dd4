// Package policy is ward's authorization decision point: it compiles Cedar
// policy files into an immutable, indexed Set and decides requests against it.
//
// # Entity model
//
// Principals are workloads, actions are ward operations, resources are
// services and keys:
//
//	Workload::"spiffe://prod.example/ns/web"   attrs: trust_domain, path, labels (record of strings)
//	  parents: TrustDomain::"prod.example" and Group::"<g>" for each group of its entry
//	Action::"connect"
//	Action::"kms:encrypt" | "kms:decrypt" | "kms:datakey" | "kms:rewrap"  all in Action::"kms:*"
//	Service::"<name>"  attrs: name, port (long), classification
//	Key::"<name>"      attrs: name, classification
//	context: source_trust_domain, destination, tls_version (strings),
//	         time (datetime), unix_time (long, seconds)
//
// Compile validates every policy against this model (see Schema): a policy
// naming an unknown entity type, action, attribute or context field is
// rejected at compile time instead of silently never matching.
//
// # Semantics
//
// Default deny; a matching forbid overrides any permit. A policy that fails
// to evaluate (for instance reading a label the principal lacks) is reported
// in Decision.Errors. A failing permit grants nothing, as in Cedar; a
// failing enforced forbid denies (fail closed), where Cedar would skip it:
// a forbid that cannot be checked might have matched. Guard optional
// attributes with `has`.
//
// Policies annotated @dryrun("true") never change a decision. Dry-run
// policies are evaluated beside the enforced ones, giving a shadow decision
// (the decision if they were enforced). When the shadow decision differs:
//
//   - enforced allow, shadow deny: the matching dry-run forbids are listed in
//     Decision.DryRunDenials (a would-be denial, to be logged and counted);
//   - enforced deny, shadow allow: the matching dry-run permits are listed in
//     Decision.DryRunPermits (a would-be allow). A dry-run permit never grants
//     access.
//
// Before any policy runs, the deny-list that travels with the Set (SPIFFE IDs
// and certificate serials) refuses listed identities. An Engine holding no
// valid Set denies everything with the reason "no valid policy".
//
// # Speed
//
// cedar-go evaluates every policy it is handed, so a Set indexes policies by
// principal scope (exact entity or `in` group, else any), resource scope
// (exact, else any) and action (bit mask), and hands cedar-go only the
// candidates for a request. Candidate selection is exact: every policy whose
// scope can match the request is a candidate, so decisions are identical to
// evaluating the whole set (the property test checks this).
package policy
