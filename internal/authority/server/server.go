// Package server wires ward's authority together: storage, barrier and
// seal, the audit log, the KMS, the policy store and workload identity.
// It owns the sealed ↔ unsealed lifecycle (services that need keys exist
// only while unsealed) and the listeners: the admin socket, which serves
// internal/authority/adminapi, the Node API (internal/authority/nodeapi),
// started at unseal, and the HTTP endpoints (/metrics, /healthz, /readyz).
package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/authority/adminapi"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/backup"
	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/dashboard"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/posturestore"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/shared/reqctx"
	"github.com/wardproject/ward/internal/shared/wirecodec"
)

const auditSigningKeyPath = "audit/signing-key"

// Server is one authority.
type Server struct {
	cfg     *config.Server
	log     *slog.Logger
	raw     store.Store
	barrier *barrier.Barrier
	seals   *seal.Manager
	sealer  seal.Seal // the configured seal (hsm.go: its token serves the KMS)
	auto    bool      // the seal unseals itself (key file, HSM)
	table   kms.Table
	metrics *metrics

	grpc     *grpc.Server
	http     *http.Server
	adminLn  net.Listener
	httpLn   net.Listener
	serveErr chan error

	mu sync.RWMutex
	// unsealed is the running services, nil while sealed: read on every
	// call without a lock, replaced under mu.
	unsealed atomic.Pointer[unsealedState]
	pending  []audit.Event // events that happened while sealed

	observer func(audit.Event) // sees committed events (SetAuditObserver)

	// drift is the continuous drift evaluation and the nodes' telemetry
	// (drift.go).
	drift *driftState

	// rewrite is the barrier rotation's rewrite (maintenance.go).
	rewrite rewriter

	journalMu    sync.Mutex
	journalCount int // sealed-events journal entries, -1: unknown (sealedjournal.go)

	leaderHooks []func(context.Context) // jobs only the leader runs (AddLeaderJob)
	inflight    sync.Map                // idempotency records this authority is running (dedup.go)
	held        sync.Map                // secret answers kept for retries, by record path (dedup.go)
	leaderships atomic.Uint64           // times this authority became leader

	// the dashboard (dashboard.go), when dashboard.address is set
	dash       *http.Server
	dashStop   context.CancelFunc // ends the dashboard token file watch
	dashLn     net.Listener
	dashExtras dashboard.Extras
	dashMu     sync.Mutex
	entries    int // entry count, cached
	entriesAt  time.Time
}

type unsealedState struct {
	// ident is the workload identity services (identity.go), nil until
	// they started and once the seal stopped them: calls and jobs that
	// took this state read it while the seal runs, so it is swapped, never
	// written in place.
	ident  atomic.Pointer[identityState]
	kms    *kms.Manager
	policy *policystore.Store
	// posture is the declared posture's versions (drift.go).
	posture *posturestore.Store
	audit   *audit.Log
	// signer is the audit checkpoint key; it also cosigns the federated
	// peers' checkpoints this authority witnesses.
	signer *ecdsa.PrivateKey
	hasher *audit.Hasher
	// recorder is the one audit seam the KMS, the registry, the policy
	// store and the Node API record through (context values hashed).
	recorder audit.Recorder
	// fed is the federation manager once the identity services started
	// (for the remote deny-lists of new policy versions).
	fed atomic.Pointer[federation.Manager]
	// ha is this authority's membership and leadership (ha.go).
	ha     atomic.Pointer[haState]
	cancel context.CancelFunc
	jobCtx context.Context // ends at seal: background jobs run under it
	wg     sync.WaitGroup

	// policyLint is the federation lint's view of the current policy
	// version, kept current by followPolicyLint (policylint.go).
	policyLint atomic.Pointer[policystore.LintStatus]
}

