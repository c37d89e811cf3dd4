package k8s

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"k8s.io/apiserver/pkg/storage/value"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsservice "k8s.io/kms/pkg/service"
)

// TestAPIServerEnvelopeTransformerWithWardPlugin drives ward's plugin with
// the apiserver's own KMS v2 code: its gRPC client (kmsv2.NewGRPCService)
// and its envelope transformer, exactly as kube-apiserver wires them, over
// a real ward authority. Objects written under version 1 still read after
// `ward key rotate`, through a transformer with an empty DEK cache (so the
// plugin's Decrypt is called), and the new seed is under version 2.
func TestAPIServerEnvelopeTransformerWithWardPlugin(t *testing.T) {
	dir := t.TempDir()
	a := startAuthority(t, filepath.Join(dir, "authority"))
	a.ward("", "key", "create", "k8s/etcd", "--classification", "confidential")
	p := startPlugin(t, a, dir, "k8s/etcd", "interop")
	ctx := context.Background()

	svc, err := kmsv2.NewGRPCService(ctx, "unix://"+p.socket, "ward", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, err := svc.Status(ctx)
	if err != nil || st.Healthz != "ok" || st.Version != "v2" {
		t.Fatalf("status %+v %v", st, err)
	}
	if _, err := kmsv2.ValidateKeyID(st.KeyID); err != nil || st.KeyID != "ward:k8s/etcd:1" {
		t.Fatalf("key_id %q: %v", st.KeyID, err)
	}

	write1, obj1 := transformerFor(t, svc, st.KeyID)
	dataCtx := value.DefaultContext("/registry/secrets/default/s1")
	plain := []byte("top-secret-value-1")
	stored1, err := write1.TransformToStorage(ctx, plain, dataCtx)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(stored1, plain) {
		t.Fatal("plaintext in the stored form")
	}
	if obj1.KeyID != "ward:k8s/etcd:1" || len(obj1.Annotations) != 0 {
		t.Fatalf("encrypted object: key_id %q annotations %v", obj1.KeyID, obj1.Annotations)
	}
	var decoded kmstypes.EncryptedObject
	if err := proto.Unmarshal(stored1, &decoded); err != nil {
		t.Fatalf("stored form: %v", err)
	}
	if err := kmsv2.ValidateEncryptedObject(&decoded); err != nil {
		t.Fatalf("the apiserver rejects what ward's plugin returned: %v", err)
	}

	a.ward("", "key", "rotate", "k8s/etcd")
	st2 := waitStatus(t, p.kmsClient(t), "key_id version 2", func(h, id string) bool { return h == "ok" && id == "ward:k8s/etcd:2" })
	write2, obj2 := transformerFor(t, svc, st2.KeyId)
	if obj2.KeyID != "ward:k8s/etcd:2" {
		t.Fatalf("new seed under %q", obj2.KeyID)
	}
	plain2 := []byte("top-secret-value-2")
	stored2, err := write2.TransformToStorage(ctx, plain2, dataCtx)
	if err != nil {
		t.Fatal(err)
	}

	// A fresh transformer (empty DEK cache, like a restarted apiserver)
	// reads both: the plugin decrypts version 1 and version 2 seeds.
	fresh, _ := transformerFor(t, svc, st2.KeyId)
	for _, c := range []struct{ stored, want []byte }{{stored1, plain}, {stored2, plain2}} {
		got, stale, err := fresh.TransformFromStorage(ctx, c.stored, dataCtx)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("read back: %q, %v", got, err)
		}
		if bytes.Equal(c.want, plain) && !stale {
			t.Error("an object under the old key_id is not reported stale (the apiserver's storage migration relies on it)")
		}
	}

	// Tampering with the key_id the apiserver stored is refused.
	_, err = svc.Decrypt(ctx, "uid", &kmsservice.DecryptRequest{Ciphertext: obj1.EncryptedDEKSource, KeyID: "ward:k8s/etcd:2"})
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key_id: %v", err)
	}
}

// transformerFor makes a write DEK seed through svc and returns the
// apiserver's envelope transformer over it, as its KMS v2 state machine
// does, and the encrypted object it stores with every value.
func transformerFor(t *testing.T, svc kmsservice.Service, statusKeyID string) (value.Transformer, *kmstypes.EncryptedObject) {
	t.Helper()
	ctx := context.Background()
	tr, obj, cacheKey, err := kmsv2.GenerateTransformer(ctx, "test-uid", svc, true)
	if err != nil {
		t.Fatal(err)
	}
	state := kmsv2.State{
		Transformer:                           tr,
		EncryptedObjectKeyID:                  obj.KeyID,
		EncryptedObjectEncryptedDEKSource:     obj.EncryptedDEKSource,
		EncryptedObjectAnnotations:            obj.Annotations,
		EncryptedObjectEncryptedDEKSourceType: obj.EncryptedDEKSourceType,
		UID:                                   "test-uid",
		ExpirationTimestamp:                   time.Now().Add(3 * time.Minute),
		CacheKey:                              cacheKey,
		KMSProviderName:                       "ward",
	}
	if obj.KeyID != statusKeyID {
		t.Fatalf("Encrypt's key_id %q differs from Status's %q", obj.KeyID, statusKeyID)
	}
	return kmsv2.NewEnvelopeTransformer(svc, "ward", func() (kmsv2.State, error) { return state, nil }, "apiserver-test"), obj
}
