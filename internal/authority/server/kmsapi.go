package server

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
)

// auditWitness lets the KMS check every key record it loads against the
// newest revision the audit log recorded for it (rollback detection).
type auditWitness struct{ idx *audit.RevisionIndex }

func (w auditWitness) Latest(ctx context.Context, name string) (kms.Mark, bool, error) {
	m, ok, err := w.idx.Latest(ctx, name)
	return kms.Mark{Revision: m.Revision, Digest: m.Digest, Seq: m.Seq, Destroyed: m.Destroyed}, ok, err
}

// kmsWitness is the KMS option that ties key records to the audit log l.
func kmsWitness(l *audit.Log) kms.Option {
	return kms.WithWitness(auditWitness{idx: audit.NewRevisionIndex(l)})
}

// integrityCollector exports the rollbacks the authority detected since it
// was last unsealed: key records older than the audit log says, and the
// stored audit log going backwards.
type integrityCollector struct{ s *Server }

var (
	keyRollbackDesc = prometheus.NewDesc("ward_kms_key_record_rollbacks_detected_total",
		"Key records refused since unseal because they were older than (or differed from) the revision the audit log recorded.", nil, nil)
	auditRollbackDesc = prometheus.NewDesc("ward_audit_rollbacks_detected_total",
		"Times since unseal the stored audit log was found shorter than, or different from, what the authority had already seen.", nil, nil)
)

func (c *integrityCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keyRollbackDesc
	ch <- auditRollbackDesc
}

func (c *integrityCollector) Collect(ch chan<- prometheus.Metric) {
	var keys, logs float64
	if st, err := c.s.state(); err == nil {
		keys, logs = float64(st.kms.RollbacksDetected()), float64(st.audit.RollbacksDetected())
	}
	ch <- prometheus.MustNewConstMetric(keyRollbackDesc, prometheus.CounterValue, keys)
	ch <- prometheus.MustNewConstMetric(auditRollbackDesc, prometheus.CounterValue, logs)
}