// New builds an authority over an opened raw store and seal. It does not
// listen yet: call Start. The authority keeps cfg and reads it until Stop
// returns (background jobs read it too, at unseal and whenever this
// authority becomes leader): do not change it in between.
func New(cfg *config.Server, raw store.Store, s seal.Seal, log *slog.Logger) (*Server, error) {
	table, err := cfg.ClassificationTable()
	if err != nil {
		return nil, err
	}
	b := barrier.New(raw)
	srv := &Server{cfg: cfg, log: log, raw: raw, barrier: b, table: table, serveErr: make(chan error, 2), journalCount: -1}
	srv.rewrite.kick = make(chan struct{}, 1)
	srv.seals, srv.sealer = seal.NewManager(raw, b, s), s
	_, srv.auto = s.(seal.AutoSeal)
	srv.drift = newDriftState()
	srv.metrics = newMetrics(srv)
	srv.metrics.reg.MustRegister(&driftCollector{s: srv})
	srv.metrics.reg.MustRegister(&integrityCollector{s: srv})
	srv.metrics.reg.MustRegister(haCollector{s: srv})
	srv.metrics.reg.MustRegister(policyLintCollector{s: srv})
	return srv, nil
}

// Start listens on the admin socket and HTTP address and, for auto seals,
// unseals.
func (s *Server) Start(ctx context.Context) error {
	ln, err := listenAdmin(s.cfg.AdminSocket)
	if err != nil {
		return err
	}
	s.adminLn = ln
	s.grpc = grpc.NewServer(s.adminServerOptions()...)
	adminapi.Register(s.grpc, lifecycle{s}, lifecycle{s}, adminapi.Options{Classifications: s.table, Log: s.log, Maintenance: maintainer{s}})
	adminapi.RegisterCluster(s.grpc, s)
	go func() { s.serveErr <- s.grpc.Serve(ln) }()

	if s.cfg.HTTPAddress != "" {
		hl, err := net.Listen("tcp", s.cfg.HTTPAddress)
		if err != nil {
			s.grpc.Stop()
			return fmt.Errorf("listening on http_address %s: %w", s.cfg.HTTPAddress, err)
		}
		s.httpLn = hl
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			// Warnings do not fail liveness: a stale foreign bundle is the
			// peer's or the network's problem, not a reason to restart.
			fmt.Fprintln(w, "ok")
			if m := s.federation(); m != nil {
				for _, warn := range m.Warnings() {
					fmt.Fprintln(w, "warning:", warn)
				}
			}
			if warn := s.policyLintWarning(false); warn != "" {
				fmt.Fprintln(w, "warning:", warn)
			}
		})
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
			if s.Sealed() {
				http.Error(w, "sealed: run `ward operator unseal`", http.StatusServiceUnavailable)
				return
			}
			if s.cutOff() {
				// Load balancers and orchestrators take it out of
				// rotation; it joins again by itself when etcd answers.
				http.Error(w, "not ready: "+cutOffMessage+"; check the network to etcd (storage.etcd.endpoints)", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := s.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.serveErr <- err
			}
		}()
	}
	if err := s.startDashboard(); err != nil {
		s.grpc.Stop()
		if s.http != nil {
			s.http.Close()
		}
		return err
	}
	st, err := s.seals.Status(ctx)
	if err != nil {
		return fmt.Errorf("reading the seal configuration: %w", err)
	}
	if err := s.preflightListeners(); err != nil {
		// Not fatal while sealed (the port may be freed before the
		// operator unseals), but every share is refused until it is.
		s.log.Error("a listener started at unseal cannot be bound; unseal shares will be refused until it can", "err", err)
	}
	if s.auto && st.Initialized {
		if _, err := s.seals.AutoUnseal(ctx); err != nil {
			if s.recoverable(st) {
				// The HSM may be gone for good: stay up, sealed, for the
				// recovery shares.
				s.log.Error("auto-unseal failed; the authority stays sealed: fix the HSM and restart, or unseal with the recovery shares (`ward operator unseal`)", "seal", st.Type, "err", err)
				s.recordSealed(s.event(reqctx.Caller{Actor: "system:auto-unseal", RequestID: reqctx.NewRequestID()}, "operator.unseal", "error", err.Error()))
				return nil
			}
			return fmt.Errorf("auto-unseal with the %s seal failed: %w", st.Type, err)
		}
		if err := s.afterUnseal(ctx, reqctx.Caller{Actor: "system:auto-unseal", RequestID: reqctx.NewRequestID()}); err != nil {
			return err
		}
	}
	return nil
}

