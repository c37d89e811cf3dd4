// Package nodeapi is the authority's Node API: the gRPC service agents call
// over mutual TLS on TCP to attest (join token, x509pop or k8s_psat), renew their
// agent SVID, sync the registration entries they serve and have workload
// X509- and JWT-SVIDs signed. The server authenticates as
// spiffe://TD/ward/server with an X509-SVID from the CA, renewed at half
// life; Attest is the only call allowed without a client certificate. The
// agent methods (and the policy stream, WatchPolicy) need the current SVID
// of a registered, non-evicted agent; the workload methods (the KMS, each
// call decided by the current policy version) need a workload SVID, never
// one in the reserved /ward/ namespace (see Server.authenticate).
// Every issuance is audited; nothing is released if its event cannot be
// written.
package nodeapi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// ServerID is the SPIFFE ID the Node API presents:
// spiffe://TD/ward/server. Agents must authorize exactly this ID.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, registry.ServerIDPath)
}

// Config configures a Server.
type Config struct {
	// CA signs agent, workload and the server's own SVIDs. Required.
	CA *ca.CA
	// Registry holds entries, join tokens and agents. Required.
	Registry *registry.Registry
	// Audit records every issuance. Required.
	Audit audit.Recorder
	// X509PopRoots verifies x509pop node certificates; nil disables x509pop.
	X509PopRoots *x509.CertPool
	// PSATClusters enables k8s_psat node attestation for these clusters,
	// by name; empty disables it.
	PSATClusters map[string]PSATCluster
	// AgentSVIDTTL is the agent SVID lifetime (0 = the CA's SVID TTL).
	AgentSVIDTTL time.Duration
	// DNSNames are added to the server certificate.
	DNSNames []string
	// AttestTimeout bounds one attestation exchange (default 30s).
	AttestTimeout time.Duration
	// Log receives operational messages (default: discard).
	Log *slog.Logger
	// Clock returns the current time (default time.Now).
	Clock func() time.Time
	// Policy, when set, is streamed to agents (PolicyDistribution.WatchPolicy)
	// and decides the workload KMS's calls.
	Policy *policystore.Store
	// KMS, when set, is served to workloads: the KMS service, every call
	// authorized by Policy's current version (see workloadkms.go).
	// Needs Policy.
	KMS *kms.Manager
	// OnDecision, when set, is called with every policy decision on a
	// workload KMS call and the time it took, e.g. to count it in a metric.
	OnDecision func(action string, d policy.Decision, took time.Duration)
	// AuditLog, when set, gives agents the authority's latest signed audit
	// checkpoint and a consistency proof from the one they last verified
	// with every Sync, so an agent notices a log that went backwards.
	AuditLog AuditSource
	// MaxConcurrentAttests bounds attestations in progress (default 64);
	// more are refused with ResourceExhausted.
	MaxConcurrentAttests int
	// FederatedBundles, when set, returns the SPIFFE bundle JSON of each
	// trust domain among names that this authority federates with (the
	// others are left out): Sync sends those the agent's entries name in
	// federates_with.
	FederatedBundles func(names []string) map[string][]byte
	// ForeignTunnels, when set, returns the WireGuard tunnels received from
	// each federated trust domain that shares its network (the federation
	// Manager's, by trust domain name) and a channel closed when they may
	// change: WatchPeers merges those an agent asks for (docs/network.md).
	ForeignTunnels func() (map[string][]registry.Tunnel, <-chan struct{})
	// OnConnRefused, when set, is called for every connection the Node
	// API closes at accept for being over a connection limit, with the
	// reason (a Refused* constant), e.g. to count it in a metric.
	OnConnRefused func(reason string)
	// Telemetry, when set, takes each agent's telemetry report (JSON of a
	// telemetry.NodeReport; the Telemetry service, telemetry.go): node is
	// the authenticated agent's SPIFFE ID. Return ErrOtherNode for a
	// report naming another node.
	Telemetry func(node string, report []byte) error
	// TelemetryInterval is how often agents report (default
	// DefaultTelemetryInterval); each agent may report once per half.
	TelemetryInterval time.Duration
	// OnTelemetry, when set, is called with the reason of every refused
	// telemetry report (too_large, rate_limited).
	OnTelemetry func(reason string)
	// OnSVIDsDisplaced, when set, is called with the number of X509-SVIDs
	// deny-listed to make room for new ones of entries at their bound
	// (registry.IssueLimits.SVIDsPerEntry; service.go displacer).
	OnSVIDsDisplaced func(n int)
	// AdvertisedEndpoints lets an agent register a WireGuard endpoint
	// whose IP is not the address its connection came from (authority
	// config network.advertised_endpoints: NAT). Off, such an endpoint
	// is refused (an agent could aim every peer's handshakes at another
	// host).
	AdvertisedEndpoints bool
	// Available, when set, says whether this authority can serve now. An
	// error (an authority cut off from the etcd it shares with others)
	// fails every call at once with Unavailable, before authentication,
	// so agents move on to another authority instead of waiting on one
	// whose store does not answer; lost, when not nil, is closed once the
	// authority can no longer serve: open streams (WatchPolicy,
	// WatchPeers) end then with Unavailable and their agents reconnect
	// elsewhere.
	Available func() (lost <-chan struct{}, err error)
	// OnRelayDrop, when set, is told about every federated tunnel or
	// prefix WatchPeers does not relay (federation.Manager's
	// ReportRelayDrop: logged and audited once per change, counted);
	// unset, each is logged as a warning.
	OnRelayDrop RelayDropFunc
}

