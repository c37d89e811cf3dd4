package apiconv

import (
	"context"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/shared/errs"
)

func itemError(err error) *wardv1.ItemError {
	if err == nil {
		return nil
	}
	s := status.Convert(errs.ToStatus(err))
	return &wardv1.ItemError{Code: s.Code().String(), Message: s.Message()}
}

// KeyProto converts a key's view to its wire form.
func KeyProto(v kms.View) *wardv1.Key {
	k := &wardv1.Key{
		Name: v.Name, Classification: v.Classification, Purpose: v.Purpose, Algorithm: v.Algorithm,
		LatestVersion: v.Latest(), MinDecryptVersion: v.MinDecryptVersion,
		Created: timestamppb.New(v.Created), RotationPeriod: durationpb.New(v.RotationPeriod),
		NextRotation: timestamppb.New(v.NextRotation), KeepVersions: v.KeepVersions,
	}
	for i := range v.Versions {
		ver := &v.Versions[i]
		k.Versions = append(k.Versions, &wardv1.KeyVersion{
			Version: ver.Version, State: v.DisplayState(ver), Algorithm: ver.Alg,
			Created: timestamppb.New(ver.Created), StateChanged: timestamppb.New(ver.StateChanged),
		})
	}
	return k
}

// KMS is the KMS service (envelope operations and their batch forms) over
// the manager that Manager returns (or its error, e.g. sealed). The admin
// API serves it as it is; the Node API puts a policy decision in front.
type KMS struct {
	wardv1.UnimplementedKMSServer
	Manager func() (*kms.Manager, error)
}

func (k *KMS) Encrypt(ctx context.Context, r *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	ct, v, err := m.Encrypt(ctx, r.Key, r.Plaintext, r.Context)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.EncryptResponse{Ciphertext: ct, KeyVersion: v}, nil
}

func (k *KMS) Decrypt(ctx context.Context, r *wardv1.DecryptRequest) (*wardv1.DecryptResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	pt, h, err := m.Decrypt(ctx, r.Ciphertext, r.Context)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.DecryptResponse{Plaintext: pt, Key: h.KeyName, KeyVersion: h.Version}, nil
}

func (k *KMS) GenerateDataKey(ctx context.Context, r *wardv1.GenerateDataKeyRequest) (*wardv1.GenerateDataKeyResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	dk, err := m.GenerateDataKey(ctx, r.Key, r.Size, r.Context)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.GenerateDataKeyResponse{Wrapped: dk.Wrapped, KeyVersion: dk.Version}
	if !r.WrappedOnly {
		out.Plaintext = dk.Plaintext
	}
	return out, nil
}

func (k *KMS) Rewrap(ctx context.Context, r *wardv1.RewrapRequest) (*wardv1.RewrapResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	ct, v, err := m.Rewrap(ctx, r.Ciphertext, r.Context)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.RewrapResponse{Ciphertext: ct, KeyVersion: v}, nil
}

func (k *KMS) BatchEncrypt(ctx context.Context, r *wardv1.BatchEncryptRequest) (*wardv1.BatchEncryptResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	items := make([]kms.Item, len(r.Items))
	for i, it := range r.Items {
		items[i] = kms.Item{Data: it.Plaintext, Context: it.Context}
	}
	res, err := m.BatchEncrypt(ctx, r.Key, items)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.BatchEncryptResponse{Results: make([]*wardv1.CiphertextResult, len(res))}
	for i, x := range res {
		out.Results[i] = &wardv1.CiphertextResult{Ciphertext: x.Data, Error: itemError(x.Err)}
	}
	return out, nil
}

func decryptItems(in []*wardv1.DecryptItem) []kms.Item {
	items := make([]kms.Item, len(in))
	for i, it := range in {
		items[i] = kms.Item{Data: it.Ciphertext, Context: it.Context}
	}
	return items
}

func (k *KMS) BatchDecrypt(ctx context.Context, r *wardv1.BatchDecryptRequest) (*wardv1.BatchDecryptResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	res, err := m.BatchDecrypt(ctx, decryptItems(r.Items))
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.BatchDecryptResponse{Results: make([]*wardv1.PlaintextResult, len(res))}
	for i, x := range res {
		out.Results[i] = &wardv1.PlaintextResult{Plaintext: x.Data, Error: itemError(x.Err)}
	}
	return out, nil
}

func (k *KMS) BatchRewrap(ctx context.Context, r *wardv1.BatchRewrapRequest) (*wardv1.BatchRewrapResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	res, err := m.BatchRewrap(ctx, decryptItems(r.Items))
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.BatchRewrapResponse{Results: make([]*wardv1.CiphertextResult, len(res))}
	for i, x := range res {
		out.Results[i] = &wardv1.CiphertextResult{Ciphertext: x.Data, Error: itemError(x.Err)}
	}
	return out, nil
}

func (k *KMS) BatchGenerateDataKey(ctx context.Context, r *wardv1.BatchGenerateDataKeyRequest) (*wardv1.BatchGenerateDataKeyResponse, error) {
	m, err := k.Manager()
	if err != nil {
		return nil, err
	}
	dks, err := m.BatchGenerateDataKey(ctx, r.Key, int(r.Count), r.Size, r.Context)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.BatchGenerateDataKeyResponse{Keys: make([]*wardv1.GenerateDataKeyResponse, len(dks))}
	for i, dk := range dks {
		x := &wardv1.GenerateDataKeyResponse{Wrapped: dk.Wrapped, KeyVersion: dk.Version}
		if !r.WrappedOnly {
			x.Plaintext = dk.Plaintext
		}
		out.Keys[i] = x
	}
	return out, nil
}