// preflightListeners checks, while sealed, that the addresses the
// unsealed services listen on (identity.node_api_address and the
// federation bundle endpoint) can be bound right now, so that an unseal
// does not fail after its last share. Port 0 (any free port) always passes.
func (s *Server) preflightListeners() error {
	be := s.cfg.Federation.BundleEndpoint
	for _, l := range []struct{ field, addr, what string }{
		{"identity.node_api_address", s.cfg.Identity.Effective().NodeAPIAddress, "the Node API"},
		{"federation.bundle_endpoint.address", be.Address, "the bundle endpoint"},
		{"federation.bundle_endpoint.web_address", be.WebAddress, "the bundle endpoint"},
	} {
		if l.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(l.addr); err == nil && port == "0" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("%s %s cannot be bound (%v): %s starts at unseal, so unsealing would fail; free the port, or change %s and restart ward server", l.field, l.addr, err, l.what, l.field)
		}
		ln.Close()
	}
	return nil
}

// AdminAddress is the admin socket address in client form.
func (s *Server) AdminAddress() string { return "unix://" + s.cfg.AdminSocket }

// HTTPAddress is the bound HTTP address, or "".
func (s *Server) HTTPAddress() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Wait blocks until ctx ends or a listener fails.
func (s *Server) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.serveErr:
		return err
	}
}

// Stop seals (wiping keys from memory) and shuts down gracefully.
func (s *Server) Stop() {
	s.stopDashboard()
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.http.Shutdown(ctx)
		cancel()
	}
	if s.grpc != nil {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			s.grpc.Stop()
		}
	}
	// Serve runs in a goroutine and may not have taken the listener yet
	// (a Start that failed at once): close it here, so the socket is gone
	// when Stop returns.
	if s.adminLn != nil {
		s.adminLn.Close()
	}
	s.sealInternal()
	s.closeSeal()
}

// Sealed reports whether the authority is sealed.
func (s *Server) Sealed() bool { return s.unsealed.Load() == nil }

var errSealed = status.Error(codes.FailedPrecondition, "the authority is sealed: unseal it with `ward operator unseal` (or initialise it first with `ward operator init`)")

func (s *Server) state() (*unsealedState, error) {
	st := s.unsealed.Load()
	if st == nil {
		return nil, errSealed
	}
	return st, nil
}

func (s *Server) kmsManager() (*kms.Manager, error) {
	st, err := s.state()
	if err != nil {
		return nil, err
	}
	return st.kms, nil
}

func (s *Server) auditSize() uint64 {
	st, err := s.state()
	if err != nil {
		return 0
	}
	return st.audit.Size()
}

