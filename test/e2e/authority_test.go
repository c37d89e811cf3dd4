package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

func TestAuthorityTourThroughTheCLI(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, writeConfig(t, dir, ""))
	a := s.addr

	// Sealed and uninitialised: key operations refuse with a clear error.
	r := ward(t, a, "", "operator", "status")
	if r.code != 2 || !strings.Contains(r.stdout, "Initialized:") {
		t.Fatalf("status while sealed: exit %d, %s %s", r.code, r.stdout, r.stderr)
	}
	r = ward(t, a, "", "key", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "sealed") {
		t.Fatalf("key list while sealed: exit %d stderr %q", r.code, r.stderr)
	}

	shares := s.initAndUnseal()
	r = ward(t, a, "", "operator", "init")
	if r.code == 0 || !strings.Contains(r.stderr, "already") {
		t.Fatalf("second init: exit %d stderr %q", r.code, r.stderr)
	}
	out := mustWard(t, a, "", "operator", "status")
	for _, want := range []string{"Sealed:           false", "bbolt", "shamir"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	mustWard(t, a, "", "key", "create", "tenant-a/payments", "--classification", "confidential")
	r = ward(t, a, "", "key", "create", "tenant-a/payments", "--classification", "confidential")
	if r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("duplicate create: %d %q", r.code, r.stderr)
	}
	r = ward(t, a, "", "key", "create", "x", "--classification", "secret")
	if r.code == 0 || !strings.Contains(r.stderr, "restricted") {
		t.Fatalf("bad classification: %d %q", r.code, r.stderr)
	}

	ct1 := mustWard(t, a, "card 4111", "kms", "encrypt", "--key", "tenant-a/payments", "--context", "tenant=a")
	if !strings.HasPrefix(ct1, "ward:v1:") {
		t.Fatalf("ciphertext form: %q", ct1)
	}
	if pt := mustWard(t, a, ct1, "kms", "decrypt", "--context", "tenant=a"); pt != "card 4111" {
		t.Fatalf("decrypt = %q", pt)
	}
	r = ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=b")
	if r.code == 0 || !strings.Contains(r.stderr, "encryption context") || r.stdout != "" {
		t.Fatalf("wrong context: %d %q %q", r.code, r.stdout, r.stderr)
	}
	r = ward(t, a, ct1[:len(ct1)-6]+"\n", "kms", "decrypt", "--context", "tenant=a")
	if r.code == 0 || r.stdout != "" {
		t.Fatalf("truncated ciphertext accepted: %d %q", r.code, r.stderr)
	}
	r = ward(t, a, "ward:v1:bm90IGEgY2lwaGVydGV4dA==", "kms", "decrypt")
	if r.code == 0 || !strings.Contains(r.stderr, "magic") {
		t.Fatalf("garbage ciphertext: %d %q", r.code, r.stderr)
	}
	r = ward(t, a, "x", "kms", "encrypt", "--key", "no/such-key")
	if r.code == 0 || !strings.Contains(r.stderr, "does not exist") {
		t.Fatalf("unknown key: %d %q", r.code, r.stderr)
	}

	mustWard(t, a, "", "key", "rotate", "tenant-a/payments")
	show := mustWard(t, a, "", "key", "show", "tenant-a/payments")
	if !regexp.MustCompile(`(?m)^2\s+active`).MatchString(show) || !regexp.MustCompile(`(?m)^1\s+decrypt-only`).MatchString(show) {
		t.Fatalf("key show after rotate:\n%s", show)
	}
	ct2 := mustWard(t, a, ct1, "kms", "rewrap", "--context", "tenant=a")
	if pt := mustWard(t, a, ct2, "kms", "decrypt", "--context", "tenant=a"); pt != "card 4111" {
		t.Fatalf("rewrapped decrypt = %q", pt)
	}
	mustWard(t, a, "", "key", "disable", "tenant-a/payments", "--version", "1")
	r = ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	if r.code == 0 || !strings.Contains(r.stderr, "disabled") {
		t.Fatalf("disabled version: %d %q", r.code, r.stderr)
	}
	mustWard(t, a, "", "key", "enable", "tenant-a/payments", "--version", "1")
	mustWard(t, a, "", "key", "config", "tenant-a/payments", "--min-decrypt-version", "2")
	r = ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	if r.code == 0 || !strings.Contains(r.stderr, "min-decrypt-version") {
		t.Fatalf("below min: %d %q", r.code, r.stderr)
	}
	mustWard(t, a, "", "key", "config", "tenant-a/payments", "--min-decrypt-version", "1")
	// destroy refuses without a terminal or --yes, and changes nothing.
	r = ward(t, a, "", "key", "destroy", "tenant-a/payments", "--version", "1")
	if r.code == 0 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("destroy without --yes: %d %q", r.code, r.stderr)
	}
	mustWard(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	out = mustWard(t, a, "", "key", "destroy", "tenant-a/payments", "--version", "1", "--yes")
	if !strings.Contains(out, "gone for good") {
		t.Fatalf("destroy output: %q", out)
	}
	r = ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	if r.code == 0 || !strings.Contains(r.stderr, "destroyed") {
		t.Fatalf("destroyed version: %d %q", r.code, r.stderr)
	}
	dk := mustWard(t, a, "", "kms", "datakey", "--key", "tenant-a/payments")
	if !strings.Contains(dk, `"plaintext"`) || !strings.Contains(dk, `"wrapped": "ward:v1:`) {
		t.Fatalf("datakey: %s", dk)
	}
	dk = mustWard(t, a, "", "kms", "datakey", "--key", "tenant-a/payments", "--wrapped-only")
	if strings.Contains(dk, `"plaintext"`) {
		t.Fatalf("wrapped-only datakey leaks plaintext: %s", dk)
	}

	// Audit: tail shows the operations, never the plaintext; verify passes;
	// a saved checkpoint proves consistency later.
	tail := mustWard(t, a, "", "audit", "tail", "-n", "1000")
	for _, op := range []string{"operator.init", "operator.unseal", "key.create", "kms.encrypt", "kms.decrypt", "key.rotate", "key.destroy", "kms.datakey"} {
		if !strings.Contains(tail, op) {
			t.Errorf("audit tail lacks %s", op)
		}
	}
	if strings.Contains(tail, "card 4111") || strings.Contains(tail, "tenant=a") || strings.Contains(tail, "context.tenant=a") {
		t.Fatalf("audit tail leaks plaintext or a context value:\n%s", tail)
	}
	if !strings.Contains(tail, fmt.Sprintf("admin:uid=%d", os.Getuid())) {
		t.Errorf("admin actions should name the caller's uid (SO_PEERCRED):\n%s", tail)
	}
	if !strings.Contains(tail, "context.tenant=hmac-sha256:") {
		t.Errorf("context values should appear as HMACs:\n%s", tail)
	}
	cp := filepath.Join(dir, "cp.json")
	mustWard(t, a, "", "audit", "checkpoint", "-o", cp)
	mustWard(t, a, "more", "kms", "encrypt", "--key", "tenant-a/payments")
	v := mustWard(t, a, "", "audit", "verify", "--checkpoint", cp)
	if !strings.Contains(v, "OK") {
		t.Fatalf("audit verify: %s", v)
	}

	// Metrics and health.
	metrics := httpGet(t, s, "/metrics")
	for _, m := range []string{"ward_api_operations_total", "ward_api_operation_duration_seconds_bucket", "ward_sealed 0", "ward_key_age_seconds", "ward_audit_log_size"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	// Seal: everything stops; unseal with a wrong share, a repeated share.
	mustWard(t, a, "", "operator", "seal")
	if got := httpStatus(t, s, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while sealed = %d", got)
	}
	r = ward(t, a, ct2, "kms", "decrypt", "--context", "tenant=a")
	if r.code == 0 || !strings.Contains(r.stderr, "sealed") {
		t.Fatalf("decrypt while sealed: %d %q", r.code, r.stderr)
	}
	mustWard(t, a, shares[0]+"\n", "operator", "unseal")
	r = ward(t, a, shares[0]+"\n", "operator", "unseal")
	if r.code == 0 || !strings.Contains(r.stderr, "already") {
		t.Fatalf("repeated share: %d %q", r.code, r.stderr)
	}
	bad := []byte(shares[1])
	bad[len(bad)-1] ^= 1
	if bad[len(bad)-1] > 'f' || (bad[len(bad)-1] > '9' && bad[len(bad)-1] < 'a') {
		bad[len(bad)-1] = '0'
	}
	r = ward(t, a, string(bad)+"\n", "operator", "unseal")
	if r.code == 0 {
		t.Fatalf("wrong share accepted: %q", r.stdout)
	}
	r = ward(t, a, "zzz\n", "operator", "unseal")
	if r.code == 0 {
		t.Fatalf("malformed share accepted")
	}
	mustWard(t, a, shares[3]+"\n", "operator", "unseal")
	mustWard(t, a, shares[4]+"\n", "operator", "unseal")
	if got := httpStatus(t, s, "/readyz"); got != http.StatusOK {
		t.Errorf("/readyz after unseal = %d", got)
	}
	if pt := mustWard(t, a, ct2, "kms", "decrypt", "--context", "tenant=a"); pt != "card 4111" {
		t.Fatalf("after unseal decrypt = %q", pt)
	}
	mustWard(t, a, "", "audit", "verify", "--checkpoint", cp)

	// Restart comes back sealed.
	s.stop()
	s.start()
	r = ward(t, a, "", "operator", "status")
	if r.code != 2 {
		t.Fatalf("after restart status exit %d (want 2, sealed): %s", r.code, r.stdout)
	}
	s.unseal(shares[2:5])
	mustWard(t, a, "", "audit", "verify", "--checkpoint", cp)
}

func TestMalformedConfigs(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown field", "trust_domain: a.org\ndata_dir: /tmp/x\nstorge: {}\n", "storge"},
		{"no trust domain", "data_dir: /tmp/x\n", "trust_domain is required"},
		{"bad trust domain", "trust_domain: Bad_Domain!\ndata_dir: /tmp/x\n", "trust domain"},
		{"bad backend", "trust_domain: a.org\ndata_dir: /tmp/x\nstorage: {backend: mysql}\n", "bbolt or etcd"},
		{"etcd without endpoints", "trust_domain: a.org\ndata_dir: /tmp/x\nstorage: {backend: etcd}\n", "endpoints"},
		{"bad duration", "trust_domain: a.org\ndata_dir: /tmp/x\nkms: {rotation_check_interval: soon}\n", "bad duration"},
		{"bad seal", "trust_domain: a.org\ndata_dir: /tmp/x\nseal: {type: hsm-please}\n", "shamir, keyfile or pkcs11"},
		{"not yaml", "{{{", "invalid YAML"},
		{"empty", "", "empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			p := filepath.Join(dir, "ward.yaml")
			os.WriteFile(p, []byte(strings.ReplaceAll(c.yaml, "/tmp/x", data)), 0o600)
			r := ward(t, "", "", "server", "--config", p)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want it to mention %q", r.code, r.stderr, c.want)
			}
			if _, err := os.Stat(data); err == nil {
				t.Fatalf("a rejected config still created the data directory")
			}
		})
	}
}

