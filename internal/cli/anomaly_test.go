package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/server"
	"github.com/wardproject/ward/internal/governance/anomaly"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// TestAnomalyWiring runs an authority with the detector wired as `ward
// server` wires it: a caller's first use of a restricted key and its
// decrypt burst become "anomaly.alert" audit events that `ward anomaly
// list` shows, and the detector's metrics are on the authority's registry.
func TestAnomalyWiring(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Server{TrustDomain: "cli.example.org", DataDir: dir, LogLevel: "warn",
		Seal:    config.Seal{Type: "keyfile", KeyFile: filepath.Join(dir, "seal.key")},
		KMS:     config.KMS{RotationCheckInterval: yamlconf.Duration(time.Minute)},
		Anomaly: config.Anomaly{LearningPeriod: yamlconf.Duration(time.Nanosecond), MinDecryptsPerMinute: 5}}
	cfg.Storage.Backend = "bbolt"
	cfg.Storage.Bbolt.Path = filepath.Join(dir, "ward.db")
	cfg.AdminSocket = filepath.Join(dir, "admin.sock")
	ctx := context.Background()
	raw, err := server.OpenStore(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	start := func() (*server.Server, func()) {
		sl, _ := server.OpenSeal(cfg)
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		srv, err := server.New(cfg, raw, sl, log)
		if err != nil {
			t.Fatal(err)
		}
		stop, err := wireAnomaly(srv, cfg.Anomaly, log)
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx); err != nil {
			t.Fatal(err)
		}
		return srv, func() { srv.Stop(); stop() }
	}
	srv, stop := start()
	t.Cleanup(func() { stop() })
	if err := srv.DevInit(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "vault/master", Classification: "restricted"}); err != nil {
		t.Fatal(err)
	}
	r, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "vault/master", Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		if _, err := c.Decrypt(ctx, r.Ciphertext, nil); err != nil {
			t.Fatal(err)
		}
	}
	var alerts []anomaly.Alert
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := ward(t, srv.AdminAddress(), "anomaly", "list", "--json")
		if err != nil {
			t.Fatal(err)
		}
		alerts = nil
		if err := json.Unmarshal([]byte(out), &alerts); err != nil {
			t.Fatalf("anomaly list --json: %v\n%s", err, out)
		}
		if len(alerts) >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	kinds := map[string]anomaly.Alert{}
	for _, a := range alerts {
		kinds[a.Kind] = a
	}
	first, burst := kinds[anomaly.KindRestrictedFirstUse], kinds[anomaly.KindDecryptBurst]
	if first.Key != "vault/master" || first.Operation != "kms.encrypt" || first.Classification != "restricted" || !strings.HasPrefix(first.Caller, "admin:uid=") {
		t.Errorf("first-use alert: %+v (all: %+v)", first, alerts)
	}
	if burst.Key != "vault/master" || burst.Observed <= 5 || burst.Threshold != 5 {
		t.Errorf("burst alert: %+v (all: %+v)", burst, alerts)
	}
	out, err := ward(t, srv.AdminAddress(), "anomaly", "list")
	if err != nil || !strings.Contains(out, "decrypt_burst") || !strings.Contains(out, "restricted_first_use") {
		t.Errorf("anomaly list: %v\n%s", err, out)
	}
	// The alert events themselves: actor system:anomaly, no context values.
	stream, err := c.Audit.Tail(ctx, &wardv1.TailAuditRequest{Last: 100})
	if err != nil {
		t.Fatal(err)
	}
	for {
		rec, err := stream.Recv()
		if err != nil {
			break
		}
		ev, _ := audit.DecodeEvent(rec.Leaf)
		if ev.Operation == anomaly.Operation {
			for k := range ev.Fields {
				if strings.HasPrefix(k, audit.ContextFieldPrefix) {
					t.Errorf("alert event holds %s", k)
				}
			}
			if ev.Actor != anomalyActor {
				t.Errorf("alert event by %q", ev.Actor)
			}
		}
	}
	mfs, err := srv.Registerer().(prometheus.Gatherer).Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "ward_anomaly_alerts_total" {
			found = true
		}
	}
	if !found {
		t.Error("ward_anomaly_alerts_total not on the authority's registry")
	}

	// A restarted authority primes its detector from the log: the caller
	// it knew uses the restricted key again with no new first-use alert,
	// while a new key's first use still alerts (the detector is live).
	c.Close()
	stop()
	srv, stop = start()
	if srv.Sealed() {
		t.Skip("the keyfile seal did not auto-unseal on restart")
	}
	c, err = client.Dial(srv.AdminAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Decrypt(ctx, r.Ciphertext, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: "vault/second", Classification: "restricted"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: "vault/second", Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var after []anomaly.Alert
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err := ward(t, srv.AdminAddress(), "anomaly", "list", "--json", "-n", "0")
		if err != nil {
			t.Fatal(err)
		}
		after = nil
		if err := json.Unmarshal([]byte(out), &after); err != nil {
			t.Fatal(err)
		}
		done := false
		for _, a := range after {
			done = done || a.Key == "vault/second"
		}
		if done || time.Now().After(deadline) {
			break
		}
	}
	var firstUses []string
	for _, a := range after {
		if a.Kind == anomaly.KindRestrictedFirstUse {
			firstUses = append(firstUses, a.Key)
		}
	}
	if strings.Join(firstUses, " ") != "vault/master vault/second" || len(after) != len(alerts)+1 {
		t.Errorf("first-use alerts after the restart on %v, want vault/master (before) and vault/second (after) only, and no other new alert (the burst's cooldown is restored from the log); all: %+v", firstUses, after)
	}
}