// afterUnseal starts the services that need the barrier open: the audit
// log (its signing key lives behind the barrier), the KMS and its jobs.
func (s *Server) afterUnseal(ctx context.Context, caller reqctx.Caller) error {
	bs := s.barrier.Store()
	signer, err := s.auditSigner(ctx, bs)
	if err != nil {
		s.log.Error("unseal refused: the audit log's storage is missing or incomplete", "err", err)
		s.recordSealed(s.event(caller, "operator.unseal", audit.ResultError, err.Error()))
		return err
	}
	hkey, err := s.barrier.DeriveKey("audit-hmac")
	if err != nil {
		return err
	}
	pathKey, err := s.barrier.DeriveKey("kms-key-paths")
	if err != nil {
		return err
	}
	hasher, err := audit.NewHasher(hkey)
	if err != nil {
		return err
	}
	alog, err := audit.Open(ctx, bs, signer, "ward/"+s.cfg.TrustDomain, audit.WithLogger(s.log))
	if err != nil {
		return fmt.Errorf("opening the audit log: %w", err)
	}
	// The audit head must exist before anything else is written: storage
	// holding data but no head is what a wiped log looks like (auditSigner
	// refuses it). Flush what happened while sealed now, and give an empty
	// log a first event if nothing was pending (an auto-unsealing restart).
	s.mu.Lock()
	mem := s.pending
	s.pending = nil
	s.mu.Unlock()
	pending := s.sealedEvents(ctx, mem)
	if alog.Size() == 0 && len(pending) == 0 {
		pending = append(pending, pendingEvent{ev: s.event(caller, "audit.log_created", "ok", "")})
	}
	var appended []string
	for i, p := range pending {
		if _, err := alog.Append(ctx, p.ev); err != nil {
			alog.Close()
			s.dropJournal(ctx, appended)
			s.mu.Lock() // keep what was not stored for the next unseal
			var keep []audit.Event
			for _, q := range pending[i:] {
				if q.key == "" {
					keep = append(keep, q.ev)
				}
			}
			s.pending = append(keep, s.pending...)
			s.mu.Unlock()
			return fmt.Errorf("audit log unavailable, staying sealed: %w", err)
		}
		if p.key != "" {
			appended = append(appended, p.key)
		}
	}
	s.dropJournal(ctx, appended)
	st := &unsealedState{audit: alog, signer: signer, hasher: hasher, recorder: audit.NewLogRecorder(alog, hasher)}
	if s.observer != nil {
		st.recorder = observedRecorder{Recorder: st.recorder, fn: s.observer}
	}
	st.kms, err = kms.New(bs, pathKey, s.table, st.recorder, kms.WithLogger(s.log), kmsWitness(alog), s.kmsHSM(), kms.WithClock(s.drift.now))
	if err != nil {
		alog.Close()
		return err
	}
	st.policy = policystore.New(bs, st.recorder, policystore.WithPrincipals(s.principalsFunc(st)), policystore.WithTaintedKeys(s.taintedKeysFunc(st)),
		policystore.WithRemoteDenyLists(s.remoteDenyLists(st)), policystore.WithServices(s.services(st)), policystore.WithTrustDomain(s.cfg.TrustDomain),
		policystore.WithStrictFederationLint(s.cfg.Policy.StrictFederationLint()), policystore.WithKeepVersions(s.cfg.Policy.KeepVersions))
	st.posture = posturestore.New(bs, st.recorder, s.table.Names())
	if err := s.applyRestoreRecord(ctx, st); err != nil { // policylint.go: before anything is served
		alog.Close()
		return fmt.Errorf("applying the restore record (%s), staying sealed; unseal again: %w", backup.RecordKey, err)
	}
	// Start the services before recording the unseal as done: an unseal
	// whose services fail is recorded as failed, with the cause. The
	// caller of the unseal is the caller of what it does (ca.init).
	if err := s.startIdentity(reqctx.With(ctx, caller), st); err != nil {
		err = fmt.Errorf("starting workload identity services: %w", err)
		if _, aerr := alog.Append(ctx, s.event(caller, "operator.unseal", audit.ResultError, err.Error())); aerr != nil {
			s.log.Error("could not audit the failed unseal", "err", aerr, "cause", err)
		}
		alog.Close()
		return err
	}
	if _, err := alog.Append(ctx, s.event(caller, "operator.unseal", "ok", "")); err != nil {
		s.stopIdentity(st)
		alog.Close()
		return fmt.Errorf("audit log unavailable, staying sealed: %w", err)
	}
	jobCtx, cancel := context.WithCancel(context.Background())
	st.cancel, st.jobCtx = cancel, jobCtx
	st.wg.Add(2)
	go func() { defer st.wg.Done(); st.kms.Watch(jobCtx) }()
	// The singleton jobs (rotation schedules, federation refresh...) run
	// only while this authority is the elected leader (ha.go).
	go func() { defer st.wg.Done(); s.runHA(jobCtx, st) }()
	st.wg.Add(1) // /healthz, metrics and dashboard warnings (policylint.go)
	go func() { defer st.wg.Done(); s.followPolicyLint(jobCtx, st) }()
	s.mu.Lock()
	s.unsealed.Store(st)
	s.mu.Unlock()
	s.log.Info("authority unsealed", "actor", caller.Actor)
	s.reportStoredPolicyLint(ctx, st)
	return nil
}

