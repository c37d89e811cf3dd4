// Package agent is ward's node agent (`ward agent`): it attests its node to
// the authority over the Node API (mTLS), keeps its own SVID renewed, syncs
// the registration entries of its node and the trust bundle, issues and
// rotates an X509-SVID (fresh key) per entry with jittered half-life
// rotation, mints JWT-SVIDs, keeps everything in an encrypted on-disk cache
// so it can serve through an authority outage and across restarts, and
// serves the SPIFFE Workload API on a unix socket.
package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/node/attestor/k8s"
	"github.com/wardproject/ward/internal/node/attestor/unix"
	"github.com/wardproject/ward/internal/node/workloadapi"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/kubeapi"
	"github.com/wardproject/ward/internal/shared/policy"
)

// opRenew names the agent SVID renewal in logs and metrics.
const opRenew = "renew agent SVID"

// signBatch is the most SVIDs asked for in one SignX509SVIDs call.
const signBatch = 500

// Agent is a node agent. Create it with New and start it with Run; it
// implements workloadapi.Source.
type Agent struct {
	// tel keeps local proxies' and gateways' telemetry (telemetry.go).
	tel *localTelemetry

	cfg      *Config
	td       spiffeid.TrustDomain
	serverID spiffeid.ID
	log      *slog.Logger
	att      attest.Attestor
	pods     *k8s.Pods // the k8s workload attestor's pod watch, nil without it
	now      func() time.Time
	jitter   func() float64
	cache    *diskCache
	met      *metrics
	audit    *auditMemory // the authority's audit checkpoint (checkpoint.go)
	kick     chan struct{}

	agentSVID atomic.Pointer[x509svid.SVID]
	connMu    sync.Mutex
	conn      *grpc.ClientConn

	// Loop state (Run's goroutine only).
	agentRenewAt time.Time
	nextAttest   time.Time
	nextRenew    time.Time
	nextSync     time.Time
	connected    bool
	// failures counts exchanges that failed because the authority was
	// unreachable (or answered with an error other than a refusal) since
	// the last good sync; refusals (eviction, a refused agent SVID) and a
	// spent join token (spentFailures) are not outages and do not count.
	failures      int
	spentFailures int
	lastStaleLog  time.Time
	retryIssue    map[string]time.Time

	mu            sync.RWMutex
	entries       map[string]*entry
	index         map[attest.Selector][]*entry
	byID          map[spiffeid.ID][]*entry
	svids         map[string]*svid
	bundle        *spiffebundle.Bundle
	bundleJSON    []byte
	bundleSeq     uint64
	federated     []*spiffebundle.Bundle
	federatedJSON map[string][]byte
	changed       chan struct{}
	usedJoinToken string
	evicted       bool
	dirty         bool
	lastSync      time.Time
	lastErr       string

	jwt jwtCache
	net netState // the WireGuard network (network.go), with a network section

	// policySet is the latest policy version's compiled set (policy.go),
	// nil before one arrives: ValidateJWTSVID refuses tokens whose jti
	// its deny-list names (JWTRevoked).
	policySet atomic.Pointer[policy.Set]
}

// Option configures an Agent.
type Option func(*Agent)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(a *Agent) { a.log = l } }

// WithAttestor replaces the workload attestor (default: the unix attestor,
// with the k8s attestor when k8s_workload_attestor is configured).
func WithAttestor(att attest.Attestor) Option { return func(a *Agent) { a.att = att } }

