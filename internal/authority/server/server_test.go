package server

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/shared/yamlconf"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
)

// start runs an in-process authority for cfg and returns a client.
func start(t *testing.T, cfg *config.Server) (*Server, *client.Client) {
	return startB(t, cfg)
}

func startB(t testing.TB, cfg *config.Server) (*Server, *client.Client) {
	t.Helper()
	return startWith(t, cfg, nil)
}

// startWith is startB with before called on the server before Start (to
// wire what the CLI wires).
func startWith(t testing.TB, cfg *config.Server, before func(*Server)) (*Server, *client.Client) {
	t.Helper()
	ctx := context.Background()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(cfg.DataDir, 0o700)
	raw, err := OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	sl, err := OpenSeal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(cfg, raw, sl, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(srv)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		srv.Stop()
		raw.Close()
	})
	return srv, c
}

func baseConfig(dir string) *config.Server {
	c := &config.Server{TrustDomain: "test.example.org", DataDir: dir, LogLevel: "info",
		Seal: config.Seal{Type: "keyfile", KeyFile: filepath.Join(filepath.Dir(dir), "seal.key")},
		KMS:  config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute)}}
	c.Storage.Backend = "bbolt"
	c.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	c.AdminSocket = filepath.Join(dir, "admin.sock")
	return c
}

// exercise creates keys, rotates and encrypts, returning secrets that must
// never appear in storage: key names, plaintexts and data keys.
func exercise(t *testing.T, c *client.Client) [][]byte {
	t.Helper()
	ctx := context.Background()
	names := []string{"tenant-a/payments", "tenant-b/medical-records"}
	secrets := [][]byte{}
	for _, n := range names {
		if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: n, Classification: "confidential"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: n}); err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, []byte(n))
		pt := []byte("plaintext-for-" + n)
		if _, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: n, Plaintext: pt, Context: map[string]string{"owner": "alice-the-owner"}}); err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, pt)
		dk, err := c.KMS.GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: n})
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, dk.Plaintext)
	}
	secrets = append(secrets, []byte("alice-the-owner"))
	return secrets
}

func assertAbsent(t *testing.T, where string, raw []byte, secrets [][]byte) {
	t.Helper()
	for _, s := range secrets {
		if bytes.Contains(raw, s) {
			t.Errorf("%s contains %q in the clear", where, s)
		}
	}
}

func TestNothingReachesBboltInTheClear(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	cfg := baseConfig(dir)
	srv, c := start(t, cfg)
	if _, err := c.Operator.Init(context.Background(), &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	if srv.Sealed() {
		t.Fatal("keyfile seal should auto-unseal after init")
	}
	secrets := exercise(t, c)
	srv.Stop()
	raw, err := os.ReadFile(cfg.Storage.Bbolt.Path)
	if err != nil {
		t.Fatal(err)
	}
	assertAbsent(t, "the bbolt file", raw, secrets)
	for _, marker := range []string{"kms.encrypt", "confidential", "classification"} {
		if bytes.Contains(raw, []byte(marker)) {
			t.Errorf("the bbolt file contains %q: audit events or key records are not encrypted", marker)
		}
	}
}

func TestTwoAuthoritiesOnOneEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.WithTLS())
	caFile, certFile, keyFile := etcd.ClientCertFiles()
	root := t.TempDir()
	mk := func(name string) *config.Server {
		c := baseConfig(filepath.Join(root, name))
		c.Storage.Backend = "etcd"
		c.Storage.Etcd = config.Etcd{Endpoints: etcd.Endpoints(), Prefix: "/ward/test/", CAFile: caFile, CertFile: certFile, KeyFile: keyFile,
			DialTimeout: yamlconf.Duration(5 * time.Second)}
		return c
	}
	ctx := context.Background()
	srvA, a := start(t, mk("a"))
	if _, err := a.Operator.Init(ctx, &wardv1.InitRequest{}); err != nil {
		t.Fatal(err)
	}
	// B shares the key file seal, so it unseals itself from the same etcd.
	srvB, b := start(t, mk("b"))
	if srvA.Sealed() || srvB.Sealed() {
		t.Fatal("both authorities should be unsealed")
	}
	secrets := exercise(t, a)

	// B sees A's keys and rotations, and decrypts A's ciphertexts.
	ct, err := a.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "tenant-a/payments", Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct.Ciphertext}); err != nil {
		t.Fatalf("B cannot decrypt A's ciphertext: %v", err)
	}
	if _, err := b.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: "tenant-a/payments"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := a.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "tenant-a/payments", Plaintext: []byte("y")})
		if err != nil {
			t.Fatal(err)
		}
		if r.KeyVersion == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A still encrypts with version %d after B rotated to 3", r.KeyVersion)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ka, _ := a.Keys.ListKeys(ctx, &wardv1.ListKeysRequest{})
	kb, _ := b.Keys.ListKeys(ctx, &wardv1.ListKeysRequest{})
	if len(ka.Keys) != 2 || len(kb.Keys) != 2 {
		t.Fatalf("key lists differ: A %d, B %d", len(ka.Keys), len(kb.Keys))
	}
	// Both append to one audit log: it stays one consistent tree.
	cpA, err := a.Audit.Checkpoint(ctx, &wardv1.CheckpointRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cpA.Checkpoint) == 0 {
		t.Fatal("no checkpoint")
	}

	// The raw etcd keyspace holds no key names, plaintexts or data keys.
	cli, err := clientv3.New(clientv3.Config{Endpoints: etcd.Endpoints(), TLS: etcd.ClientTLS(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) < 5 {
		t.Fatalf("only %d keys in etcd: is ward writing to it?", len(resp.Kvs))
	}
	var all bytes.Buffer
	for _, kv := range resp.Kvs {
		all.Write(kv.Key)
		all.Write(kv.Value)
	}
	assertAbsent(t, "the etcd keyspace", all.Bytes(), secrets)
}
