package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wardproject/ward/test/e2e"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/testutil/etcdtest"
	"github.com/wardproject/ward/internal/testutil/otheruid"
)

// etcdConfig writes a config for an authority on etcd (mutual TLS) under
// prefix.
func etcdConfig(t *testing.T, dir string, e *etcdtest.Server, prefix string) string {
	t.Helper()
	ca, cert, key := e.ClientCertFiles()
	return e2e.WriteConfig(t, dir, fmt.Sprintf("storage:\n  backend: etcd\n  etcd:\n    endpoints: [%s]\n    prefix: %q\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n",
		e.Endpoints()[0], prefix, ca, cert, key))
}

// kmsLoad runs encrypt/decrypt calls against s until stopped; it counts
// calls and failures.
type kmsLoad struct {
	stop          chan struct{}
	wg            sync.WaitGroup
	calls, failed atomic.Int64
	mu            sync.Mutex
	firstFailure  error
}

func startKMSLoad(t *testing.T, s *e2e.Server, key string, workers int) *kmsLoad {
	l := &kmsLoad{stop: make(chan struct{})}
	c := s.Client()
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				pt := []byte(fmt.Sprintf("load %d/%d", w, i))
				r, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: key, Plaintext: pt})
				if err == nil {
					_, err = c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: r.Ciphertext})
				}
				cancel()
				l.calls.Add(1)
				if err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if l.firstFailure == nil {
						l.firstFailure = err
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

func (l *kmsLoad) end(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if l.failed.Load() > 0 {
		t.Fatalf("%d of %d KMS calls under load failed; first: %v", l.failed.Load(), l.calls.Load(), l.firstFailure)
	}
	t.Logf("%d KMS calls under load, none failed", l.calls.Load())
}

// canaries encrypts a few plaintexts and returns ciphertext → plaintext.
func canaries(t *testing.T, s *e2e.Server, key string) map[string]string {
	t.Helper()
	c := s.Client()
	out := map[string]string{}
	for i := range 3 {
		pt := fmt.Sprintf("canary %d made before the backup", i)
		r, err := c.KMS.Encrypt(context.Background(), &wardv1.EncryptRequest{Key: key, Plaintext: []byte(pt), Context: map[string]string{"drill": "backup"}})
		if err != nil {
			t.Fatal(err)
		}
		out[string(r.Ciphertext)] = pt
	}
	return out
}

func decryptCanaries(t *testing.T, s *e2e.Server, cs map[string]string) {
	t.Helper()
	c := s.Client()
	for ct, pt := range cs {
		var r *wardv1.DecryptResponse
		var err error
		// Unavailable is retried (bounded): an authority on etcd refuses
		// calls until its HA lease is first renewed after the unseal.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			r, err = c.KMS.Decrypt(context.Background(), &wardv1.DecryptRequest{Ciphertext: []byte(ct), Context: map[string]string{"drill": "backup"}})
			if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("decrypting a ciphertext made before the backup: %v", err)
		}
		if string(r.Plaintext) != pt {
			t.Fatalf("decrypted %q, want %q", r.Plaintext, pt)
		}
	}
}