// kmsError maps a KMS error to a gRPC status.
func kmsError(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Internal
	switch kms.KindOf(err) {
	case kms.KindInvalid:
		code = codes.InvalidArgument
	case kms.KindNotFound:
		code = codes.NotFound
	case kms.KindExists:
		code = codes.AlreadyExists
	case kms.KindPrecondition:
		code = codes.FailedPrecondition
	case kms.KindAuth:
		code = codes.PermissionDenied
	case kms.KindConflict:
		code = codes.Aborted
	case kms.KindUnavailable:
		code = codes.Unavailable
	case kms.KindRolledBack:
		code = codes.DataLoss
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(code, err.Error())
}

func itemError(err error) *wardv1.ItemError {
	if err == nil {
		return nil
	}
	s := status.Convert(kmsError(err))
	return &wardv1.ItemError{Code: s.Code().String(), Message: s.Message()}
}

func keyProto(v kms.View) *wardv1.Key {
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

type keysService struct {
	wardv1.UnimplementedKeysServer
	s *Server
}

func (k *keysService) CreateKey(ctx context.Context, r *wardv1.CreateKeyRequest) (*wardv1.Key, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	v, err := m.Create(ctx, r.Name, r.Classification, r.Purpose)
	if err != nil {
		return nil, kmsError(err)
	}
	return keyProto(v), nil
}

func (k *keysService) ListKeys(ctx context.Context, r *wardv1.ListKeysRequest) (*wardv1.ListKeysResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	vs, err := m.List(ctx, r.Prefix)
	if err != nil {
		return nil, kmsError(err)
	}
	out := &wardv1.ListKeysResponse{}
	for _, v := range vs {
		out.Keys = append(out.Keys, keyProto(v))
	}
	return out, nil
}

func (k *keysService) GetKey(ctx context.Context, r *wardv1.GetKeyRequest) (*wardv1.Key, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	v, err := m.Get(ctx, r.Name)
	if err != nil {
		return nil, kmsError(err)
	}
	return keyProto(v), nil
}

func (k *keysService) RotateKey(ctx context.Context, r *wardv1.RotateKeyRequest) (*wardv1.Key, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	v, err := m.Rotate(ctx, r.Name)
	if err != nil {
		return nil, kmsError(err)
	}
	return keyProto(v), nil
}

func (k *keysService) ConfigureKey(ctx context.Context, r *wardv1.ConfigureKeyRequest) (*wardv1.Key, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	if r.MinDecryptVersion == 0 {
		return nil, status.Error(codes.InvalidArgument, "nothing to configure: give --min-decrypt-version N")
	}
	v, err := m.SetMinDecryptVersion(ctx, r.Name, r.MinDecryptVersion)
	if err != nil {
		return nil, kmsError(err)
	}
	return keyProto(v), nil
}

func (k *keysService) SetVersionState(ctx context.Context, r *wardv1.SetVersionStateRequest) (*wardv1.Key, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, status.Error(codes.InvalidArgument, "give the version with --version N")
	}
	v, err := m.SetEnabled(ctx, r.Name, r.Version, r.Enabled)
	if err != nil {
		return nil, kmsError(err)
	}
	return keyProto(v), nil
}

func (k *keysService) DestroyVersion(ctx context.Context, r *wardv1.DestroyVersionRequest) (*wardv1.Key, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	if r.Version == 0 {
		return nil, status.Error(codes.InvalidArgument, "give the version with --version N")
	}
	v, err := m.Destroy(ctx, r.Name, r.Version)
	if err != nil {
		return nil, kmsError(err)
	}
	return keyProto(v), nil
}

func (k *keysService) ListClassifications(ctx context.Context, _ *wardv1.ListClassificationsRequest) (*wardv1.ListClassificationsResponse, error) {
	out := &wardv1.ListClassificationsResponse{}
	t := k.s.table
	for _, n := range t.Names() {
		c := t[n]
		out.Classifications = append(out.Classifications, &wardv1.Classification{
			Name: n, Algorithm: c.Algorithm.String(), RotationPeriod: durationpb.New(c.RotationPeriod), KeepVersions: c.KeepVersions,
		})
	}
	return out, nil
}

type kmsService struct {
	wardv1.UnimplementedKMSServer
	s *Server
}

func (k *kmsService) Encrypt(ctx context.Context, r *wardv1.EncryptRequest) (*wardv1.EncryptResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	ct, v, err := m.Encrypt(ctx, r.Key, r.Plaintext, r.Context)
	if err != nil {
		return nil, kmsError(err)
	}
	return &wardv1.EncryptResponse{Ciphertext: ct, KeyVersion: v}, nil
}

func (k *kmsService) Decrypt(ctx context.Context, r *wardv1.DecryptRequest) (*wardv1.DecryptResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	pt, h, err := m.Decrypt(ctx, r.Ciphertext, r.Context)
	if err != nil {
		return nil, kmsError(err)
	}
	return &wardv1.DecryptResponse{Plaintext: pt, Key: h.KeyName, KeyVersion: h.Version}, nil
}

func (k *kmsService) GenerateDataKey(ctx context.Context, r *wardv1.GenerateDataKeyRequest) (*wardv1.GenerateDataKeyResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	dk, err := m.GenerateDataKey(ctx, r.Key, r.Size, r.Context)
	if err != nil {
		return nil, kmsError(err)
	}
	out := &wardv1.GenerateDataKeyResponse{Wrapped: dk.Wrapped, KeyVersion: dk.Version}
	if !r.WrappedOnly {
		out.Plaintext = dk.Plaintext
	}
	return out, nil
}

func (k *kmsService) Rewrap(ctx context.Context, r *wardv1.RewrapRequest) (*wardv1.RewrapResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	ct, v, err := m.Rewrap(ctx, r.Ciphertext, r.Context)
	if err != nil {
		return nil, kmsError(err)
	}
	return &wardv1.RewrapResponse{Ciphertext: ct, KeyVersion: v}, nil
}

func (k *kmsService) BatchEncrypt(ctx context.Context, r *wardv1.BatchEncryptRequest) (*wardv1.BatchEncryptResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	items := make([]kms.Item, len(r.Items))
	for i, it := range r.Items {
		items[i] = kms.Item{Data: it.Plaintext, Context: it.Context}
	}
	res, err := m.BatchEncrypt(ctx, r.Key, items)
	if err != nil {
		return nil, kmsError(err)
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

func (k *kmsService) BatchDecrypt(ctx context.Context, r *wardv1.BatchDecryptRequest) (*wardv1.BatchDecryptResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	res, err := m.BatchDecrypt(ctx, decryptItems(r.Items))
	if err != nil {
		return nil, kmsError(err)
	}
	out := &wardv1.BatchDecryptResponse{Results: make([]*wardv1.PlaintextResult, len(res))}
	for i, x := range res {
		out.Results[i] = &wardv1.PlaintextResult{Plaintext: x.Data, Error: itemError(x.Err)}
	}
	return out, nil
}

func (k *kmsService) BatchRewrap(ctx context.Context, r *wardv1.BatchRewrapRequest) (*wardv1.BatchRewrapResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	res, err := m.BatchRewrap(ctx, decryptItems(r.Items))
	if err != nil {
		return nil, kmsError(err)
	}
	out := &wardv1.BatchRewrapResponse{Results: make([]*wardv1.CiphertextResult, len(res))}
	for i, x := range res {
		out.Results[i] = &wardv1.CiphertextResult{Ciphertext: x.Data, Error: itemError(x.Err)}
	}
	return out, nil
}

func (k *kmsService) BatchGenerateDataKey(ctx context.Context, r *wardv1.BatchGenerateDataKeyRequest) (*wardv1.BatchGenerateDataKeyResponse, error) {
	m, err := k.s.kmsManager()
	if err != nil {
		return nil, err
	}
	dks, err := m.BatchGenerateDataKey(ctx, r.Key, int(r.Count), r.Size, r.Context)
	if err != nil {
		return nil, kmsError(err)
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