// New prepares an agent from a validated configuration: it reads the
// bootstrap bundle and opens (creating at first start) the cache key in
// data_dir. Nothing is contacted before Run.
func New(cfg *Config, opts ...Option) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, td: cfg.trustDomain(), serverID: cfg.serverID(),
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		now: time.Now, jitter: rand.Float64,
		entries: map[string]*entry{}, index: map[attest.Selector][]*entry{}, byID: map[spiffeid.ID][]*entry{},
		svids: map[string]*svid{}, changed: make(chan struct{}), kick: make(chan struct{}, 1), retryIssue: map[string]time.Time{},
		tel: &localTelemetry{procs: map[string]localReport{}},
	}
	for _, o := range opts {
		o(a)
	}
	if a.att == nil {
		a.att = unix.New()
		if k := cfg.K8sWorkloadAttestor; k != nil {
			node := k.NodeName
			if node == "" {
				node = os.Getenv("NODE_NAME")
			}
			if node == "" {
				return nil, errors.New("k8s_workload_attestor.node_name is empty and $NODE_NAME unset: give the node's name (in a DaemonSet, NODE_NAME from the downward API's spec.nodeName)")
			}
			kc, err := kubeapi.New(kubeapi.Config{URL: k.APIServer, CAFile: k.CAPath, TokenFile: k.TokenPath})
			if err != nil {
				return nil, fmt.Errorf("k8s_workload_attestor: %w", err)
			}
			a.pods = k8s.NewPods(kc, node, a.log.With("attestor", "k8s"))
			var ko []k8s.Option
			if k.ProcRoot != "" {
				ko = append(ko, k8s.WithProcRoot(k.ProcRoot))
			}
			a.att = attest.Multi{unix.New(), k8s.New(a.pods, ko...)}
		}
	}
	b, err := readBundleFile(a.td, cfg.TrustBundlePath)
	if err != nil {
		return nil, err
	}
	a.bundle = b
	if cfg.X509Pop != nil {
		if _, _, err := loadX509Pop(cfg.X509Pop); err != nil {
			return nil, err
		}
	}
	if a.cache, err = openDiskCache(cfg.DataDir); err != nil {
		return nil, err
	}
	a.audit = openAuditMemory(cfg.DataDir, a.log)
	a.met = newMetrics(a)
	return a, nil
}

// readBundleFile reads a bootstrap bundle: SPIFFE bundle JSON or PEM
// certificates.
func readBundleFile(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trust_bundle_path: %w", err)
	}
	var b *spiffebundle.Bundle
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		b, err = spiffebundle.Parse(td, t)
	} else {
		var xb *x509bundle.Bundle
		if xb, err = x509bundle.Parse(td, raw); err == nil {
			b = spiffebundle.FromX509Bundle(xb)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("trust_bundle_path %s: not a PEM or SPIFFE JSON bundle: %v (write it with `ward ca bundle`)", path, err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, fmt.Errorf("trust_bundle_path %s holds no X.509 authority (write it with `ward ca bundle`)", path)
	}
	return b, nil
}

// Run loads the cache, serves the Workload API and keeps identities fresh
// until ctx ends. It returns an error only if it cannot start.
func (a *Agent) Run(ctx context.Context) error {
	a.loadCache()
	if err := os.MkdirAll(filepath.Dir(a.cfg.SocketPath), 0o755); err != nil {
		return fmt.Errorf("socket_path directory: %w", err)
	}
	l, err := workloadapi.Listen(a.cfg.SocketPath)
	if err != nil {
		return err
	}
	if a.pods != nil {
		pctx, stopPods := context.WithCancel(ctx)
		defer stopPods()
		go a.pods.Run(pctx)
	}
	srv := workloadapi.New(a, a.att, workloadapi.WithLogger(a.log))
	go srv.Serve(l)
	defer srv.Stop()
	if a.cfg.PolicySocket != "" && a.cfg.PolicySocket != "none" {
		stop, err := a.servePolicy(ctx)
		if err != nil {
			return fmt.Errorf("policy_socket %s: %w", a.cfg.PolicySocket, err)
		}
		defer stop()
	} else {
		// No proxies to serve, but the deny-list is still followed: the
		// Workload API's ValidateJWTSVID refuses revoked JWT-SVIDs by it.
		stop := a.followPolicyOnly(ctx)
		defer stop()
	}
	telCtx, stopTel := context.WithCancel(ctx)
	telDone := make(chan struct{})
	go func() { defer close(telDone); a.runTelemetry(telCtx) }()
	defer func() { stopTel(); <-telDone }()
	if a.cfg.HealthAddress != "" {
		hl, err := net.Listen("tcp", a.cfg.HealthAddress)
		if err != nil {
			return fmt.Errorf("health_address %s: %w", a.cfg.HealthAddress, err)
		}
		hs := a.healthServer()
		go hs.Serve(hl)
		defer hs.Close()
		a.log.Info("serving /metrics and /status", "address", hl.Addr().String())
	}
	if a.cfg.Network != nil {
		nctx, stopNet := context.WithCancel(ctx)
		netDone := make(chan struct{})
		go func() { defer close(netDone); a.runNetwork(nctx) }()
		defer func() { stopNet(); <-netDone }()
	}
	a.log.Info("agent started", "trust_domain", a.td.Name(), "server", a.cfg.ServerAddress, "socket", a.cfg.SocketPath)
	defer func() {
		a.persist()
		a.connMu.Lock()
		if a.conn != nil {
			a.conn.Close()
		}
		a.connMu.Unlock()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("agent stopping")
			return nil
		case <-timer.C:
		case <-a.kick:
			timer.Stop()
		}
		wake := a.step(ctx)
		timer.Reset(max(wake.Sub(a.now()), 100*time.Millisecond))
	}
}