// auditEvents returns the stored JSON of the newest n events.
func auditEvents(t *testing.T, s *e2e.Server, n int) []map[string]any {
	t.Helper()
	out := e2e.MustWard(t, s.Addr, "", "audit", "tail", "--json", "-n", fmt.Sprint(n))
	var evs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit tail line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func hasEvent(evs []map[string]any, op, result string) map[string]any {
	for _, ev := range evs {
		if ev["operation"] == op && ev["result"] == result {
			return ev
		}
	}
	return nil
}

// TestBackupRestoreDrill is docs/backup.md's runbook with real processes:
// back up a bbolt authority under a load of KMS calls, refuse altered
// copies, destroy the data, restore onto etcd, unseal with the original
// shares, decrypt ciphertexts made before the backup, prove the restored
// audit log extends the backup's checkpoint; back up the etcd authority
// and restore it onto bbolt again. Then, on the last one: a rejected share
// is kept across a SIGKILL while sealed, a barrier rotation rewrites every
// value under a load of KMS calls, and a rekey replaces the shares (old ones refused).
func TestBackupRestoreDrill(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.WithTLS())
	root := t.TempDir()

	// A: bbolt.
	dirA := filepath.Join(root, "a")
	os.MkdirAll(dirA, 0o700)
	a := e2e.StartServer(t, dirA, e2e.WriteConfig(t, dirA, ""))
	shares := a.InitAndUnseal()
	e2e.MustWard(t, a.Addr, "", "key", "create", "drill/payments", "--classification", "confidential")
	e2e.MustWard(t, a.Addr, "", "key", "rotate", "drill/payments")
	cs := canaries(t, a, "drill/payments")

	load := startKMSLoad(t, a, "drill/payments", 4)
	time.Sleep(300 * time.Millisecond)
	file := filepath.Join(root, "a.wbk")
	out := e2e.MustWard(t, a.Addr, "", "operator", "backup", "create", "-o", file)
	time.Sleep(300 * time.Millisecond)
	load.end(t)
	t.Logf("backup: %s", out)
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", st, err)
	}
	if matches, _ := filepath.Glob(filepath.Join(root, ".a.wbk.tmp-*")); len(matches) != 0 {
		t.Fatalf("temporary files left: %v", matches)
	}
	backupAsOtherUID(t, a, root)
	cpFile := filepath.Join(root, "backup-cp.json")
	// Nothing trusted names the signing key (no --public-key, nothing
	// remembered): refused, unless --skip-key-check, which warns.
	noState := []string{"--state-dir", filepath.Join(root, "no-state")}
	for _, sub := range [][]string{{"verify", file}, {"restore", file, "--data-dir", filepath.Join(root, "never")}} {
		r := e2e.Ward(t, "", "", append(append([]string{"operator", "backup"}, sub...), noState...)...)
		if r.Code == 0 || !strings.Contains(r.Stderr, "was not checked") || !strings.Contains(r.Stderr, "--public-key") || !strings.Contains(r.Stderr, "ward audit verify") {
			t.Fatalf("backup %s without a trusted key: exit %d\n%s%s", sub[0], r.Code, r.Stdout, r.Stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "never")); !os.IsNotExist(err) {
		t.Fatalf("a restore refused for its unchecked key left %s behind", filepath.Join(root, "never"))
	}
	r := e2e.Ward(t, "", "", append([]string{"operator", "backup", "verify", file, "--checkpoint-out", cpFile, "--skip-key-check"}, noState...)...)
	if r.Code != 0 || !strings.Contains(r.Stdout, "is intact") || !strings.Contains(r.Stderr, "WARNING: --skip-key-check") {
		t.Fatalf("verify --skip-key-check: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}

	// One altered byte anywhere is refused with the reason.
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for name, off := range map[string]int{"header": 3, "manifest": 40, "payload": len(data) / 2, "last byte": len(data) - 1} {
		bad := append([]byte(nil), data...)
		bad[off] ^= 0x20
		p := filepath.Join(root, "altered.wbk")
		os.WriteFile(p, bad, 0o600)
		r := e2e.Ward(t, "", "", "operator", "backup", "verify", p)
		if r.Code == 0 || !strings.Contains(r.Stderr, "backup refused") {
			t.Fatalf("%s altered: exit %d\n%s%s", name, r.Code, r.Stdout, r.Stderr)
		}
		t.Logf("%s altered: %s", name, strings.TrimSpace(r.Stderr))
		r = e2e.Ward(t, "", "", "operator", "backup", "restore", p, "--data-dir", filepath.Join(root, "never"))
		if r.Code == 0 {
			t.Fatalf("restore of an altered backup succeeded")
		}
		if _, err := os.Stat(filepath.Join(root, "never")); !os.IsNotExist(err) {
			t.Fatalf("a refused restore left %s behind", filepath.Join(root, "never"))
		}
	}

	// Destroy A's data.
	a.Kill()
	if err := os.Remove(filepath.Join(dirA, "ward.db")); err != nil {
		t.Fatal(err)
	}

	// B: restore onto etcd, unseal with other original shares.
	ca, cert, key := etcd.ClientCertFiles()
	etcdFlags := []string{"--etcd-endpoints", etcd.Endpoints()[0], "--etcd-prefix", "/drill-b/", "--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key}
	e2e.MustWard(t, "", "", append([]string{"operator", "backup", "restore", file, "--skip-key-check"}, etcdFlags...)...)
	r = e2e.Ward(t, "", "", append([]string{"operator", "backup", "restore", file, "--skip-key-check"}, etcdFlags...)...)
	if r.Code == 0 || !strings.Contains(r.Stderr, "not empty") || !strings.Contains(r.Stderr, "nothing was changed") {
		t.Fatalf("restore into a non-empty prefix: exit %d %s", r.Code, r.Stderr)
	}
	dirB := filepath.Join(root, "b")
	os.MkdirAll(dirB, 0o700)
	b := e2e.StartServer(t, dirB, etcdConfig(t, dirB, etcd, "/drill-b/"))
	b.Unseal(shares[2:5])
	decryptCanaries(t, b, cs)
	out = e2e.MustWard(t, b.Addr, "", "audit", "verify", "--checkpoint", cpFile)
	t.Logf("audit verify on the restored etcd authority: %s", out)

	forgedBackupRefused(t, root, file, e2e.StateDirFor(b.Addr))

	// C: back up B (etcd) and restore onto bbolt.
	fileB := filepath.Join(root, "b.wbk")
	e2e.MustWard(t, b.Addr, "", "operator", "backup", "create", "-o", fileB)
	cpB := filepath.Join(root, "b-cp.json")
	e2e.MustWard(t, "", "", "operator", "backup", "verify", fileB, "--checkpoint-out", cpB, "--skip-key-check")
	if hasEvent(auditEvents(t, b, 5), "operator.backup", "ok") == nil {
		t.Fatal("the backup of B is not in B's audit log")
	}
	b.Stop()
	dirC := filepath.Join(root, "c")
	e2e.MustWard(t, "", "", "operator", "backup", "restore", fileB, "--data-dir", dirC, "--skip-key-check")
	c := e2e.StartServer(t, dirC, e2e.WriteConfig(t, dirC, ""))

	// While sealed: a rejected share, then SIGKILL: the event survives.
	bogus := "00" + shares[0][2:]
	if bogus == shares[0] { // its first byte was 00 already (1 in 256)
		bogus = "ff" + shares[0][2:]
	}
	r = e2e.Ward(t, c.Addr, bogus+"\n", "operator", "unseal")
	if r.Code == 0 {
		t.Fatal("a bogus share was accepted")
	}
	c.Kill()
	c.Start()
	c.Unseal(shares[:3])
	decryptCanaries(t, c, cs)
	e2e.MustWard(t, c.Addr, "", "audit", "verify", "--checkpoint", cpB)
	e2e.MustWard(t, c.Addr, "", "audit", "verify", "--checkpoint", cpFile)
	evs := auditEvents(t, c, 50)
	ev := hasEvent(evs, "operator.unseal", "error")
	if ev == nil {
		t.Fatalf("the share rejected while sealed, before a SIGKILL, is not in the audit log: %v", evs)
	}
	if f, _ := ev["fields"].(map[string]any); f["journal"] != "sealed" {
		t.Fatalf("the rejected share's event: %v", ev)
	}

	// Barrier rotation: every value moves to term 2; data still readable.
	load = startKMSLoad(t, c, "drill/payments", 4)
	out = e2e.MustWard(t, c.Addr, "", "operator", "rotate")
	load.end(t)
	if !strings.Contains(out, "Rewrite to term 2: done") {
		t.Fatalf("rotate: %s", out)
	}
	decryptCanaries(t, c, cs)
	fileC := filepath.Join(root, "c.wbk")
	e2e.MustWard(t, c.Addr, "", "operator", "backup", "create", "-o", fileC)
	var man struct {
		Terms map[string]int64 `json:"barrier_terms"`
	}
	if err := json.Unmarshal([]byte(e2e.MustWard(t, "", "", "operator", "backup", "verify", fileC, "--json", "--skip-key-check")), &man); err != nil {
		t.Fatal(err)
	}
	if len(man.Terms) != 1 || man.Terms["2"] == 0 {
		t.Fatalf("values per barrier term after the rotation: %v", man.Terms)
	}
	evs = auditEvents(t, c, 5000)
	if hasEvent(evs, "operator.rotate", "ok") == nil || hasEvent(evs, "operator.rotate.rewrite", "ok") == nil {
		t.Fatalf("rotation not audited: %v", evs)
	}

	// Rekey: 3 old shares, new 3/2; the old shares stop working.
	out = e2e.MustWard(t, c.Addr, "", "operator", "rekey", "--shares", "3", "--threshold", "2", "--json")
	var rk struct {
		Nonce string `json:"nonce"`
	}
	json.Unmarshal([]byte(out), &rk)
	if rk.Nonce == "" {
		t.Fatalf("rekey start: %s", out)
	}
	r = e2e.Ward(t, c.Addr, bogus+"\n", "operator", "rekey", "--nonce", rk.Nonce)
	if r.Code == 0 {
		t.Fatal("a bogus share counted towards the rekey")
	}
	var newShares []string
	for _, sh := range shares[1:4] {
		out = e2e.MustWard(t, c.Addr, sh+"\n", "operator", "rekey", "--nonce", rk.Nonce)
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "New unseal share "); ok {
				_, s, _ := strings.Cut(v, ": ")
				newShares = append(newShares, strings.TrimSpace(s))
			}
		}
	}
	if len(newShares) != 3 {
		t.Fatalf("rekey gave %d new shares: %s", len(newShares), out)
	}
	e2e.MustWard(t, c.Addr, "", "operator", "seal")
	r = e2e.Ward(t, c.Addr, shares[0]+"\n", "operator", "unseal")
	if r.Code == 0 || !strings.Contains(r.Stderr, "not one of the shares") {
		t.Fatalf("an old share after the rekey: exit %d %s", r.Code, r.Stderr)
	}
	c.Unseal(newShares[:2])
	decryptCanaries(t, c, cs)
	if hasEvent(auditEvents(t, c, 30), "operator.rekey", "ok") == nil {
		t.Fatal("the rekey is not in the audit log")
	}
}

// backupAsOtherUID is the attack of another local user: run `ward operator
// backup create` and `rotate` against the authority's admin socket as
// uid 41005. The socket (0600, in a 0700 directory) refuses the
// connection: no backup file, no rotation. Needs root (skipped otherwise,
// except under CI=true).
func backupAsOtherUID(t *testing.T, s *e2e.Server, root string) {
	t.Helper()
	if !otheruid.Available(t) {
		t.Log("skipping the other-uid attack: needs root")
		return
	}
	const uid = 41005
	dir, err := os.MkdirTemp("", "ward-e2e-otheruid-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	bin := filepath.Join(dir, "ward")
	b, err := os.ReadFile(e2e.WardBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "stolen.wbk")
	for _, args := range [][]string{{"operator", "backup", "create", "-o", out}, {"operator", "rotate", "--no-wait"}, {"operator", "rekey", "--status"}} {
		cmd := otheruid.Command(uid, bin, append([]string{"--address", s.Addr}, args...)...)
		cmd.Env = []string{"HOME=" + dir, "WARD_STATE_DIR=" + dir}
		res, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("uid %d ran ward %v against the admin socket:\n%s", uid, args, res)
		}
		t.Logf("uid %d: ward %s: %s", uid, strings.Join(args, " "), strings.TrimSpace(string(res)))
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("another uid got a backup file: %v", err)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, ".stolen*")); len(matches) != 0 {
		t.Fatalf("another uid got a partial backup: %v", matches)
	}
}

