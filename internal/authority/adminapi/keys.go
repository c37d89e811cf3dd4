package adminapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/shared/errs"
)

type keysService struct {
	wardv1.UnimplementedKeysServer
	a *api
}

func (k *keysService) CreateKey(ctx context.Context, r *wardv1.CreateKeyRequest) (*wardv1.Key, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	v, err := m.Create(ctx, r.Name, r.Classification, r.Purpose)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.KeyProto(v), nil
}

func (k *keysService) ListKeys(ctx context.Context, r *wardv1.ListKeysRequest) (*wardv1.ListKeysResponse, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	vs, err := m.List(ctx, r.Prefix)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	out := &wardv1.ListKeysResponse{}
	for _, v := range vs {
		out.Keys = append(out.Keys, apiconv.KeyProto(v))
	}
	return out, nil
}

func (k *keysService) GetKey(ctx context.Context, r *wardv1.GetKeyRequest) (*wardv1.Key, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	v, err := m.Get(ctx, r.Name)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.KeyProto(v), nil
}

func (k *keysService) RotateKey(ctx context.Context, r *wardv1.RotateKeyRequest) (*wardv1.Key, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	v, err := m.Rotate(ctx, r.Name)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.KeyProto(v), nil
}

func (k *keysService) ConfigureKey(ctx context.Context, r *wardv1.ConfigureKeyRequest) (*wardv1.Key, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	if r.MinDecryptVersion == 0 {
		return nil, status.Error(codes.InvalidArgument, "nothing to configure: give --min-decrypt-version N")
	}
	v, err := m.SetMinDecryptVersion(ctx, r.Name, r.MinDecryptVersion)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.KeyProto(v), nil
}

func (k *keysService) SetVersionState(ctx context.Context, r *wardv1.SetVersionStateRequest) (*wardv1.Key, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, status.Error(codes.InvalidArgument, "give the version with --version N")
	}
	v, err := m.SetEnabled(ctx, r.Name, r.Version, r.Enabled)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.KeyProto(v), nil
}

func (k *keysService) DestroyVersion(ctx context.Context, r *wardv1.DestroyVersionRequest) (*wardv1.Key, error) {
	m, err := k.a.kmsManager()
	if err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, status.Error(codes.InvalidArgument, "give the version with --version N")
	}
	v, err := m.Destroy(ctx, r.Name, r.Version)
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return apiconv.KeyProto(v), nil
}

func (k *keysService) ListClassifications(ctx context.Context, _ *wardv1.ListClassificationsRequest) (*wardv1.ListClassificationsResponse, error) {
	out := &wardv1.ListClassificationsResponse{}
	t := k.a.table
	for _, n := range t.Names() {
		c := t[n]
		out.Classifications = append(out.Classifications, &wardv1.Classification{
			Name: n, Algorithm: c.Algorithm.String(), RotationPeriod: durationpb.New(c.RotationPeriod), KeepVersions: c.KeepVersions,
		})
	}
	return out, nil
}