// AuditSource is the authority's audit log as Sync needs it.
type AuditSource interface {
	// LatestCheckpoint is the newest signed head (it may lag the stored
	// head by the log's checkpoint interval; never smaller than atLeast,
	// the agent's known size, unless the log is) and the key that signs it.
	LatestCheckpoint(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, crypto.PublicKey, error)
	// ConsistencyProof proves the tree of oldSize records is a prefix of
	// the tree of newSize records (RFC 6962).
	ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([][]byte, error)
}

// MaxBatch is the largest number of SVIDs one SignX509SVIDs call may ask for.
const MaxBatch = 1000

const maxCSR = 16 << 10

// Server is the Node API.
type Server struct {
	cfg  Config
	td   spiffeid.TrustDomain
	grpc *grpc.Server // connections that presented a verified SVID
	anon *grpc.Server // connections without a client certificate: Attest only

	authLn, anonLn *chanListener
	attests        chan struct{} // semaphore: attestations in progress
	limits         *connLimits

	certMu sync.Mutex
	cert   atomic.Pointer[serverCert]

	verified svidCache // client chains verifySVID accepted

	lnMu sync.Mutex
	ln   net.Listener

	// engine holds Policy's current version, compiled, for the workload
	// KMS; followPolicy keeps it current from Serve until Stop.
	engine     *policy.Engine
	followOnce sync.Once
	stopFollow context.CancelFunc
	followDone chan struct{}
}

type serverCert struct {
	tls     *tls.Certificate
	renewAt time.Time
	inter   []byte // raw intermediate that signed it
}

// New builds the Node API server; call Serve or Listen.
func New(cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	s.register(s.services())
	return s, nil
}

// services are the workload KMS and policy distribution the Config asks
// for (nil when it does not).
func (s *Server) services() (kmsSrv wardv1.KMSServer, policySrv wardv1.PolicyDistributionServer) {
	if m := s.cfg.KMS; m != nil {
		kmsSrv = &workloadKMS{s: s, inner: &apiconv.KMS{Manager: func() (*kms.Manager, error) { return m, nil }}}
	}
	if s.cfg.Policy != nil {
		policySrv = &policyDistribution{ps: s.cfg.Policy}
	}
	return kmsSrv, policySrv
}