// forgedBackupRefused: a backup made by another authority of the same
// trust domain (its own audit key: what a forger with write access to the
// backup store could make) verifies on its own, but is refused against
// the real authority's key, given with --public-key or remembered by the
// CLI from `ward audit verify` (stateDir).
func forgedBackupRefused(t *testing.T, root, genuine, stateDir string) {
	t.Helper()
	dir := filepath.Join(root, "forger")
	os.MkdirAll(dir, 0o700)
	f := e2e.StartServer(t, dir, e2e.WriteConfig(t, dir, fmt.Sprintf("seal:\n  type: keyfile\n  key_file: %s\n", filepath.Join(dir, "seal.key"))))
	e2e.MustWard(t, f.Addr, "", "operator", "init", "--shares", "0", "--threshold", "0")
	forged := filepath.Join(root, "forged.wbk")
	e2e.MustWard(t, f.Addr, "", "operator", "backup", "create", "-o", forged)
	f.Stop()
	e2e.MustWard(t, "", "", "operator", "backup", "verify", forged, "--state-dir", t.TempDir(), "--skip-key-check")

	var man struct {
		PublicKey string `json:"public_key"`
	}
	if err := json.Unmarshal([]byte(e2e.MustWard(t, "", "", "operator", "backup", "verify", genuine, "--json", "--skip-key-check")), &man); err != nil {
		t.Fatal(err)
	}
	pem := filepath.Join(root, "audit.pem")
	os.WriteFile(pem, []byte(man.PublicKey), 0o600)
	e2e.MustWard(t, "", "", "operator", "backup", "verify", genuine, "--public-key", pem)
	for _, args := range [][]string{{"--public-key", pem}, {"--state-dir", stateDir}} {
		r := e2e.Ward(t, "", "", append([]string{"operator", "backup", "verify", forged}, args...)...)
		if r.Code == 0 || !strings.Contains(r.Stderr, "another authority") {
			t.Fatalf("a forged backup with %v: exit %d %s", args, r.Code, r.Stderr)
		}
		t.Logf("forged backup, %s: %s", args[0], strings.TrimSpace(r.Stderr))
		r = e2e.Ward(t, "", "", append([]string{"operator", "backup", "restore", forged, "--data-dir", filepath.Join(root, "never")}, args...)...)
		if r.Code == 0 {
			t.Fatalf("a forged backup was restored with %v", args)
		}
	}
}