func (s *Server) rotationLoop(ctx context.Context, m *kms.Manager) {
	t := time.NewTicker(time.Duration(s.cfg.KMS.RotationCheckInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c := reqctx.With(ctx, reqctx.Caller{Actor: "system:rotation", RequestID: reqctx.NewRequestID()})
			if rotated, err := m.RotateDue(c); err != nil {
				s.log.Error("scheduled rotation failed", "err", err)
			} else if len(rotated) > 0 {
				s.log.Info("keys rotated on schedule", "keys", rotated)
			}
		}
	}
}

// sealInternal stops the unsealed services and wipes keys from memory.
func (s *Server) sealInternal() {
	s.mu.Lock()
	st := s.unsealed.Swap(nil)
	s.mu.Unlock()
	s.forgetHeldAnswers() // secrets kept for retries (dedup.go) go with the keys
	if st != nil {
		st.cancel()
		st.wg.Wait()
		s.stopIdentity(st)
		st.audit.Close()
	}
	if err := s.seals.Seal(context.Background()); err != nil {
		s.log.Error("sealing", "err", err)
	}
}

// event builds an audit event for caller (lifecycle events happen while
// sealed, without a recorder: they are appended to the log directly).
func (s *Server) event(c reqctx.Caller, op, result, errMsg string) audit.Event {
	ev := audit.NewEvent(reqctx.With(context.Background(), c), op, result)
	ev.Error = errMsg
	return ev
}

// recordSealed audits an event that happened while sealed: it is written
// to the sealed-events journal in the raw store (kept in memory if that
// fails) and appended first thing after the next unseal.
func (s *Server) recordSealed(ev audit.Event) {
	if err := s.journalSealed(ev); err == nil {
		return
	} else {
		s.log.Warn("could not journal an event that happened while sealed; keeping it in memory until the next unseal", "operation", ev.Operation, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) < 10000 {
		s.pending = append(s.pending, ev)
	}
}

// adminServerOptions are the admin socket's gRPC stack: credentials,
// interceptors and limits (the benchmarks measure a no-op method through
// the same stack).
func (s *Server) adminServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(peercred.Credentials()), // SO_PEERCRED: actors are local uids
		// One interceptor, not a chain of four: gRPC builds a closure per
		// link of a chain on every call.
		grpc.UnaryInterceptor(s.adminUnary),
		grpc.ChainStreamInterceptor(s.metrics.stream(), s.streamCaller),
		grpc.MaxRecvMsgSize(64 << 20), grpc.MaxSendMsgSize(64 << 20),
		// Calls run on long-lived goroutines whose stacks have grown
		// already, not on a new goroutine each (which grows its stack
		// again on every call); past them gRPC starts goroutines as before.
		grpc.NumStreamWorkers(adminStreamWorkers),
		// Small messages marshaled into pooled buffers (grpc-go pools only
		// those over 1 KiB).
		wirecodec.ServerOption(),
	}
}

// adminStreamWorkers is how many admin calls run at once on reused
// goroutines (the unary KMS aim is 64 concurrent callers).
const adminStreamWorkers = 64

// adminUnary is every unary admin call's way in, in this order: counted
// and timed in the metrics, the caller (uid, request id) attached, refused
// while cut off from etcd (cutOffRefusal), deduplicated by idempotency key
// (dedupUnary).
func (s *Server) adminUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	ctx = reqctx.With(ctx, adminCaller(ctx))
	var resp any
	err := s.cutOffRefusal(info.FullMethod)
	if err == nil {
		resp, err = s.dedupUnary(ctx, req, info, h)
	}
	s.metrics.observe(info.FullMethod, start, err)
	return resp, err
}