// poke makes Run do its next step now.
func (a *Agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// step does what is due and returns when to run again.
func (a *Agent) step(ctx context.Context) time.Time {
	now := a.now()
	interval := time.Duration(a.cfg.SyncInterval)
	a.dropExpired(now)
	sv := a.agentSVID.Load()
	if sv != nil && !now.Before(sv.Certificates[0].NotAfter) {
		a.log.Warn("agent SVID expired (authority unreachable for too long); attesting again", "agent_id", sv.ID.String())
		a.dropAgentSVID()
		sv = nil
	}
	if sv == nil && !now.Before(a.nextAttest) {
		if err := a.attest(ctx); err != nil {
			a.nextAttest = now.Add(interval)
			a.noteFailure(now, "attest", err)
		} else {
			sv = a.agentSVID.Load()
			a.nextSync = now
		}
	}
	if sv != nil && !now.Before(a.agentRenewAt) && !now.Before(a.nextRenew) {
		if err := a.renewAgent(ctx); err != nil {
			a.nextRenew = now.Add(interval)
			a.noteFailure(now, opRenew, err)
		}
		sv = a.agentSVID.Load()
	}
	if sv != nil && !now.Before(a.nextSync) {
		a.nextSync = now.Add(interval)
		if err := a.sync(ctx); err != nil {
			a.noteFailure(now, "sync", err)
		} else {
			a.noteSuccess(now)
		}
	}
	if a.agentSVID.Load() != nil && a.connected {
		if err := a.issueDue(ctx); err != nil {
			a.noteFailure(now, "sign X509-SVIDs", err)
		}
	}
	a.persist()

	// Next wake-up: the next sync, agent renewal, attestation retry, SVID
	// rotation (while connected) or expiry.
	wake := a.nextSync
	if a.agentSVID.Load() == nil {
		wake = a.nextAttest
	} else {
		renew := a.agentRenewAt
		if a.nextRenew.After(renew) {
			renew = a.nextRenew
		}
		wake = earliest(wake, renew)
	}
	rot, exp := a.nextRotation()
	if a.connected {
		wake = earliest(wake, rot)
	}
	return earliest(wake, exp)
}

func earliest(a, b time.Time) time.Time {
	if b.IsZero() || !a.IsZero() && a.Before(b) {
		return a
	}
	return b
}

// noteFailure records a failed exchange with the authority, handles
// eviction, and logs staleness (first failure, then every 30s).
func (a *Agent) noteFailure(now time.Time, what string, err error) {
	a.met.failures.WithLabelValues(what).Inc()
	a.mu.Lock()
	a.lastErr = what + ": " + err.Error()
	a.mu.Unlock()
	if errors.Is(err, errNoAttestation) {
		if a.spentFailures == 0 || now.Sub(a.lastStaleLog) >= 30*time.Second {
			a.log.Error("agent has no SVID and its join token is spent: no new SVIDs are issued; cached SVIDs are served until they expire. Write a new token from `ward token create` into join_token_file (or join_token and restart)", "soonest_svid_expiry", a.soonestExpiry())
			a.lastStaleLog = now
		}
		a.spentFailures++
		return
	}
	if status.Code(err) == codes.PermissionDenied {
		sv := a.agentSVID.Load()
		id := ""
		if sv != nil {
			id = sv.ID.String()
		}
		a.dropAgentSVID()
		a.jwt.drop() // revoked by the eviction: never handed out again
		// Saved at once (dropAgentSVID marked the cache dirty): a restart
		// before the next save would load the revoked tokens again and
		// serve them while the authority is away.
		a.persist()
		a.mu.Lock()
		a.evicted = true
		a.mu.Unlock()
		if what != "attest" {
			// Refused as an agent: attest again now. A refused attestation
			// waits the interval the caller set (retrying at once would
			// loop on the authority, and for k8s_psat on the apiserver).
			a.nextAttest = now
		}
		how := "attesting again with x509pop"
		if a.cfg.K8sPSAT != nil {
			how = "attesting again with the pod's token (refused after an eviction until the agent pod is replaced)"
		} else if a.cfg.X509Pop == nil {
			how = "attesting again only with a new join token (join_token_file or config); until then no new SVIDs are issued"
		}
		a.log.Error("the authority refused this agent (evicted with `ward agent evict`?); "+how, "agent_id", id, "during", what, "error", err)
		a.connected = false
		return
	}
	if status.Code(err) == codes.Unauthenticated {
		if what != opRenew {
			// The authority no longer accepts this SVID (e.g. it chains to a
			// tainted CA key): renew it now.
			// The next step (step's wake-up) renews; the authority is
			// reachable, so this is not counted as an outage.
			a.log.Warn("the authority refused the agent SVID; renewing it", "during", what, "error", err)
			a.agentRenewAt, a.nextRenew = now, now
			a.connected = false
			return
		}
		a.log.Error("the authority refused to renew the agent SVID; attesting again", "error", err)
		a.dropAgentSVID()
		a.nextAttest = now
		return
	}
	a.connected = false
	a.failures++
	if a.failures == 1 || now.Sub(a.lastStaleLog) >= 30*time.Second {
		a.lastStaleLog = now
		a.mu.RLock()
		last := a.lastSync
		a.mu.RUnlock()
		since := "never"
		if !last.IsZero() {
			since = fmt.Sprintf("%.0f", now.Sub(last).Seconds())
		}
		a.log.Warn("authority unreachable; serving cached SVIDs", "during", what, "seconds_since_last_sync", since,
			"soonest_svid_expiry", a.soonestExpiry(), "error", err)
	}
}

func (a *Agent) noteSuccess(now time.Time) {
	if a.failures > 0 {
		a.log.Info("authority reachable again; catching up", "failed_attempts", a.failures)
	}
	a.failures, a.spentFailures = 0, 0
	a.connected = true
}

func (a *Agent) dropAgentSVID() {
	a.agentSVID.Store(nil)
	a.connected = false
	a.connMu.Lock()
	if a.conn != nil {
		a.conn.Close()
		a.conn = nil
	}
	a.connMu.Unlock()
	a.mu.Lock()
	a.dirty = true
	a.mu.Unlock()
}

// sync fetches the node's entries and the bundle and applies them.
func (a *Agent) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := a.node().Sync(ctx, &wardv1.SyncRequest{AuditTreeSize: a.audit.knownSize()})
	if err != nil {
		return err
	}
	a.audit.observe(resp)
	return a.applySync(resp)
}

