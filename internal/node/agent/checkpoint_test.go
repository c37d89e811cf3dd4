package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/testutil/authoritytest"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// newTestAuditLog is a log signed by key holding events from..from+n-1
// (the same events for the same numbers, so two logs agree on a prefix).
func newTestAuditLog(t testing.TB, key *ecdsa.PrivateKey, from, n int) *authoritytest.AuditLog {
	t.Helper()
	return authoritytest.NewAuditLog(t, key, "ward/agent.test").Append(t, from, n)
}

// addAuditCheckpoint fills a Sync response from src as nodeapi's Sync does.
func addAuditCheckpoint(t testing.TB, ctx context.Context, src interface {
	LatestCheckpoint(context.Context, uint64) (checkpoint.Checkpoint, crypto.PublicKey, error)
	ConsistencyProof(context.Context, uint64, uint64) ([][]byte, error)
}, known uint64, resp *wardv1.SyncResponse) {
	cp, pub, err := src.LatestCheckpoint(ctx, 0)
	if err != nil {
		t.Error(err)
		return
	}
	if known > 0 && known < cp.Size {
		if resp.AuditConsistencyProof, err = src.ConsistencyProof(ctx, known, cp.Size); err != nil {
			t.Error(err)
			return
		}
	}
	resp.AuditCheckpoint, _ = checkpoint.Encode(cp)
	resp.AuditPublicKeyPem, _ = checkpoint.MarshalPublicKeyPEM(pub)
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestAuditMemoryDetectsRollback: an agent that verified the authority's
// log at size 10 sees it truncated to an older copy, forked, replaced by a
// log that does not extend it, and re-keyed; each time it reports a
// rollback (counter, gauge, error log) and keeps its checkpoint, in memory
// and on disk. A genuine extension moves it forward again.
func TestAuditMemoryDetectsRollback(t *testing.T) {
	dir := t.TempDir()
	logs := &syncbuf.Buffer{}
	lg := slogTo(logs)
	m := openAuditMemory(dir, lg)
	key := newP256(t)
	ctx := context.Background()
	observe := func(src *authoritytest.AuditLog) {
		resp := &wardv1.SyncResponse{}
		addAuditCheckpoint(t, ctx, src, m.knownSize(), resp)
		m.observe(resp)
	}
	real := newTestAuditLog(t, key, 0, 10)
	observe(real)
	if m.knownSize() != 10 || m.alarm.Load() || m.rollbacks.Load() != 0 {
		t.Fatalf("first sight: size %d alarm %v rollbacks %d", m.knownSize(), m.alarm.Load(), m.rollbacks.Load())
	}
	path := filepath.Join(dir, auditCheckpointFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("remembered checkpoint file: %v %v", fi, err)
	}
	saved, _ := os.ReadFile(path)

	for i, tc := range []struct {
		name string
		src  *authoritytest.AuditLog
		want string
	}{
		{"older copy (truncated)", newTestAuditLog(t, key, 0, 7), "went backwards"},
		{"same size, other events", newTestAuditLog(t, key, 100, 10), "forked"},
		{"larger but not an extension", newTestAuditLog(t, key, 100, 15), "inconsistent"},
		{"another signing key", newTestAuditLog(t, newP256(t), 0, 12), "signing key changed"},
	} {
		observe(tc.src)
		if got := m.rollbacks.Load(); got != uint64(i+1) || !m.alarm.Load() {
			t.Fatalf("%s: rollbacks %d alarm %v", tc.name, got, m.alarm.Load())
		}
		if m.knownSize() != 10 {
			t.Fatalf("%s: the agent moved to size %d", tc.name, m.knownSize())
		}
		if now, _ := os.ReadFile(path); string(now) != string(saved) {
			t.Fatalf("%s: the remembered checkpoint file changed", tc.name)
		}
		if !strings.Contains(logs.String(), "level=ERROR msg=\"AUDIT LOG ROLLBACK") || !strings.Contains(logs.String(), tc.want) {
			t.Fatalf("%s: no error-level rollback report %q in:\n%s", tc.name, tc.want, logs.String())
		}
	}
	real.Append(t, 10, 5)
	observe(real)
	if m.knownSize() != 15 || m.alarm.Load() {
		t.Fatalf("genuine extension: size %d alarm %v", m.knownSize(), m.alarm.Load())
	}
	if again := openAuditMemory(dir, lg); again.knownSize() != 15 {
		t.Fatalf("reloaded memory has size %d", again.knownSize())
	}
	// A tampered file is reported and never overwritten.
	os.WriteFile(path, []byte(`{"checkpoint":{}}`), 0o600)
	ro := openAuditMemory(dir, lg)
	real.Append(t, 15, 1)
	resp := &wardv1.SyncResponse{}
	addAuditCheckpoint(t, ctx, real, ro.knownSize(), resp)
	ro.observe(resp)
	if b, _ := os.ReadFile(path); string(b) != `{"checkpoint":{}}` {
		t.Fatal("an unreadable checkpoint file was overwritten")
	}
}

// TestAgentReportsAuditRollback: the running agent sends its known size
// with every Sync and, when the authority's audit log is replaced by an
// older copy, reports the rollback on /metrics and keeps its checkpoint.
func TestAgentReportsAuditRollback(t *testing.T) {
	auth := newTestAuthority(t, testTD, time.Hour, time.Hour)
	key := newP256(t)
	real := newTestAuditLog(t, key, 0, 20)
	auth.setAuditLog(real)
	dir := t.TempDir()
	cfg := agentConfig(t, auth, dir)
	cfg.JoinToken = auth.joinToken()
	r := startAgent(t, cfg, nil)
	waitFor(t, "the agent to verify the audit checkpoint", func() bool { return r.audit.knownSize() == 20 })
	real.Append(t, 20, 3)
	waitFor(t, "the agent to follow the log", func() bool { return r.audit.knownSize() == 23 })

	auth.setAuditLog(newTestAuditLog(t, key, 0, 12)) // the authority restored an older copy
	waitFor(t, "the rollback to be reported", func() bool { return r.audit.rollbacks.Load() > 0 })
	if r.audit.knownSize() != 23 {
		t.Fatalf("the agent moved back to size %d", r.audit.knownSize())
	}
	body := scrapeMetrics(t, r.Agent)
	for _, want := range []string{"ward_agent_audit_log_rollback 1", "ward_agent_audit_checkpoint_size 23", "ward_agent_audit_log_rollback_total "} {
		if !strings.Contains(body, want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}
	if !strings.Contains(r.logs.String(), "AUDIT LOG ROLLBACK") {
		t.Fatal("no rollback in the agent's log")
	}
}

func slogTo(w *syncbuf.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// scrapeMetrics renders the agent's /metrics.
func scrapeMetrics(t testing.TB, a *Agent) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(a.met.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// FuzzAuditObserve: whatever the authority sends, the remembered
// checkpoint never moves backwards and only moves to a signed head.
func FuzzAuditObserve(f *testing.F) {
	key := newP256(f)
	src := newTestAuditLog(f, key, 0, 9)
	good := &wardv1.SyncResponse{}
	addAuditCheckpoint(f, context.Background(), src, 0, good)
	f.Add(good.AuditCheckpoint, good.AuditPublicKeyPem, []byte{})
	f.Add([]byte(`{"size":99}`), []byte("x"), []byte{1})
	dir := f.TempDir()
	seed := openAuditMemory(dir, slog.New(slog.DiscardHandler))
	seed.observe(good)
	saved, err := os.ReadFile(filepath.Join(dir, auditCheckpointFile))
	if err != nil || seed.knownSize() != 9 {
		f.Fatalf("seeding the memory: size %d, %v", seed.knownSize(), err)
	}
	f.Fuzz(func(t *testing.T, cp, pemKey, pr []byte) {
		os.WriteFile(filepath.Join(dir, auditCheckpointFile), saved, 0o600) // each input starts from the good checkpoint
		m := openAuditMemory(dir, slog.New(slog.DiscardHandler))
		before := m.knownSize()
		m.observe(&wardv1.SyncResponse{AuditCheckpoint: cp, AuditPublicKeyPem: pemKey, AuditConsistencyProof: [][]byte{pr}})
		if m.knownSize() < before {
			t.Fatalf("moved back from %d to %d", before, m.knownSize())
		}
		if m.knownSize() != before && m.rollbacks.Load() != 0 {
			t.Fatal("moved forward after reporting a rollback")
		}
		if again := openAuditMemory(dir, slog.New(slog.DiscardHandler)); again.knownSize() != m.knownSize() {
			t.Fatalf("the file remembers size %d, the memory %d", again.knownSize(), m.knownSize())
		}
	})
}