// newServer builds the server without its services (see register).
func newServer(cfg Config) (*Server, error) {
	if cfg.CA == nil || cfg.Registry == nil || cfg.Audit == nil {
		return nil, errors.New("nodeapi: CA, Registry and Audit are required")
	}
	if cfg.KMS != nil && cfg.Policy == nil {
		return nil, errors.New("nodeapi: the workload KMS needs the policy store (Policy)")
	}
	if cfg.AttestTimeout <= 0 {
		cfg.AttestTimeout = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	for _, n := range cfg.DNSNames {
		if err := registry.CheckDNSName(n); err != nil {
			return nil, fmt.Errorf("nodeapi: node_api_dns_names: %v", err)
		}
	}
	if cfg.MaxConcurrentAttests <= 0 {
		cfg.MaxConcurrentAttests = defaultMaxAttests
	}
	s := &Server{cfg: cfg, td: cfg.CA.TrustDomain(), attests: make(chan struct{}, cfg.MaxConcurrentAttests), engine: policy.NewEngine()}
	s.authLn, s.anonLn = newChanListener(), newChanListener()
	s.limits = newConnLimits(cfg.OnConnRefused)
	// See limits.go: the listener does the TLS handshake and sends each
	// connection to one of two servers by whether it presented a verified
	// SVID, so an unauthenticated peer never gets the large message limit.
	s.grpc = grpc.NewServer(
		grpc.Creds(handshaken{}),
		grpc.ChainUnaryInterceptor(s.authUnary),
		grpc.ChainStreamInterceptor(s.authStream),
		grpc.MaxRecvMsgSize(maxAuthenticatedMsg), grpc.MaxSendMsgSize(64<<20),
		grpc.MaxConcurrentStreams(maxAuthStreams),
		// HTTP/2 header blocks are not flow-controlled: bound what a peer
		// can make us buffer before any stream exists (see limits.go).
		grpc.MaxHeaderListSize(maxAuthHeaderList),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ConnectionTimeout(handshakeTimeout),
		// Calls of authenticated peers run on reused goroutines (their
		// stacks already grown), not a new goroutine each; past
		// authStreamWorkers at once gRPC starts goroutines as before.
		grpc.NumStreamWorkers(authStreamWorkers),
	)
	s.anon = grpc.NewServer(
		grpc.Creds(handshaken{}),
		grpc.ChainUnaryInterceptor(s.authUnary),
		grpc.ChainStreamInterceptor(s.anonStream),
		grpc.MaxRecvMsgSize(maxAttestMsg), grpc.MaxSendMsgSize(1<<20),
		// Static windows (this also turns off BDP window growth): an
		// unauthenticated connection has at most this much in flight
		// towards us, whatever message length it announces.
		grpc.InitialWindowSize(maxAttestMsg), grpc.InitialConnWindowSize(maxAttestMsg),
		grpc.MaxConcurrentStreams(maxAnonStreams),
		grpc.MaxHeaderListSize(maxAnonHeaderList),
		// Certificate-less connections do not stay: idle ones close after
		// anonMaxIdle, every one after anonMaxAge (plus the grace for an
		// attestation in progress).
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: anonMaxIdle, MaxConnectionAge: anonMaxAge, MaxConnectionAgeGrace: anonMaxAgeGrace}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ConnectionTimeout(handshakeTimeout),
	)
	return s, nil
}

// register mounts the Node API's services on both gRPC servers: Node,
// and the workload KMS and policy distribution when configured. They are
// on the anonymous server too, so that a call without a certificate gets
// authenticate's Unauthenticated, not Unimplemented.
func (s *Server) register(kmsSrv wardv1.KMSServer, policySrv wardv1.PolicyDistributionServer) {
	var tel wardv1.TelemetryServer
	if s.cfg.Telemetry != nil {
		tel = newTelemetryService(s)
	}
	for _, g := range []*grpc.Server{s.grpc, s.anon} {
		wardv1.RegisterNodeServer(g, &nodeService{s: s})
		wardv1.RegisterNodeNetworkServer(g, &nodeNetwork{s: s})
		if kmsSrv != nil {
			wardv1.RegisterKMSServer(g, kmsSrv)
		}
		if policySrv != nil {
			wardv1.RegisterPolicyDistributionServer(g, policySrv)
		}
		if tel != nil {
			wardv1.RegisterTelemetryServer(g, tel)
		}
	}
}

// TLSConfig is the server side: TLS 1.3 only, the server's X509-SVID,
// client certificates requested (not required: Attest runs without) and,
// when sent, verified as agent SVIDs against the current bundle.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.certificate() },
		ClientAuth:     tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			// Any SVID of this trust domain may connect; authenticate
			// decides per call whether it must be an agent.
			_, err := s.verifySVID(raw, chainSum(raw))
			return err
		},
	}
}

// bundleSource adapts the CA's live bundle to go-spiffe.
type bundleSource struct{ ca *ca.CA }

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	bundle, err := b.ca.Bundle()
	if err != nil {
		return nil, err
	}
	return bundle.GetX509BundleForTrustDomain(td)
}