// applySync installs a Sync response: entries (invalid ones are skipped
// with a warning), the bundle and federated bundles.
func (a *Agent) applySync(resp *wardv1.SyncResponse) error {
	now := a.now()
	entries := make(map[string]*entry, len(resp.GetEntries()))
	for _, p := range resp.GetEntries() {
		e, err := entryFromProto(a.td, p)
		if err != nil {
			a.log.Warn("skipping invalid entry from authority", "error", err)
			continue
		}
		entries[e.id] = e
	}
	var newBundle *spiffebundle.Bundle
	doc := resp.GetBundleSpiffeJson()
	a.mu.RLock()
	bundleChanged := len(doc) > 0 && (resp.GetBundleSequence() != a.bundleSeq || !bytes.Equal(doc, a.bundleJSON))
	a.mu.RUnlock()
	if bundleChanged {
		b, err := spiffebundle.Parse(a.td, doc)
		if err != nil {
			return fmt.Errorf("bundle from authority (sequence %d): %w", resp.GetBundleSequence(), err)
		}
		if len(b.X509Authorities()) == 0 {
			return fmt.Errorf("bundle from authority (sequence %d) has no X.509 authority; keeping the current one", resp.GetBundleSequence())
		}
		newBundle = b
	}
	var fed []*spiffebundle.Bundle
	for name, doc := range resp.GetFederatedBundles() {
		ftd, err := spiffeid.TrustDomainFromString(name)
		if err != nil || ftd == a.td {
			a.log.Warn("skipping federated bundle with a bad trust domain", "trust_domain", name)
			continue
		}
		b, err := spiffebundle.Parse(ftd, doc)
		if err != nil {
			a.log.Warn("skipping unparsable federated bundle", "trust_domain", name, "error", err)
			continue
		}
		fed = append(fed, b)
	}
	slices.SortFunc(fed, func(x, y *spiffebundle.Bundle) int {
		return strings.Compare(x.TrustDomain().Name(), y.TrustDomain().Name())
	})

	a.mu.Lock()
	defer a.mu.Unlock()
	changed := false
	if len(entries) != len(a.entries) {
		changed = true
	}
	for id, e := range entries {
		if old, ok := a.entries[id]; !ok || !sameEntry(old, e) {
			changed = true
		}
	}
	for id := range a.entries {
		if _, ok := entries[id]; !ok {
			delete(a.svids, id)
			delete(a.retryIssue, id)
			changed = true
		}
	}
	if changed {
		a.entries = entries
		a.indexLocked()
		a.byID = make(map[spiffeid.ID][]*entry, len(entries))
		for _, e := range entries {
			a.byID[e.spiffeID] = append(a.byID[e.spiffeID], e)
		}
	}
	if newBundle != nil && a.bundle != nil && a.bundle.Equal(newBundle) {
		// The same bundle in other bytes (the authority's JSON encoding is
		// not canonical): nothing changed, nobody is notified.
		a.bundleJSON = doc
		newBundle = nil
	}
	if newBundle != nil {
		a.setBundleLocked(newBundle, doc, resp.GetBundleSequence())
		changed = true
		a.log.Info("trust bundle updated", "sequence", resp.GetBundleSequence(), "x509_authorities", len(newBundle.X509Authorities()))
	}
	fedJSON := resp.GetFederatedBundles()
	if !maps.EqualFunc(fedJSON, a.federatedJSON, bytes.Equal) {
		a.federated, a.federatedJSON = fed, maps.Clone(fedJSON)
		changed = true
	}
	if n := a.retireTaintedLocked(resp.GetTaintedKeyIds(), now); n > 0 {
		a.log.Warn("SVIDs chain to a tainted CA key: re-issuing them now", "svids", n, "tainted", resp.GetTaintedKeyIds())
		a.poke()
	}
	a.lastSync, a.lastErr = now, ""
	a.dirty = true
	if changed {
		a.notifyLocked()
	}
	return nil
}

