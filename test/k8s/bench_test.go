package k8s

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"
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