// verifySVID checks that raw is an X509-SVID of this trust domain, valid
// now against the current bundle.
// A chain that verified against the same anchors is not verified again
// while every certificate of it is still valid (see svidCache).
func (s *Server) verifySVID(raw [][]byte, sum [32]byte) (spiffeid.ID, error) {
	now := s.cfg.Clock()
	var src x509bundle.Source = bundleSource{s.cfg.CA}
	// The CA's own slice, not a copy of its bundle: this runs on every call.
	anchors, err := s.cfg.CA.X509Authorities()
	if err == nil {
		if id, ok := s.verified.get(raw, sum, anchors, now); ok {
			return id, nil
		}
		// Verify against exactly the anchors the cache will name.
		src = x509bundle.FromX509Authorities(s.td, anchors)
	}
	id, chains, err := x509svid.ParseAndVerify(raw, src, x509svid.WithTime(now))
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("client SVID rejected: %v", err)
	}
	if anchors != nil && len(chains) > 0 {
		s.verified.put(raw, sum, anchors, id, chains[0])
	}
	return id, nil
}

// certificate returns the server's X509-SVID, signing a new one when none
// exists, past half life, or when the CA's active intermediate changed.
func (s *Server) certificate() (*tls.Certificate, error) {
	now := s.cfg.Clock()
	inter, ierr := s.cfg.CA.ActiveIntermediate()
	fresh := func(c *serverCert) bool {
		return c != nil && now.Before(c.renewAt) && (ierr != nil || bytes.Equal(c.inter, inter.Raw))
	}
	if c := s.cert.Load(); fresh(c) {
		return c.tls, nil
	}
	s.certMu.Lock()
	defer s.certMu.Unlock()
	if c := s.cert.Load(); fresh(c) {
		return c.tls, nil
	}
	c, err := s.issueServerCert(now)
	if err != nil {
		if old := s.cert.Load(); old != nil && now.Before(old.tls.Leaf.NotAfter) {
			s.cfg.Log.Warn("renewing the Node API certificate failed; serving the current one", "err", err)
			return old.tls, nil
		}
		return nil, err
	}
	s.cert.Store(c)
	return c.tls, nil
}

func (s *Server) issueServerCert(now time.Time) (*serverCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := ServerID(s.td)
	chain, err := s.cfg.CA.SignX509SVID(context.Background(), ca.SVIDRequest{ID: id, PublicKey: key.Public(), DNSNames: s.cfg.DNSNames})
	if err != nil {
		return nil, fmt.Errorf("signing the Node API certificate %s: %w", id, err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	leaf := chain[0]
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	sc := &serverCert{tls: tc, renewAt: leaf.NotBefore.Add(life / 2)}
	if len(chain) > 1 {
		sc.inter = chain[1].Raw
	}
	s.cfg.Log.Info("Node API certificate issued", "spiffe_id", id, "serial", leaf.SerialNumber.Text(16), "expires", leaf.NotAfter)
	return sc, nil
}

// Listen binds addr (host:port) and serves in the background.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on identity.node_api_address %s: %w", addr, err)
	}
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	go s.Serve(ln)
	return nil
}

// Serve serves on ln until Stop.
func (s *Server) Serve(ln net.Listener) error {
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	if s.cfg.KMS != nil {
		s.followOnce.Do(func() {
			ctx, cancel := context.WithCancel(context.Background())
			s.stopFollow, s.followDone = cancel, make(chan struct{})
			go func() { defer close(s.followDone); s.followPolicy(ctx) }()
		})
	}
	go s.grpc.Serve(s.authLn)
	go s.anon.Serve(s.anonLn)
	return s.route(ln)
}

// Addr is the bound address, or nil before Listen/Serve.
func (s *Server) Addr() net.Addr {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Stop closes the listener and ends open calls (gracefully for up to 5s).
func (s *Server) Stop() {
	s.lnMu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.lnMu.Unlock()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); s.anon.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.grpc.Stop()
		s.anon.Stop()
	}
	s.authLn.Close()
	s.anonLn.Close()
	s.followOnce.Do(func() {}) // none starts after Stop
	if s.stopFollow != nil {
		s.stopFollow()
		<-s.followDone
	}
}

