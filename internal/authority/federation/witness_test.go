package federation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/errs"
)

// switchSource serves an audit log that a test can swap for another (the
// attacker's rolled back, forked or re-keyed log) or tamper with.
type switchSource struct {
	mu     sync.Mutex
	log    *audit.Log
	prover *audit.Prover
	tamper func(*checkpoint.Checkpoint)
}

func (s *switchSource) use(l *audit.Log, tamper func(*checkpoint.Checkpoint)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log, s.prover, s.tamper = l, audit.NewProver(l), tamper
}

func (s *switchSource) LatestCheckpoint(ctx context.Context, _ uint64) (checkpoint.Checkpoint, crypto.PublicKey, error) {
	s.mu.Lock()
	l, tamper := s.log, s.tamper
	s.mu.Unlock()
	cp, err := l.Head(ctx)
	if err == nil && tamper != nil {
		tamper(&cp)
	}
	return cp, l.PublicKey(), err
}

func (s *switchSource) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([][]byte, error) {
	s.mu.Lock()
	p := s.prover
	s.mu.Unlock()
	return p.ConsistencyProof(ctx, oldSize, newSize)
}

// newAuditLog is an audit log of origin ward/<td> signed by key with n
// events whose operations are tagged with salt.
func newAuditLog(t *testing.T, key *ecdsa.PrivateKey, td spiffeid.TrustDomain, n int, salt string) *audit.Log {
	t.Helper()
	l, err := audit.Open(context.Background(), memstore.New(), key, Origin(td))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	appendEvents(t, l, n, salt)
	return l
}

func appendEvents(t *testing.T, l *audit.Log, n int, salt string) {
	t.Helper()
	for range n {
		if _, err := l.Append(context.Background(), audit.NewEvent(context.Background(), "test."+salt, audit.ResultOK)); err != nil {
			t.Fatal(err)
		}
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// witnessAuth is one authority of a witness pair: its CA, store, audit
// log (served through src), Manager and bundle endpoint.
type witnessAuth struct {
	td      spiffeid.TrustDomain
	ca      *ca.CA
	st      *memstore.Store
	aud     *auditLog
	key     *ecdsa.PrivateKey
	log     *audit.Log
	src     *switchSource
	m       *Manager
	ep      *Endpoint
	refused atomic.Value
}

func (w *witnessAuth) open(t *testing.T) *Manager {
	t.Helper()
	m, err := Open(context.Background(), Options{Store: w.st, TrustDomain: w.td, Audit: audit.RecorderFunc(w.aud.append),
		FetchTimeout: 5 * time.Second, Signer: w.key, OwnLog: w.src})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (w *witnessAuth) witness(t *testing.T, of *witnessAuth) (WitnessStatus, error) {
	t.Helper()
	return w.m.Witness(context.Background(), of.td, serverSVID(t, w.ca))
}

// newWitnessPair is authorities A and B, federated both ways over their
// https_spiffe endpoints, each serving its audit log (A's has 3 events).
func newWitnessPair(t *testing.T) (a, b *witnessAuth) {
	t.Helper()
	mk := func(td spiffeid.TrustDomain) *witnessAuth {
		w := &witnessAuth{td: td, ca: newCA(t, td), st: memstore.New(), aud: &auditLog{}, key: newKey(t), src: &switchSource{}}
		w.log = newAuditLog(t, w.key, td, 3, "a")
		w.src.use(w.log, nil)
		w.m = w.open(t)
		ep, err := NewEndpoint(EndpointConfig{CA: w.ca, Address: "127.0.0.1:0", Peers: w.m, Checkpoints: w.src,
			Cosignatures:     func(td spiffeid.TrustDomain) *checkpoint.Cosignature { return w.m.CosignatureOf(td) },
			OnWitnessRefused: func(r string) { w.refused.Store(r) }})
		if err != nil {
			t.Fatal(err)
		}
		if err := ep.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ep.Stop)
		w.ep = ep
		return w
	}
	a, b = mk(tdA), mk(tdB)
	for _, p := range [][2]*witnessAuth{{a, b}, {b, a}} {
		in, of := p[0], p[1]
		rel := Relationship{TrustDomain: of.td, EndpointURL: "https://" + of.ep.Addr(ProfileSPIFFE).String() + "/", Profile: ProfileSPIFFE,
			EndpointID: spiffeid.RequireFromPath(of.td, "/ward/server")}
		if _, err := in.m.Add(context.Background(), rel, bundleOf(t, of.ca)); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

func countOps(a *auditLog, op string) int {
	n := 0
	for _, o := range a.ops() {
		if o == op {
			n++
		}
	}
	return n
}

func gather(t *testing.T, m *Manager) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(func() *Manager { return m }))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]float64{}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range mm.GetLabel() {
				if l.GetName() == "reason" || l.GetName() == "result" {
					name += "{" + l.GetValue() + "}"
				}
			}
			seen[name] = mm.GetGauge().GetValue() + mm.GetCounter().GetValue()
		}
	}
	return seen
}