// TestKillDuringBurst kills the server with SIGKILL in the middle of a
// burst of rotations and encryptions: after restart and unseal no
// acknowledged key version is missing, every acknowledged ciphertext
// decrypts, and the audit log verifies.
func TestKillDuringBurst(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, writeConfig(t, dir, ""))
	shares := s.initAndUnseal()
	mustWard(t, s.addr, "", "key", "create", "burst", "--classification", "internal")
	c := s.client()

	var (
		mu        sync.Mutex
		maxAcked  uint32
		ackedCTs  [][]byte
		stop      atomic.Bool
		wg        sync.WaitGroup
		successes atomic.Int64
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 100000; i++ {
				if w == 0 && i%3 == 0 {
					k, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: "burst"})
					if err != nil {
						return
					}
					mu.Lock()
					maxAcked = max(maxAcked, k.LatestVersion)
					mu.Unlock()
					successes.Add(1)
					continue
				}
				r, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "burst", Plaintext: []byte(fmt.Sprintf("%d-%d", w, i))})
				if err != nil {
					return
				}
				mu.Lock()
				ackedCTs = append(ackedCTs, r.Ciphertext)
				mu.Unlock()
				successes.Add(1)
			}
		}(w)
	}
	// Let the burst run, then kill mid-flight (bounded wait).
	deadline := time.Now().Add(20 * time.Second)
	for successes.Load() < 300 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	s.kill()
	stop.Store(true)
	wg.Wait()
	if successes.Load() == 0 {
		t.Fatal("no operation succeeded before the kill")
	}

	s.start()
	s.unseal(shares[:3])
	c2 := s.client()
	k, err := c2.Keys.GetKey(context.Background(), &wardv1.GetKeyRequest{Name: "burst"})
	if err != nil {
		t.Fatal(err)
	}
	if k.LatestVersion < maxAcked {
		t.Fatalf("acknowledged version %d missing after restart: latest is %d", maxAcked, k.LatestVersion)
	}
	for i, ct := range ackedCTs {
		pt, err := c2.KMS.Decrypt(context.Background(), &wardv1.DecryptRequest{Ciphertext: ct})
		if err != nil {
			t.Fatalf("acknowledged ciphertext %d of %d no longer decrypts: %v", i, len(ackedCTs), err)
		}
		if !bytes.Contains(pt.Plaintext, []byte("-")) {
			t.Fatalf("odd plaintext %q", pt)
		}
	}
	out := mustWard(t, s.addr, "", "audit", "verify")
	if !strings.Contains(out, "OK") {
		t.Fatalf("audit verify after crash: %s", out)
	}
	t.Logf("acked %d ciphertexts, max acked version %d, latest after restart %d", len(ackedCTs), maxAcked, k.LatestVersion)
}
