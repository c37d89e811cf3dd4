package k8s

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

// BenchmarkPlugin measures KMS v2 Encrypt and Decrypt as the apiserver
// makes them: the k8s.io/kms gRPC client over the plugin's unix socket,
// the plugin, the admin socket and a real authority (audited, on bbolt).
// It reports p50 and p99 per call; the apiserver allows 3 s.
//
//	cd test/k8s && go test -run '^$' -bench BenchmarkPlugin -benchtime 2000x
func BenchmarkPlugin(b *testing.B) {
	dir := b.TempDir()
	a := startAuthority(b, filepath.Join(dir, "authority"))
	a.ward("", "key", "create", "k8s/etcd", "--classification", "confidential")
	p := startPlugin(b, a, dir, "k8s/etcd", "bench")
	c := p.kmsClient(b)
	ctx := context.Background()
	seed := make([]byte, 32)
	enc, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "bench"})
	if err != nil {
		b.Fatal(err)
	}

	b.Run("Encrypt", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "bench"}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportPercentiles(b, lat)
	})
	b.Run("Decrypt", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			if _, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "bench"}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportPercentiles(b, lat)
	})
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(at(0.50), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

// BenchmarkSecretsWrite: Secrets created per second through a real
// kube-apiserver whose EncryptionConfiguration writes with ward's plugin,
// with no encryption (identity) and with aescbc, in the same run, from 8
// concurrent clients. KMS v2 calls the plugin once per DEK seed, not per
// write, so ward should cost about what aescbc does.
//
//	cd test/k8s && go test -run '^$' -bench BenchmarkSecretsWrite -benchtime 2000x
func BenchmarkSecretsWrite(b *testing.B) {
	bin := kubeAPIServer(b)
	dir := b.TempDir()
	a := startAuthority(b, filepath.Join(dir, "authority"))
	a.ward("", "key", "create", "k8s/etcd", "--classification", "confidential")
	p := startPlugin(b, a, dir, "k8s/etcd", "bench")
	aesKey := make([]byte, 32)
	rand.Read(aesKey)
	configs := []struct{ name, enc string }{
		{"ward", ""},
		{"identity", "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - identity: {}\n"},
		{"aescbc", "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aescbc:\n          keys:\n            - name: k1\n              secret: " + base64.StdEncoding.EncodeToString(aesKey) + "\n"},
	}
	for _, c := range configs {
		b.Run(c.name, func(b *testing.B) {
			etcd := etcdtest.Start(b)
			var api *apiServer
			if c.name == "ward" {
				api = startAPIServer(b, bin, filepath.Join(dir, "apiserver-"+c.name), etcd, p.socket)
			} else {
				api = startAPIServerEncrypting(b, bin, filepath.Join(dir, "apiserver-"+c.name), etcd, c.enc)
			}
			cfg := rest.CopyConfig(api.cfg)
			cfg.QPS, cfg.Burst = 1e6, 1e6
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				b.Fatal(err)
			}
			secrets := cs.CoreV1().Secrets("default")
			ctx := context.Background()
			// One write first: the plugin's first DEK seed is made outside the timing.
			if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "warm"}, StringData: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			var n atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					name := fmt.Sprintf("s-%d", n.Add(1))
					if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, StringData: map[string]string{"password": name}}, metav1.CreateOptions{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(n.Load())/time.Since(start).Seconds(), "secrets/s")
		})
	}
}

// BenchmarkWebhookAdmission: AdmissionReviews of a Pod posted over HTTPS
// to `ward webhook` (its SVID, verified against ward's bundle), one
// connection kept alive as the apiserver does; p50 and p99 per review.
//
//	cd test/k8s && go test -run '^$' -bench BenchmarkWebhookAdmission -benchtime 5000x
func BenchmarkWebhookAdmission(b *testing.B) {
	_, _, bundle, port, _ := startWebhookStack(b, b.TempDir(), "enforce")
	pem, err := os.ReadFile(bundle)
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}}
	review := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"payments","operation":"CREATE","object":{"metadata":{"name":"p","namespace":"payments"},"spec":{"serviceAccountName":"api","containers":[{"name":"app","image":"example.org/app:1"}]}}}}`)
	url := "https://localhost:" + port + "/validate/confidential"
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		resp, err := hc.Post(url, "application/json", bytes.NewReader(review))
		if err != nil {
			b.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"allowed":true`)) {
			b.Fatalf("HTTP %d: %s", resp.StatusCode, body)
		}
		lat = append(lat, time.Since(t0))
	}
	reportPercentiles(b, lat)
}