// --- authentication ---

type agentKey struct{}

// agentSerialKey carries the serial (hex) of the authenticated agent's SVID.
type agentSerialKey struct{}

type workloadKey struct{}

// WorkloadFrom returns the authenticated workload of a call to a
// workload method (zero otherwise).
func WorkloadFrom(ctx context.Context) spiffeid.ID {
	id, _ := ctx.Value(workloadKey{}).(spiffeid.ID)
	return id
}

// agentFrom returns the authenticated agent of a call.
func agentFrom(ctx context.Context) spiffeid.ID {
	id, _ := ctx.Value(agentKey{}).(spiffeid.ID)
	return id
}

// workloadMethod reports the methods any workload SVID of the trust
// domain may call: the KMS (each call is then authorized by policy).
// Every other method needs an agent SVID.
func workloadMethod(fullMethod string) bool { return strings.HasPrefix(fullMethod, "/ward.v1.KMS/") }

const (
	attestMethod = "/ward.v1.Node/Attest"
	renewMethod  = "/ward.v1.Node/RenewAgent"
)

// taintedIn returns the ID of a tainted CA key among the issuers in raw
// (DER), or "". An agent whose SVID chains to one may only renew.
func (s *Server) taintedIn(raw [][]byte) string {
	tainted := s.cfg.CA.TaintedKeyIDs()
	if len(tainted) == 0 {
		return ""
	}
	for _, der := range raw {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			continue
		}
		kid, err := keyutil.CAKeyID(c.PublicKey)
		if err != nil {
			continue
		}
		for _, t := range tainted {
			if t == kid {
				return kid
			}
		}
	}
	return ""
}

// reserved reports whether id is in the /ward/ namespace, which belongs to
// the authority (spiffe://TD/ward/server) and its agents
// (spiffe://TD/ward/agent/...); registry entries can never name it.
func reserved(id spiffeid.ID) bool {
	return id.Path() == "/ward" || strings.HasPrefix(id.Path(), "/ward/")
}