func TestWitnessCosignsAndDeliversCosignatures(t *testing.T) {
	a, b := newWitnessPair(t)
	st, err := b.witness(t, a)
	if err != nil {
		t.Fatal(err)
	}
	if st.Checkpoint == nil || st.Checkpoint.Size != 3 || st.KeyID != st.Checkpoint.KeyID || st.Alert != nil || st.PinnedAt.IsZero() {
		t.Fatalf("first round: %+v", st)
	}
	if n := countOps(b.aud, "federation.witness:ok"); n != 1 {
		t.Fatalf("pinning A's key audited %d times: %v", n, b.aud.ops())
	}
	// A's log grows: the next round proves consistency from size 3.
	appendEvents(t, a.log, 5, "b")
	if st, err = b.witness(t, a); err != nil || st.Checkpoint.Size != 8 {
		t.Fatalf("second round: %+v %v", st, err)
	}
	cs := b.m.CosignatureOf(tdA)
	if cs == nil || cs.Checkpoint.Size != 8 || cs.Witness != "b.example" || checkpoint.VerifyCosignature(*cs, b.key.Public()) != nil {
		t.Fatalf("B's cosignature of A: %+v", cs)
	}
	if n := countOps(b.aud, "federation.witness:ok"); n != 1 {
		t.Fatalf("routine rounds audited: %v", b.aud.ops())
	}
	// A witnesses B and receives, in the same answer, B's cosignature on
	// its own log, verified with B's key pinned by that round.
	if _, err := a.witness(t, b); err != nil {
		t.Fatal(err)
	}
	got := a.m.Cosignatures()
	if len(got) != 1 || got[0].TrustDomain != tdB || got[0].Cosignature.Checkpoint.Size != 8 {
		t.Fatalf("A's received cosignatures: %+v", got)
	}
	bPub, err := checkpoint.ParsePublicKeyPEM(got[0].PublicKeyPEM)
	if err != nil || checkpoint.VerifyCosignature(got[0].Cosignature, bPub) != nil {
		t.Fatalf("A's copy of B's key does not verify B's cosignature: %v", err)
	}
	if sh, _ := a.m.Show(tdB); sh.Witness.CosignedByPeer == nil || sh.Witness.CosignedByPeer.Checkpoint.Size != 8 {
		t.Fatalf("show in A: %+v", sh.Witness)
	}
	if got := gather(t, b.m); got["ward_federation_witness_size"] != 8 || got["ward_federation_witness_error"] != 0 || got["ward_federation_witness_rounds_total{ok}"] != 2 {
		t.Fatalf("metrics of B: %v", got)
	}
	// Restarted: what was witnessed and received stays (behind the
	// barrier: the store).
	b2 := b.open(t)
	if st := b2.Witnessed(tdA); st.Checkpoint == nil || st.Checkpoint.Size != 8 || st.KeyID != st.Checkpoint.KeyID {
		t.Fatalf("B after a restart: %+v", st)
	}
	if got := a.open(t).Cosignatures(); len(got) != 1 {
		t.Fatalf("A after a restart: %+v", got)
	}
}