type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c callerStream) Context() context.Context { return c.ctx }

func (s *Server) streamCaller(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, callerStream{ss, reqctx.With(ss.Context(), adminCaller(ss.Context()))})
}

// auditHeadPath is where the audit log keeps its head (audit.Open reads
// it); only its presence is checked here.
const auditHeadPath = "audit/head"

// ErrAuditStateMissing: storage lost the audit signing key or the audit
// head of an authority that has used them; the authority stays sealed.
var ErrAuditStateMissing = errors.New("audit log state missing from storage")

// auditSigner returns the audit checkpoint signing key. It is created only
// for a fresh authority, whose storage holds nothing but the seal's and the
// barrier's own configuration: at init for auto seals and dev mode, at the
// first unseal after a share-seal init (the barrier stays sealed at init),
// and for an authority initialised before this rule that was never
// unsealed. Afterwards a missing key, or a key without an audit head, means
// audit/ was deleted or rolled back in storage: a new log, under a new key,
// would forget every destroyed key version, so the unseal fails instead.
func (s *Server) auditSigner(ctx context.Context, bs store.Store) (*ecdsa.PrivateKey, error) {
	k, err := loadSigner(ctx, bs)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("audit signing key: %w", err)
	}
	if k != nil {
		_, err := s.raw.Get(ctx, auditHeadPath)
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("reading the audit head %s: %w", auditHeadPath, err)
		}
	}
	others, err := s.dataBeyondSeal(ctx)
	if err != nil {
		return nil, err
	}
	if len(others) > 0 {
		missing := auditSigningKeyPath + " (the audit signing key)"
		if k != nil {
			missing = auditHeadPath + " (the audit log's head)"
		}
		return nil, fmt.Errorf("%w: storage has no %s, yet it holds the authority's data (%s): audit/ was deleted or rolled back in storage. "+
			"Starting a new audit log would forget which key versions were destroyed and who did what, so the authority stays sealed. "+
			"Restore the whole storage (the data directory or the etcd prefix) from a backup, find out who could write to it, then unseal again; "+
			"see docs/architecture.md, \"Key record rollback\"", ErrAuditStateMissing, missing, strings.Join(others, ", "))
	}
	if k != nil {
		return k, nil // a first unseal that stopped before the log's first event
	}
	return createSigner(ctx, bs)
}

// dataBeyondSeal names (up to a few) stored entries other than the seal's
// and barrier's configuration and the audit signing key: what a fresh
// authority, before its first unseal, does not have.
func (s *Server) dataBeyondSeal(ctx context.Context) ([]string, error) {
	kvs, err := s.raw.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("listing storage to check the audit log is complete: %w", err)
	}
	var out []string
	n := 0
	for _, kv := range kvs {
		if strings.HasPrefix(kv.Key, barrier.ReservedPrefix) || kv.Key == auditSigningKeyPath {
			continue
		}
		if n++; n <= 3 {
			out = append(out, kv.Key)
		}
	}
	if n > 3 {
		out = append(out, fmt.Sprintf("and %d more", n-3))
	}
	return out, nil
}

// loadSigner reads the audit checkpoint signing key; it lives only behind
// the barrier. A missing key returns an error wrapping store.ErrNotFound.
func loadSigner(ctx context.Context, bs store.Store) (*ecdsa.PrivateKey, error) {
	kv, err := bs.Get(ctx, auditSigningKeyPath)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParseECPrivateKey(kv.Value)
	if err != nil {
		return nil, fmt.Errorf("stored audit signing key is unreadable: %w", err)
	}
	return k, nil
}

// createSigner makes the audit signing key of a fresh authority.
func createSigner(ctx context.Context, bs store.Store) (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if _, err := bs.CompareAndSwap(ctx, auditSigningKeyPath, der, 0); errors.Is(err, store.ErrConflict) {
		return loadSigner(ctx, bs) // another authority created it first
	} else if err != nil {
		return nil, fmt.Errorf("storing the audit signing key: %w", err)
	}
	return k, nil
}