// retireTaintedLocked makes every SVID whose chain contains a tainted CA
// key due for rotation now, and returns how many it found.
func (a *Agent) retireTaintedLocked(tainted []string, now time.Time) int {
	if len(tainted) == 0 {
		return 0
	}
	bad := make(map[string]bool, len(tainted))
	for _, k := range tainted {
		bad[k] = true
	}
	n := 0
	for _, sv := range a.svids {
		for _, c := range sv.chain[1:] {
			if kid, err := keyutil.CAKeyID(c.PublicKey); err == nil && bad[kid] {
				if sv.rotateAt.After(now) {
					sv.rotateAt = now
					n++
				}
				break
			}
		}
	}
	return n
}

func sameEntry(x, y *entry) bool {
	return x.revision == y.revision && x.spec == y.spec && x.hint == y.hint &&
		slices.Equal(x.selectors, y.selectors) && slices.Equal(x.fed, y.fed)
}

// setBundleLocked installs a new bundle and schedules the immediate
// re-issuance of every SVID whose chain no longer leads to one of its
// X.509 authorities (a removed or tainted root).
func (a *Agent) setBundleLocked(b *spiffebundle.Bundle, doc []byte, seq uint64) {
	a.bundle, a.bundleJSON, a.bundleSeq = b, doc, seq
	a.dirty = true
	trusted := map[string]bool{}
	roots := b.X509Authorities()
	now := a.now()
	for _, sv := range a.svids {
		top := sv.chain[len(sv.chain)-1]
		ok, seen := trusted[string(top.Raw)]
		if !seen {
			ok = false
			for _, r := range roots {
				if bytes.Equal(r.Raw, top.Raw) || top.CheckSignatureFrom(r) == nil {
					ok = true
					break
				}
			}
			trusted[string(top.Raw)] = ok
		}
		if !ok {
			sv.rotateAt = now
		}
	}
	a.notifyLocked()
}