// Every way A's log can fail to extend what B witnessed raises an alert
// in B that stays: through a good answer afterwards and a restart.
func TestWitnessAlerts(t *testing.T) {
	for _, tc := range []struct {
		name, reason string
		attack       func(t *testing.T, a *witnessAuth) *audit.Log
	}{
		{"rolled back to fewer events", AlertWentBackwards, func(t *testing.T, a *witnessAuth) *audit.Log {
			return newAuditLog(t, a.key, tdA, 5, "a")
		}},
		{"forked at the same size", AlertForked, func(t *testing.T, a *witnessAuth) *audit.Log {
			return newAuditLog(t, a.key, tdA, 8, "fork")
		}},
		{"a larger log with another history", AlertInconsistent, func(t *testing.T, a *witnessAuth) *audit.Log {
			return newAuditLog(t, a.key, tdA, 12, "fork")
		}},
		{"signed by another key", AlertKeyChanged, func(t *testing.T, a *witnessAuth) *audit.Log {
			return newAuditLog(t, newKey(t), tdA, 12, "a")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newWitnessPair(t)
			appendEvents(t, a.log, 5, "b")
			if _, err := b.witness(t, a); err != nil {
				t.Fatal(err)
			}
			a.src.use(tc.attack(t, a), nil)
			st, err := b.witness(t, a)
			var al *alertError
			if err == nil || !errors.As(err, &al) || st.Alert == nil || st.Alert.Reason != tc.reason {
				t.Fatalf("attack: %+v, %v", st.Alert, err)
			}
			t.Logf("%s: %v", tc.name, err)
			if st.Checkpoint.Size != 8 {
				t.Fatalf("the witnessed checkpoint moved: %+v", st.Checkpoint)
			}
			if n := countOps(b.aud, "federation.witness:error"); n != 1 {
				t.Fatalf("alert audited %d times: %v", n, b.aud.ops())
			}
			if w := strings.Join(b.m.Warnings(), "\n"); !strings.Contains(w, "AUDIT WITNESS ALERT for a.example") {
				t.Fatalf("no health warning: %q", w)
			}
			if got := gather(t, b.m); got["ward_federation_witness_alert{"+tc.reason+"}"] != 1 || got["ward_federation_witness_error"] != 1 {
				t.Fatalf("metrics: %v", got)
			}
			// The good log again, and a restart: the alert stays.
			a.src.use(a.log, nil)
			st, err = b.witness(t, a)
			if err == nil || st.Alert == nil || st.Alert.Count != 1 {
				t.Fatalf("a good answer cleared the alert: %+v %v", st.Alert, err)
			}
			b2 := b.open(t)
			if st := b2.Witnessed(tdA); st.Alert == nil || st.Alert.Reason != tc.reason || st.Alert.Remembered == nil || st.Alert.Remembered.Size != 8 {
				t.Fatalf("after a restart: %+v", st.Alert)
			}
			if n := countOps(b.aud, "federation.witness:error"); n != 1 {
				t.Fatalf("alert audited again: %v", b.aud.ops())
			}
			// Removing the relationship is the way to start over.
			if err := b2.Remove(context.Background(), tdA); err != nil {
				t.Fatal(err)
			}
			if st := b2.Witnessed(tdA); st.Alert != nil || st.Checkpoint != nil {
				t.Fatalf("after remove: %+v", st)
			}
		})
	}
}

