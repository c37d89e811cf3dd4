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
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	a := s.Addr

	// Sealed and uninitialised: key operations refuse with a clear error.
	r := Ward(t, a, "", "operator", "status")
	if r.Code != 2 || !strings.Contains(r.Stdout, "Initialized:") {
		t.Fatalf("status while sealed: exit %d, %s %s", r.Code, r.Stdout, r.Stderr)
	}
	r = Ward(t, a, "", "key", "list")
	if r.Code == 0 || !strings.Contains(r.Stderr, "sealed") {
		t.Fatalf("key list while sealed: exit %d stderr %q", r.Code, r.Stderr)
	}

	// The collector's settings are logged at start (docs/configuration.md#memory).
	if logs := s.Logs.String(); !strings.Contains(logs, `"msg":"garbage collector"`) ||
		(os.Getenv("GOMEMLIMIT") == "" && !regexp.MustCompile(`"memory_limit":"[0-9]+MiB","memory_limit_from":"[^"]+"`).MatchString(logs)) {
		t.Errorf("the start-up log lacks the garbage collector's memory limit:\n%s", logs)
	}

	shares := s.InitAndUnseal()
	r = Ward(t, a, "", "operator", "init")
	if r.Code == 0 || !strings.Contains(r.Stderr, "already") {
		t.Fatalf("second init: exit %d stderr %q", r.Code, r.Stderr)
	}
	out := MustWard(t, a, "", "operator", "status")
	for _, want := range []string{"Sealed:           false", "bbolt", "shamir"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	MustWard(t, a, "", "key", "create", "tenant-a/payments", "--classification", "confidential")
	r = Ward(t, a, "", "key", "create", "tenant-a/payments", "--classification", "confidential")
	if r.Code == 0 || !strings.Contains(r.Stderr, "already exists") {
		t.Fatalf("duplicate create: %d %q", r.Code, r.Stderr)
	}
	r = Ward(t, a, "", "key", "create", "x", "--classification", "secret")
	if r.Code == 0 || !strings.Contains(r.Stderr, "restricted") {
		t.Fatalf("bad classification: %d %q", r.Code, r.Stderr)
	}

	ct1 := MustWard(t, a, "card 4111", "kms", "encrypt", "--key", "tenant-a/payments", "--context", "tenant=a")
	if !strings.HasPrefix(ct1, "ward:v1:") {
		t.Fatalf("ciphertext form: %q", ct1)
	}
	if pt := MustWard(t, a, ct1, "kms", "decrypt", "--context", "tenant=a"); pt != "card 4111" {
		t.Fatalf("decrypt = %q", pt)
	}
	r = Ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=b")
	if r.Code == 0 || !strings.Contains(r.Stderr, "encryption context") || r.Stdout != "" {
		t.Fatalf("wrong context: %d %q %q", r.Code, r.Stdout, r.Stderr)
	}
	r = Ward(t, a, ct1[:len(ct1)-6]+"\n", "kms", "decrypt", "--context", "tenant=a")
	if r.Code == 0 || r.Stdout != "" {
		t.Fatalf("truncated ciphertext accepted: %d %q", r.Code, r.Stderr)
	}
	r = Ward(t, a, "ward:v1:bm90IGEgY2lwaGVydGV4dA==", "kms", "decrypt")
	if r.Code == 0 || !strings.Contains(r.Stderr, "magic") {
		t.Fatalf("garbage ciphertext: %d %q", r.Code, r.Stderr)
	}
	r = Ward(t, a, "x", "kms", "encrypt", "--key", "no/such-key")
	if r.Code == 0 || !strings.Contains(r.Stderr, "does not exist") {
		t.Fatalf("unknown key: %d %q", r.Code, r.Stderr)
	}

	MustWard(t, a, "", "key", "rotate", "tenant-a/payments")
	show := MustWard(t, a, "", "key", "show", "tenant-a/payments")
	if !regexp.MustCompile(`(?m)^2\s+active`).MatchString(show) || !regexp.MustCompile(`(?m)^1\s+decrypt-only`).MatchString(show) {
		t.Fatalf("key show after rotate:\n%s", show)
	}
	ct2 := MustWard(t, a, ct1, "kms", "rewrap", "--context", "tenant=a")
	if pt := MustWard(t, a, ct2, "kms", "decrypt", "--context", "tenant=a"); pt != "card 4111" {
		t.Fatalf("rewrapped decrypt = %q", pt)
	}
	MustWard(t, a, "", "key", "disable", "tenant-a/payments", "--version", "1")
	r = Ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	if r.Code == 0 || !strings.Contains(r.Stderr, "disabled") {
		t.Fatalf("disabled version: %d %q", r.Code, r.Stderr)
	}
	MustWard(t, a, "", "key", "enable", "tenant-a/payments", "--version", "1")
	MustWard(t, a, "", "key", "config", "tenant-a/payments", "--min-decrypt-version", "2")
	r = Ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	if r.Code == 0 || !strings.Contains(r.Stderr, "min-decrypt-version") {
		t.Fatalf("below min: %d %q", r.Code, r.Stderr)
	}
	MustWard(t, a, "", "key", "config", "tenant-a/payments", "--min-decrypt-version", "1")
	// destroy refuses without a terminal or --yes, and changes nothing.
	r = Ward(t, a, "", "key", "destroy", "tenant-a/payments", "--version", "1")
	if r.Code == 0 || !strings.Contains(r.Stderr, "--yes") {
		t.Fatalf("destroy without --yes: %d %q", r.Code, r.Stderr)
	}
	MustWard(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	out = MustWard(t, a, "", "key", "destroy", "tenant-a/payments", "--version", "1", "--yes")
	if !strings.Contains(out, "gone for good") {
		t.Fatalf("destroy output: %q", out)
	}
	r = Ward(t, a, ct1, "kms", "decrypt", "--context", "tenant=a")
	if r.Code == 0 || !strings.Contains(r.Stderr, "destroyed") {
		t.Fatalf("destroyed version: %d %q", r.Code, r.Stderr)
	}
	dk := MustWard(t, a, "", "kms", "datakey", "--key", "tenant-a/payments")
	if !strings.Contains(dk, `"plaintext"`) || !strings.Contains(dk, `"wrapped": "ward:v1:`) {
		t.Fatalf("datakey: %s", dk)
	}
	dk = MustWard(t, a, "", "kms", "datakey", "--key", "tenant-a/payments", "--wrapped-only")
	if strings.Contains(dk, `"plaintext"`) {
		t.Fatalf("wrapped-only datakey leaks plaintext: %s", dk)
	}

	// Audit: tail shows the operations, never the plaintext; verify passes;
	// a saved checkpoint proves consistency later.
	tail := MustWard(t, a, "", "audit", "tail", "-n", "1000")
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
	MustWard(t, a, "", "audit", "checkpoint", "-o", cp)
	MustWard(t, a, "more", "kms", "encrypt", "--key", "tenant-a/payments")
	v := MustWard(t, a, "", "audit", "verify", "--checkpoint", cp)
	if !strings.Contains(v, "OK") {
		t.Fatalf("audit verify: %s", v)
	}

	// Metrics and health.
	metrics := HTTPGet(t, s, "/metrics")
	for _, m := range []string{"ward_api_operations_total", "ward_api_operation_duration_seconds_bucket", "ward_sealed 0", "ward_key_age_seconds", "ward_audit_log_size"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	// Seal: everything stops; unseal with a wrong share, a repeated share.
	MustWard(t, a, "", "operator", "seal")
	if got := httpStatus(t, s, "/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz while sealed = %d", got)
	}
	r = Ward(t, a, ct2, "kms", "decrypt", "--context", "tenant=a")
	if r.Code == 0 || !strings.Contains(r.Stderr, "sealed") {
		t.Fatalf("decrypt while sealed: %d %q", r.Code, r.Stderr)
	}
	MustWard(t, a, shares[0]+"\n", "operator", "unseal")
	r = Ward(t, a, shares[0]+"\n", "operator", "unseal")
	if r.Code == 0 || !strings.Contains(r.Stderr, "already") {
		t.Fatalf("repeated share: %d %q", r.Code, r.Stderr)
	}
	bad := []byte(shares[1])
	bad[len(bad)-1] ^= 1
	if bad[len(bad)-1] > 'f' || (bad[len(bad)-1] > '9' && bad[len(bad)-1] < 'a') {
		bad[len(bad)-1] = '0'
	}
	r = Ward(t, a, string(bad)+"\n", "operator", "unseal")
	if r.Code == 0 {
		t.Fatalf("wrong share accepted: %q", r.Stdout)
	}
	r = Ward(t, a, "zzz\n", "operator", "unseal")
	if r.Code == 0 {
		t.Fatalf("malformed share accepted")
	}
	MustWard(t, a, shares[3]+"\n", "operator", "unseal")
	MustWard(t, a, shares[4]+"\n", "operator", "unseal")
	if got := httpStatus(t, s, "/readyz"); got != http.StatusOK {
		t.Errorf("/readyz after unseal = %d", got)
	}
	if pt := MustWard(t, a, ct2, "kms", "decrypt", "--context", "tenant=a"); pt != "card 4111" {
		t.Fatalf("after unseal decrypt = %q", pt)
	}
	MustWard(t, a, "", "audit", "verify", "--checkpoint", cp)

	// Restart comes back sealed.
	s.Stop()
	s.Start()
	r = Ward(t, a, "", "operator", "status")
	if r.Code != 2 {
		t.Fatalf("after restart status exit %d (want 2, sealed): %s", r.Code, r.Stdout)
	}
	s.Unseal(shares[2:5])
	MustWard(t, a, "", "audit", "verify", "--checkpoint", cp)
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
			r := Ward(t, "", "", "server", "--config", p)
			if r.Code == 0 || !strings.Contains(r.Stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want it to mention %q", r.Code, r.Stderr, c.want)
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
	s := StartServer(t, dir, WriteConfig(t, dir, ""))
	shares := s.InitAndUnseal()
	MustWard(t, s.Addr, "", "key", "create", "burst", "--classification", "internal")
	c := s.Client()

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
	s.Kill()
	stop.Store(true)
	wg.Wait()
	if successes.Load() == 0 {
		t.Fatal("no operation succeeded before the kill")
	}

	s.Start()
	s.Unseal(shares[:3])
	c2 := s.Client()
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
	out := MustWard(t, s.Addr, "", "audit", "verify")
	if !strings.Contains(out, "OK") {
		t.Fatalf("audit verify after crash: %s", out)
	}
	t.Logf("acked %d ciphertexts, max acked version %d, latest after restart %d", len(ackedCTs), maxAcked, k.LatestVersion)
}