// dueEntries lists entries that need an X509-SVID now: none held, issued
// for another spec, or past their rotation time.
func (a *Agent) dueEntries(now time.Time) []*entry {
	horizon := now.Add(500 * time.Millisecond) // coalesce rotations due within the next half second
	a.mu.RLock()
	defer a.mu.RUnlock()
	var due []*entry
	for id, e := range a.entries {
		if t, ok := a.retryIssue[id]; ok && now.Before(t) {
			continue
		}
		sv := a.svids[id]
		if sv == nil || sv.spec != e.spec || !sv.rotateAt.After(horizon) {
			due = append(due, e)
		}
	}
	slices.SortFunc(due, func(x, y *entry) int { return strings.Compare(x.id, y.id) })
	return due
}

// issueDue signs fresh X509-SVIDs (new key each) for every due entry, in
// batches; each batch is pushed to workloads as soon as it lands.
func (a *Agent) issueDue(ctx context.Context) error {
	now := a.now()
	due := a.dueEntries(now)
	for len(due) > 0 {
		n := min(len(due), signBatch)
		if err := a.issueBatch(ctx, due[:n]); err != nil {
			return err
		}
		due = due[n:]
	}
	return nil
}

type pending struct {
	e   *entry
	key *ecdsa.PrivateKey
}

