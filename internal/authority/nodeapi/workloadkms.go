package nodeapi

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
	"github.com/wardproject/ward/internal/shared/policy"
)

// followPolicy keeps s.engine at Policy's current version, compiled once
// here and evaluated in memory for every workload KMS call.
func (s *Server) followPolicy(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.cfg.Policy.Watch(ctx, 0, func(v policystore.Version) error {
			set, err := policy.CompileBundle(v.Bundle)
			if err != nil {
				// Stored versions were compiled on apply; this only happens
				// if the schema changed under them. Keep the last good set.
				s.cfg.Log.Error("stored policy version does not compile; keeping the previous one", "version", v.Number, "err", err)
				return nil
			}
			s.engine.StoreIfNewer(set)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		s.cfg.Log.Warn("policy watch ended; restarting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// workloadKMS is the KMS as workloads reach it over mTLS: the same service
// as on the admin socket, behind a policy decision on the caller's SPIFFE
// ID, the action (kms:encrypt, ...) and the key (name, classification).
type workloadKMS struct {
	wardv1.UnimplementedKMSServer
	s     *Server
	inner *apiconv.KMS
}

var kmsActions = map[string]string{
	"Encrypt": policy.ActionKMSEncrypt, "BatchEncrypt": policy.ActionKMSEncrypt,
	"Decrypt": policy.ActionKMSDecrypt, "BatchDecrypt": policy.ActionKMSDecrypt,
	"GenerateDataKey": policy.ActionKMSDataKey, "BatchGenerateDataKey": policy.ActionKMSDataKey,
	"Rewrap": policy.ActionKMSRewrap, "BatchRewrap": policy.ActionKMSRewrap,
}

// keyOf names the key a ciphertext was made with ("" if unparseable: the
// KMS then rejects it with its own error).
func keyOf(ct []byte) string {
	b, err := kmsfmt.Dearmor(ct)
	if err != nil {
		return ""
	}
	h, _, _, err := kmsfmt.Parse(b)
	if err != nil {
		return ""
	}
	return h.KeyName
}

// authorize decides method on keys for the calling workload; a denial is
// audited and returned as PermissionDenied naming the deciding policies.
func (w *workloadKMS) authorize(ctx context.Context, method string, keys ...string) error {
	cfg := &w.s.cfg
	id := WorkloadFrom(ctx)
	if id.IsZero() {
		return status.Error(codes.Unauthenticated, "no workload identity on this call")
	}
	action := kmsActions[method]
	serial := peerSerial(ctx)
	seen := map[string]bool{}
	for _, k := range keys {
		if k == "" || seen[k] {
			continue
		}
		seen[k] = true
		// A name no key can have is refused before the policy decision:
		// the caller's string (up to the message limit) would otherwise
		// be kept by the decision cache and written into a denial's
		// audit event, for every made-up name.
		if err := kmsfmt.ValidateKeyName(k); err != nil {
			return status.Errorf(codes.InvalidArgument, "%v", err)
		}
		cls, err := cfg.KMS.Classification(ctx, k)
		if err != nil {
			// Unknown keys are not revealed to callers policy does not
			// allow: decide on the name alone, then let the KMS answer.
			cls = ""
		}
		start := time.Now()
		d := w.s.engine.Decide(policy.Request{Principal: id.String(), CertSerial: serial, Action: action,
			Resource: policy.Resource{Type: policy.TypeKey, Name: k, Classification: cls},
			Context:  policy.Context{SourceTrustDomain: id.TrustDomain().Name(), TLSVersion: "1.3"}})
		if cfg.OnDecision != nil {
			cfg.OnDecision(action, d, time.Since(start))
		}
		if d.Allowed {
			continue
		}
		ev := w.s.event(ctx, "kms."+strings.TrimPrefix(action, "kms:"), audit.ResultDenied, "",
			map[string]string{"policy_version": fmt.Sprint(d.Version), "cause": d.Cause.String(), "policies": strings.Join(d.Reasons, ",")})
		ev.Key = k
		if err := cfg.Audit.Record(ctx, ev); err != nil {
			return status.Errorf(codes.Unavailable, "audit log unavailable: %v", err)
		}
		why := d.Cause.String()
		if len(d.Reasons) > 0 {
			why += ": " + strings.Join(d.Reasons, ", ")
		}
		return status.Errorf(codes.PermissionDenied, "policy version %d denies %s %s on key %q (%s)", d.Version, id, action, k, why)
	}
	return nil
}

// peerSerial is the hex serial of the caller's certificate, for the
// deny-list's serials (`ward revoke --serial`): a revoked SVID is refused
// even while its SPIFFE ID is not.
func peerSerial(ctx context.Context) string {
	p, _ := peer.FromContext(ctx)
	ci, _ := peerTLS(p) // computed once per connection (connInfo)
	return ci.serial
}

func (w *workloadKMS) Encrypt(ctx context.Context, r *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	if err := w.authorize(ctx, "Encrypt", r.Key); err != nil {
		return nil, err
	}
	return w.inner.Encrypt(ctx, r)
}

func (w *workloadKMS) Decrypt(ctx context.Context, r *wardv1.DecryptRequest) (*wardv1.DecryptResponse, error) {
	if err := w.authorize(ctx, "Decrypt", keyOf(r.Ciphertext)); err != nil {
		return nil, err
	}
	return w.inner.Decrypt(ctx, r)
}

func (w *workloadKMS) GenerateDataKey(ctx context.Context, r *wardv1.GenerateDataKeyRequest) (*wardv1.GenerateDataKeyResponse, error) {
	if err := w.authorize(ctx, "GenerateDataKey", r.Key); err != nil {
		return nil, err
	}
	return w.inner.GenerateDataKey(ctx, r)
}

func (w *workloadKMS) Rewrap(ctx context.Context, r *wardv1.RewrapRequest) (*wardv1.RewrapResponse, error) {
	if err := w.authorize(ctx, "Rewrap", keyOf(r.Ciphertext)); err != nil {
		return nil, err
	}
	return w.inner.Rewrap(ctx, r)
}

func (w *workloadKMS) BatchEncrypt(ctx context.Context, r *wardv1.BatchEncryptRequest) (*wardv1.BatchEncryptResponse, error) {
	if err := w.authorize(ctx, "BatchEncrypt", r.Key); err != nil {
		return nil, err
	}
	return w.inner.BatchEncrypt(ctx, r)
}

func itemKeys(items []*wardv1.DecryptItem) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = keyOf(it.Ciphertext)
	}
	return out
}

func (w *workloadKMS) BatchDecrypt(ctx context.Context, r *wardv1.BatchDecryptRequest) (*wardv1.BatchDecryptResponse, error) {
	if err := w.authorize(ctx, "BatchDecrypt", itemKeys(r.Items)...); err != nil {
		return nil, err
	}
	return w.inner.BatchDecrypt(ctx, r)
}

func (w *workloadKMS) BatchRewrap(ctx context.Context, r *wardv1.BatchRewrapRequest) (*wardv1.BatchRewrapResponse, error) {
	if err := w.authorize(ctx, "BatchRewrap", itemKeys(r.Items)...); err != nil {
		return nil, err
	}
	return w.inner.BatchRewrap(ctx, r)
}

func (w *workloadKMS) BatchGenerateDataKey(ctx context.Context, r *wardv1.BatchGenerateDataKeyRequest) (*wardv1.BatchGenerateDataKeyResponse, error) {
	if err := w.authorize(ctx, "BatchGenerateDataKey", r.Key); err != nil {
		return nil, err
	}
	return w.inner.BatchGenerateDataKey(ctx, r)
}