// authenticate re-verifies the caller's SVID (a connection may outlive its
// certificate or the root that signed it) and decides who it is. Every
// Node API method passes here, so here is where identity is settled:
//
//   - Attest needs no SVID (it is how a node gets one).
//   - An ID in the reserved /ward/ namespace is never a workload. It must
//     be an agent ID whose record exists, is not evicted and names this
//     very certificate (registry.Authorize: current serial, or the previous
//     one for registry.SupersededGrace after the renewal; RenewAgent needs
//     the current one, registry.AuthorizeRenewal); otherwise the call is refused whatever the
//     method. An agent may call the agent methods (and WatchPolicy) only:
//     it is not a workload, so the workload methods (the KMS) refuse it
//     even when it is current. spiffe://TD/ward/server and any other
//     /ward/ path are refused outright.
//   - Any other SVID of the trust domain is a workload and may call the
//     workload methods only (authorization is then the service's job).
//
// A certificate chaining to a tainted CA key may only call RenewAgent.
func (s *Server) authenticate(ctx context.Context, method string) (context.Context, error) {
	p, _ := peer.FromContext(ctx)
	ci, _ := peerTLS(p)
	raw := ci.raw
	var leaf *x509.Certificate
	if len(raw) > 0 {
		leaf = ci.State.PeerCertificates[0]
	}
	if method == attestMethod {
		if leaf != nil {
			// Attest is served on connections without a certificate only,
			// where messages are bounded to what attestation needs.
			return nil, status.Error(codes.FailedPrecondition, "Attest is for nodes without an SVID: dial the Node API without a client certificate to attest")
		}
		actor := "node:unauthenticated"
		if p != nil && p.Addr != nil {
			actor += "@" + p.Addr.String()
		}
		return reqctx.With(ctx, reqctx.Caller{Actor: actor, RequestID: reqctx.RequestIDFrom(ctx)}), nil
	}
	workload := workloadMethod(method)
	if leaf == nil {
		if workload {
			return nil, status.Error(codes.Unauthenticated, "this call needs your workload's X509-SVID as TLS client certificate (from the SPIFFE Workload API)")
		}
		return nil, status.Error(codes.Unauthenticated, "this call needs an agent SVID as TLS client certificate: attest first")
	}
	id, err := s.verifySVID(raw, ci.sum)
	if err != nil {
		if workload {
			return nil, status.Errorf(codes.Unauthenticated, "%v: fetch a fresh SVID from the Workload API", err)
		}
		return nil, status.Errorf(codes.Unauthenticated, "agent SVID rejected: %v: renew or attest again", err)
	}
	if !reserved(id) {
		if !workload {
			return nil, status.Errorf(codes.Unauthenticated, "client SVID %s is not an agent ID (spiffe://%s%s...): %s is for agents", id, s.td.Name(), registry.AgentIDPrefix, method)
		}
		if kid := s.taintedIn(raw[1:]); kid != "" {
			return nil, status.Errorf(codes.Unauthenticated, "workload SVID chains to tainted CA key %s: fetch a re-issued SVID from the Workload API", kid)
		}
		ctx = reqctx.With(ctx, reqctx.Caller{Actor: id.String(), RequestID: reqctx.RequestIDFrom(ctx)})
		return context.WithValue(ctx, workloadKey{}, id), nil
	}
	// The reserved namespace: only a current agent gets through.
	if !registry.IsAgentID(s.td, id) {
		return nil, status.Errorf(codes.PermissionDenied, "client SVID %s is in the reserved /ward/ namespace but is not an agent ID: it may not call the Node API", id)
	}
	ctx = reqctx.With(ctx, reqctx.Caller{Actor: id.String(), RequestID: reqctx.RequestIDFrom(ctx)})
	if kid := s.taintedIn(raw[1:]); kid != "" && method != renewMethod {
		return nil, status.Errorf(codes.Unauthenticated, "agent SVID chains to tainted CA key %s: call RenewAgent for a re-issued SVID", kid)
	}
	serial := leaf.SerialNumber.Text(16)
	authorize := s.cfg.Registry.Authorize
	if method == renewMethod {
		// Only the current SVID may renew, and the one it replaced only
		// while the current one was never presented (the agent never got
		// the renewal's response): a superseded one whose successor is in
		// use would make its holder's certificate current and lock the
		// real agent out.
		authorize = s.cfg.Registry.AuthorizeRenewal
	}
	if _, err := authorize(ctx, id, serial); err != nil {
		return nil, errs.ToStatus(err)
	}
	if workload {
		return nil, status.Errorf(codes.PermissionDenied, "agent %s may not call %s: an agent SVID is not a workload identity; call with the workload's own SVID (register an entry for it)", id, method)
	}
	ctx = context.WithValue(ctx, agentSerialKey{}, serial)
	return context.WithValue(ctx, agentKey{}, id), nil
}

func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if _, err := s.available(); err != nil {
		return nil, err
	}
	ctx, err := s.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// ctxStream carries the authenticated context and re-authenticates the
// caller before every message it sends: a long-lived stream (WatchPolicy)
// must end when its agent is evicted, its SVID superseded or expired, or
// its CA key tainted, not run on with the identity it had when it opened.
type ctxStream struct {
	grpc.ServerStream
	ctx    context.Context
	method string
	s      *Server
}

func (c ctxStream) Context() context.Context { return c.ctx }

func (c ctxStream) SendMsg(m any) error {
	if c.method != attestMethod {
		if _, err := c.s.authenticate(c.ServerStream.Context(), c.method); err != nil {
			return err
		}
	}
	return c.ServerStream.SendMsg(m)
}

func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	lost, err := s.available()
	if err != nil {
		return err
	}
	ctx, err := s.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	if lost == nil {
		return h(srv, ctxStream{ss, ctx, info.FullMethod, s})
	}
	// The stream ends when the authority can no longer serve, so its
	// agent follows another authority (a policy watch on a store that
	// does not answer would keep the agent on a stale version).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	err = h(srv, ctxStream{ss, ctx, info.FullMethod, s})
	select {
	case <-lost:
		if _, aerr := s.available(); aerr != nil {
			return aerr
		}
	default:
	}
	return err
}

// available is Config.Available: nil, nil when the authority can serve
// (or nothing says otherwise); its error as Unavailable.
func (s *Server) available() (<-chan struct{}, error) {
	if s.cfg.Available == nil {
		return nil, nil
	}
	lost, err := s.cfg.Available()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	return lost, nil
}