func (a *Agent) issueBatch(ctx context.Context, batch []*entry) error {
	req := &wardv1.SignX509SVIDsRequest{Params: make([]*wardv1.X509SVIDParams, 0, len(batch))}
	keys := make(map[string]pending, len(batch))
	for _, e := range batch {
		key, csr, err := newCSR(e.spiffeID, e.dns)
		if err != nil {
			return fmt.Errorf("key for %s: %w", e.spiffeID, err)
		}
		keys[e.id] = pending{e, key}
		req.Params = append(req.Params, &wardv1.X509SVIDParams{EntryId: e.id, Csr: csr})
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := a.node().SignX509SVIDs(ctx, req)
	if err != nil {
		return err
	}
	now := a.now()
	retry := now.Add(time.Duration(a.cfg.SyncInterval))
	issued := make(map[string]*svid, len(batch))
	failed := map[string]bool{}
	for _, r := range resp.GetResults() {
		p, ok := keys[r.GetEntryId()]
		if !ok {
			continue
		}
		if r.GetError() != nil {
			a.log.Warn("authority refused an X509-SVID", "entry", p.e.id, "spiffe_id", p.e.spiffeID.String(),
				"code", r.GetError().GetCode(), "error", r.GetError().GetMessage())
			failed[p.e.id] = true
			continue
		}
		sv, err := a.checkIssued(p, r.GetChain())
		if err != nil {
			a.log.Warn("discarding an X509-SVID from the authority", "entry", p.e.id, "error", err)
			failed[p.e.id] = true
			continue
		}
		issued[p.e.id] = sv
	}
	a.mu.Lock()
	for id, sv := range issued {
		if e, ok := a.entries[id]; ok && e.spec == sv.spec {
			a.svids[id] = sv
			delete(a.retryIssue, id)
		}
	}
	for id := range keys {
		if _, ok := issued[id]; !ok {
			a.retryIssue[id] = retry
		}
	}
	if len(issued) > 0 {
		a.dirty = true
		a.notifyLocked()
	}
	a.mu.Unlock()
	a.met.issued.Add(float64(len(issued)))
	if len(issued) > 0 {
		a.log.Debug("X509-SVIDs issued", "count", len(issued), "failed", len(batch)-len(issued))
	}
	return nil
}

// checkIssued checks a signed chain against the request: leaf carries our
// key and exactly the entry's SPIFFE ID.
func (a *Agent) checkIssued(p pending, ders [][]byte) (*svid, error) {
	chain, err := parseChain(ders)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !publicKeyEqual(leaf.PublicKey, p.key.Public()) {
		return nil, errors.New("certificate does not carry the requested key")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil || id != p.e.spiffeID {
		return nil, fmt.Errorf("certificate names %v, want %s", id, p.e.spiffeID)
	}
	return &svid{chain: chain, key: p.key, spec: p.e.spec,
		rotateAt: rotateAt(a.now(), leaf.NotBefore, leaf.NotAfter, a.jitter())}, nil
}

// dropExpired forgets expired X509-SVIDs and tells streams.
func (a *Agent) dropExpired(now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for id, sv := range a.svids {
		if !now.Before(sv.notAfter()) {
			delete(a.svids, id)
			n++
		}
	}
	if n > 0 {
		a.log.Warn("X509-SVIDs expired before they could be rotated (authority unreachable?)", "count", n)
		a.dirty = true
		a.notifyLocked()
	}
}

// nextRotation returns the soonest rotation time and the soonest expiry.
func (a *Agent) nextRotation() (rot, exp time.Time) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for id, sv := range a.svids {
		if _, retrying := a.retryIssue[id]; !retrying {
			rot = earliest(rot, sv.rotateAt)
		}
		exp = earliest(exp, sv.notAfter())
	}
	for id, t := range a.retryIssue {
		if _, ok := a.entries[id]; ok {
			rot = earliest(rot, t)
		}
	}
	return rot, exp
}

func (a *Agent) soonestExpiry() time.Time {
	_, exp := a.nextRotation()
	return exp
}

// persist saves the cache if anything changed.
func (a *Agent) persist() {
	a.mu.Lock()
	if !a.dirty {
		a.mu.Unlock()
		return
	}
	a.dirty = false
	st := &cacheState{TrustDomain: a.td.Name(), UsedJoinToken: a.usedJoinToken, Bundle: a.bundleJSON,
		BundleSequence: a.bundleSeq, Federated: a.federatedJSON, LastSync: a.lastSync}
	if sv := a.agentSVID.Load(); sv != nil {
		key, err := x509.MarshalPKCS8PrivateKey(sv.PrivateKey)
		if err == nil {
			st.Agent = &cachedAgent{ID: sv.ID.String(), Key: key, Chain: derChain(sv.Certificates), RenewAt: a.agentRenewAt}
		}
	}
	for _, e := range a.entries {
		st.Entries = append(st.Entries, e.toCache())
	}
	for id, sv := range a.svids {
		key, err := x509.MarshalPKCS8PrivateKey(sv.key)
		if err != nil {
			continue
		}
		st.SVIDs = append(st.SVIDs, cachedSVID{EntryID: id, Spec: sv.spec, Chain: derChain(sv.chain), Key: key, RotateAt: sv.rotateAt})
	}
	a.mu.Unlock()
	st.JWTs = a.jwt.export(a.now())
	if err := a.cache.Save(st); err != nil {
		a.log.Error("could not save the agent cache; a restart would need the authority", "data_dir", a.cfg.DataDir, "error", err)
		a.mu.Lock()
		a.dirty = true
		a.mu.Unlock()
	}
}

func derChain(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// loadCache restores state saved by a previous run. A missing cache is a
// first start; a corrupt one is reported and ignored (the agent attests
// and syncs afresh).
func (a *Agent) loadCache() {
	st, err := a.cache.Load()
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		a.log.Error("ignoring the agent cache; starting afresh", "data_dir", a.cfg.DataDir, "error", err)
		return
	}
	if st.TrustDomain != a.td.Name() {
		a.log.Error("ignoring the agent cache: it belongs to another trust domain", "cache_trust_domain", st.TrustDomain, "trust_domain", a.td.Name())
		return
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.usedJoinToken = st.UsedJoinToken
	a.lastSync = st.LastSync
	if len(st.Bundle) > 0 {
		if b, err := spiffebundle.Parse(a.td, st.Bundle); err == nil && len(b.X509Authorities()) > 0 {
			a.bundle, a.bundleJSON, a.bundleSeq = b, st.Bundle, st.BundleSequence
		}
	}
	a.federatedJSON = map[string][]byte{}
	for name, doc := range st.Federated {
		if ftd, err := spiffeid.TrustDomainFromString(name); err == nil {
			if b, err := spiffebundle.Parse(ftd, doc); err == nil {
				a.federated = append(a.federated, b)
				a.federatedJSON[name] = doc
			}
		}
	}
	for _, c := range st.Entries {
		e, err := entryFromCache(a.td, c)
		if err != nil {
			continue
		}
		a.entries[e.id] = e
		a.byID[e.spiffeID] = append(a.byID[e.spiffeID], e)
	}
	a.indexLocked()
	for _, c := range st.SVIDs {
		chain, err := parseChain(c.Chain)
		if err != nil || !now.Before(chain[0].NotAfter) {
			continue
		}
		key, err := parseSigner(c.Key)
		if err != nil || !publicKeyEqual(chain[0].PublicKey, key.Public()) {
			continue
		}
		if _, ok := a.entries[c.EntryID]; ok {
			a.svids[c.EntryID] = &svid{chain: chain, key: key, spec: c.Spec, rotateAt: c.RotateAt}
		}
	}
	if c := st.Agent; c != nil {
		chain, err := parseChain(c.Chain)
		key, kerr := parseSigner(c.Key)
		if err == nil && kerr == nil && now.Before(chain[0].NotAfter) && publicKeyEqual(chain[0].PublicKey, key.Public()) {
			if id, err := x509svid.IDFromCert(chain[0]); err == nil {
				sv := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
				a.agentSVID.Store(sv)
				a.agentRenewAt = c.RenewAt
				if conn, err := a.dial(true); err == nil {
					a.connMu.Lock()
					a.conn = conn
					a.connMu.Unlock()
				}
			}
		}
	}
	a.jwt.load(st.JWTs, now)
	a.log.Info("agent cache loaded", "entries", len(a.entries), "svids", len(a.svids), "agent_svid", a.agentSVID.Load() != nil,
		"last_sync", a.lastSync)
}

func parseSigner(der []byte) (crypto.Signer, error) {
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T cannot sign", k)
	}
	return s, nil
}