// Answers that are not evidence of anything (forged, of another log,
// oversized) are refused: no alert, nothing witnessed changes.
func TestWitnessRefusesBadAnswers(t *testing.T) {
	a, b := newWitnessPair(t)
	if _, err := b.witness(t, a); err != nil {
		t.Fatal(err)
	}
	for name, use := range map[string]func(){
		"a forged signature": func() {
			appendEvents(t, a.log, 2, "c")
			a.src.use(a.log, func(cp *checkpoint.Checkpoint) { cp.Signature[len(cp.Signature)/2] ^= 1 })
		},
		"a checkpoint of another log": func() {
			a.src.use(newAuditLog(t, a.key, spiffeid.RequireTrustDomainFromString("c.example"), 9, "a"), nil)
		},
	} {
		use()
		st, err := b.witness(t, a)
		if err == nil || errs.KindOf(err) != errs.Denied || st.Alert != nil || st.Checkpoint.Size != 3 {
			t.Errorf("%s: %+v, %v", name, st, err)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	if n := countOps(b.aud, "federation.witness:denied"); n != 2 {
		t.Fatalf("refusals audited %d times: %v", n, b.aud.ops())
	}
	if got := gather(t, b.m); got["ward_federation_witness_rounds_total{refused}"] != 2 {
		t.Fatalf("metrics: %v", got)
	}

	// An oversized answer from a peer's endpoint.
	f := newFixture(t)
	f.m.opts.Signer = newKey(t)
	if _, err := f.m.Add(context.Background(), f.rel(f.fakeU), bundleOf(t, f.a)); err != nil {
		t.Fatal(err)
	}
	big := make([][]byte, 100)
	for i := range big {
		big[i] = make([]byte, 1024)
	}
	ans, _ := json.Marshal(WitnessAnswer{Consistency: big})
	f.fake.serve(200, ans)
	st, err := f.m.Witness(context.Background(), tdA, serverSVID(t, newCA(t, tdB)))
	if err == nil || !strings.Contains(err.Error(), "limit") || st.Checkpoint != nil {
		t.Fatalf("oversized answer: %+v %v", st, err)
	}
}

func TestWitnessRefusesClients(t *testing.T) {
	a, b := newWitnessPair(t)
	tdC := spiffeid.RequireTrustDomainFromString("c.example")
	url := "https://" + a.ep.Addr(ProfileSPIFFE).String() + WitnessPath
	get := func(svid func() (*x509svid.SVID, error)) (int, string) {
		t.Helper()
		id := spiffeid.RequireFromPath(tdA, "/ward/server")
		tc := tlsconfig.TLSClientConfig(bundleOf(t, a.ca), tlsconfig.AuthorizeID(id))
		if svid != nil {
			tc = tlsconfig.MTLSClientConfig(svidFunc(svid), bundleOf(t, a.ca), tlsconfig.AuthorizeID(id))
		}
		cl := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 10 * time.Second}
		resp, err := cl.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		name   string
		svid   func() (*x509svid.SVID, error)
		code   int
		reason string
	}{
		{"anonymous", nil, 401, "no_client_certificate"},
		{"a trust domain A does not federate with", serverSVID(t, newCA(t, tdC)), 403, "not_federated"},
		{"a workload of B, not its server", workloadSVID(t, b.ca, "/web"), 403, "not_a_server"},
		{"A's own server", serverSVID(t, a.ca), 403, "not_federated"},
	} {
		code, body := get(tc.svid)
		if code != tc.code || a.refused.Load() != tc.reason {
			t.Errorf("%s: %d %s (reason %v)", tc.name, code, body, a.refused.Load())
		}
		if strings.Contains(body, "root_hash") {
			t.Errorf("%s: got a checkpoint: %s", tc.name, body)
		}
	}
	code, body := get(serverSVID(t, b.ca))
	var ans WitnessAnswer
	if code != 200 || json.Unmarshal([]byte(body), &ans) != nil || ans.Checkpoint.Size != 3 || ans.Checkpoint.Origin != "ward/a.example" {
		t.Fatalf("B's server: %d %s", code, body)
	}
}

// A's own log rolled back behind what B cosigned: A finds out from B's
// cosignature (kept behind A's barrier) at its next round.
func TestWitnessOwnLogBehindCosignature(t *testing.T) {
	a, b := newWitnessPair(t)
	appendEvents(t, a.log, 5, "b")
	if _, err := b.witness(t, a); err != nil {
		t.Fatal(err)
	}
	if _, err := a.witness(t, b); err != nil {
		t.Fatal(err)
	}
	if st := a.m.Witnessed(tdB); st.CosignedByPeer == nil || st.CosignedByPeer.Checkpoint.Size != 8 || st.OwnLogAlert != nil {
		t.Fatalf("before: %+v", st)
	}
	// A restarts on a rolled-back log (same key, 5 events).
	a.src.use(newAuditLog(t, a.key, tdA, 5, "a"), nil)
	a2 := a.open(t)
	st, err := a2.Witness(context.Background(), tdB, serverSVID(t, a.ca))
	if !IsAlert(err) || st.OwnLogAlert == nil || st.OwnLogAlert.Reason != AlertWentBackwards || st.OwnLogAlert.Remembered.Size != 8 {
		t.Fatalf("own log rolled back: %+v, %v", st.OwnLogAlert, err)
	}
	t.Logf("A: %v", err)
	if w := strings.Join(a2.Warnings(), "\n"); !strings.Contains(w, "AUDIT LOG ROLLBACK of this authority's own audit log") {
		t.Fatalf("no health warning: %q", w)
	}
	if got := gather(t, a2); got["ward_federation_witness_own_log_alert{went_backwards}"] != 1 {
		t.Fatalf("metrics: %v", got)
	}
	if n := countOps(a.aud, "federation.witness:error"); n != 1 {
		t.Fatalf("audited %d times: %v", n, a.aud.ops())
	}
	// A forked log of the same size as the cosigned one.
	a.src.use(newAuditLog(t, a.key, tdA, 8, "fork"), nil)
	a3 := a.open(t)
	if st, err := a3.Witness(context.Background(), tdB, serverSVID(t, a.ca)); !IsAlert(err) || st.OwnLogAlert == nil || st.OwnLogAlert.Reason != AlertForked {
		t.Fatalf("own log forked: %+v, %v", st.OwnLogAlert, err)
	}
	// The log restored (it extends the cosigned checkpoint again): clear.
	appendEvents(t, a.log, 2, "c")
	a.src.use(a.log, nil)
	if st, err := a3.Witness(context.Background(), tdB, serverSVID(t, a.ca)); err != nil || st.OwnLogAlert != nil {
		t.Fatalf("own log restored: %+v, %v", st.OwnLogAlert, err)
	}
}
