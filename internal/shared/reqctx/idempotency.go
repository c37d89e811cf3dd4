package reqctx

import (
	"context"
	"strings"

	"google.golang.org/grpc/metadata"
)

// IdempotencyHeader is the gRPC metadata key of a client's idempotency key:
// one random value per logical call, the same on every retry of it (to any
// authority). The authority runs a call that changes state at most once
// per caller, method and key, and answers retries with the first answer
// (docs/ha.md).
const IdempotencyHeader = "ward-idempotency-key"

// IdempotencyKeyFrom returns the client's idempotency key from incoming
// metadata, or "" if there is none or it is malformed (1–64 characters of
// [A-Za-z0-9_-]).
func IdempotencyKeyFrom(ctx context.Context) string {
	// ValueFromIncomingContext reads one key without copying the whole
	// metadata (FromIncomingContext does, on every call).
	if v := metadata.ValueFromIncomingContext(ctx, IdempotencyHeader); len(v) == 1 && validRequestID(v[0]) {
		return v[0]
	}
	return ""
}

// Retry is how a client may retry a method after the request may have
// reached an authority.
type Retry int

const (
	// RetryNever: only if the request never left the client (operator
	// lifecycle: init, unseal, seal; unknown methods).
	RetryNever Retry = iota
	// RetrySafe: reads, and calls whose repetition is harmless (KMS
	// encrypt, decrypt, data keys, rewrap; SVID signing).
	RetrySafe
	// RetryWithKey: state changes; retried only with an idempotency key,
	// which the authority deduplicates.
	RetryWithKey
)

// retrySafe lists the methods that may be repeated (full gRPC names).
var retrySafe = map[string]bool{
	"/ward.v1.Operator/Status":                true,
	"/ward.v1.Cluster/Status":                 true,
	"/ward.v1.Keys/ListKeys":                  true,
	"/ward.v1.Keys/GetKey":                    true,
	"/ward.v1.Keys/ListClassifications":       true,
	"/ward.v1.KMS/Encrypt":                    true,
	"/ward.v1.KMS/Decrypt":                    true,
	"/ward.v1.KMS/GenerateDataKey":            true,
	"/ward.v1.KMS/Rewrap":                     true,
	"/ward.v1.KMS/BatchEncrypt":               true,
	"/ward.v1.KMS/BatchDecrypt":               true,
	"/ward.v1.KMS/BatchGenerateDataKey":       true,
	"/ward.v1.KMS/BatchRewrap":                true,
	"/ward.v1.Audit/Read":                     true,
	"/ward.v1.Audit/Tail":                     true,
	"/ward.v1.Audit/Checkpoint":               true,
	"/ward.v1.Audit/Hash":                     true,
	"/ward.v1.Policy/ListPolicyVersions":      true,
	"/ward.v1.Policy/GetPolicy":               true,
	"/ward.v1.Policy/CheckPolicy":             true, // stores nothing
	"/ward.v1.Policy/PolicyLintMode":          true,
	"/ward.v1.PolicyDistribution/WatchPolicy": true,
	"/ward.v1.Entries/ListEntries":            true,
	"/ward.v1.Entries/GetEntry":               true,
	"/ward.v1.Agents/ListAgents":              true,
	"/ward.v1.CA/ShowCA":                      true,
	"/ward.v1.CA/GetBundle":                   true,
	"/ward.v1.Federation/ListFederations":     true,
	"/ward.v1.Federation/ShowFederation":      true,
	"/ward.v1.Catalog/ListServices":           true,
	"/ward.v1.Node/Sync":                      true,
	"/ward.v1.Node/SignX509SVIDs":             true,
	"/ward.v1.Node/SignJWTSVID":               true,
}

// RetryOf says how fullMethod ("/ward.v1.Keys/RotateKey") may be retried.
func RetryOf(fullMethod string) Retry {
	if retrySafe[fullMethod] {
		return RetrySafe
	}
	svc, _, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok || !strings.HasPrefix(svc, "ward.v1.") {
		return RetryNever
	}
	switch svc {
	case "ward.v1.Operator", "ward.v1.Node":
		return RetryNever
	}
	return RetryWithKey
}
