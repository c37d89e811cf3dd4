// Package workloadapi serves the SPIFFE Workload API on a unix socket, as
// the standard specifies, with the generated protos of go-spiffe: every call
// must carry the `workload.spiffe.io: true` metadata; the caller is
// identified by its peer credentials and an attest.Attestor; FetchX509SVID,
// FetchX509Bundles and FetchJWTBundles stream the full state at once and
// again on every change of the Source; FetchJWTSVID mints JWT-SVIDs;
// ValidateJWTSVID checks them against the trust bundles.
package workloadapi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/peercred"
)

// HeaderKey and HeaderValue: the metadata every Workload API call must carry.
const (
	HeaderKey   = "workload.spiffe.io"
	HeaderValue = "true"
)

// Identity is one SVID a workload is entitled to.
type Identity struct {
	ID spiffeid.ID
	// Chain is the X509-SVID, leaf first, then intermediates (roots are in
	// the bundle). An identity without a chain yet is offered for JWT-SVIDs
	// only.
	Chain []*x509.Certificate
	// Key is the X509-SVID's private key (sent as unencrypted PKCS#8, as the
	// standard requires).
	Key crypto.Signer
	// Hint is the operator's guidance when a workload gets several SVIDs.
	Hint string
	// FederatesWith names foreign trust domains whose bundles accompany
	// this SVID (federated_bundles).
	FederatesWith []spiffeid.TrustDomain
}

// Source is the node agent's view of identities and trust, implemented by
// the agent (and by tests). All methods must be safe for concurrent use and
// must not block for long: streams call them on every change.
type Source interface {
	// Identities returns what a caller attested with selectors (normalized)
	// is entitled to; empty means nothing.
	Identities(selectors []attest.Selector) []Identity
	// Bundles returns the bundle of the agent's own trust domain and the
	// federated bundles of foreign trust domains.
	Bundles() (own *spiffebundle.Bundle, federated []*spiffebundle.Bundle)
	// MintJWTSVID returns a JWT-SVID (JWS compact form) for id, which the
	// server has checked the caller is entitled to.
	MintJWTSVID(ctx context.Context, id spiffeid.ID, audience []string) (string, error)
	// Changed returns a channel closed at the next change of identities or
	// bundles.
	Changed() <-chan struct{}
}

// CRLSource is optionally implemented by a Source that has certificate
// revocation lists (DER) for its trust domain, e.g. revoking a tainted
// intermediate; they go in the crl fields of X509SVIDResponse and
// X509BundlesResponse.
type CRLSource interface {
	CRLs() [][]byte
}

// RevocationSource is optionally implemented by a Source that follows the
// authority's deny-list (the agent): ValidateJWTSVID refuses a JWT-SVID
// whose jti it names (`ward agent evict` revokes those minted through the
// evicted agent until their exp; a federated trust domain's revocations
// reach it over the revocation channel). td is the token's trust domain.
type RevocationSource interface {
	JWTRevoked(td spiffeid.TrustDomain, jti string) bool
}

// Server implements the SPIFFE Workload API.
type Server struct {
	pb.UnimplementedSpiffeWorkloadAPIServer

	src                 Source
	att                 attest.Attestor
	log                 *slog.Logger
	allowUnauthVerifier bool
	grpc                *grpc.Server

	// refusedMu guards refusedLog: when each refused selector set was last
	// logged (a client retrying with backoff must not flood the log).
	refusedMu  sync.Mutex
	refusedLog map[string]time.Time
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithAllowUnauthenticatedVerifiers lets callers without an identity fetch
// bundles and validate JWT-SVIDs (off by default, as in SPIRE).
func WithAllowUnauthenticatedVerifiers() Option {
	return func(s *Server) { s.allowUnauthVerifier = true }
}

// New returns a Workload API server for src, attesting callers with att.
func New(src Source, att attest.Attestor, opts ...Option) *Server {
	s := &Server{src: src, att: att, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(s)
	}
	s.grpc = grpc.NewServer(
		grpc.Creds(peercred.Credentials()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := checkHeader(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := checkHeader(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)
	pb.RegisterSpiffeWorkloadAPIServer(s.grpc, s)
	return s
}

// Listen creates the unix socket at path, replacing a stale socket left by
// a previous run (never another kind of file), readable and writable by every
// local user: attestation, not file permissions, decides who gets what.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("workloadapi: %s exists and is not a socket; remove it or choose another socket path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("workloadapi: remove stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		l.Close()
		return nil, fmt.Errorf("workloadapi: chmod %s: %w", path, err)
	}
	return l, nil
}

// Serve serves on l (a unix listener) until Stop.
func (s *Server) Serve(l net.Listener) error { return s.grpc.Serve(l) }

// Stop closes the listeners and every open stream.
func (s *Server) Stop() { s.grpc.Stop() }

func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(HeaderKey)
	if len(v) != 1 || v[0] != HeaderValue {
		return status.Errorf(codes.InvalidArgument, "security header missing from request: set metadata %q to %q", HeaderKey, HeaderValue)
	}
	return nil
}

// attestCaller returns the caller's selectors.
func (s *Server) attestCaller(ctx context.Context) ([]attest.Selector, error) {
	c, ok := peercred.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Internal, "caller has no peer credentials; serve with workloadapi.Listen and Serve")
	}
	sel, err := s.att.Attest(ctx, c)
	if err != nil {
		s.log.Warn("workload attestation failed", "pid", c.PID, "uid", c.UID, "error", err)
		return nil, status.Errorf(codes.PermissionDenied, "workload attestation failed for pid %d", c.PID)
	}
	return attest.Normalize(sel), nil
}

// checkUnchanged refuses to answer a caller whose process runs another
// program than when it connected (it exec'd: the binary selectors it was
// attested with no longer describe it, and the socket may be in anyone's
// hands) or has exited. It runs before every answer, including each
// message of a stream. Callers without a recorded image got no binary
// selectors, so there is nothing to re-check.
func (s *Server) checkUnchanged(ctx context.Context) error {
	c, ok := peercred.FromContext(ctx)
	if !ok {
		return status.Error(codes.Internal, "caller has no peer credentials; serve with workloadapi.Listen and Serve")
	}
	if c.Image.IsZero() {
		return nil
	}
	if err := attest.CheckImage("/proc", c.PID, c.Image); err != nil {
		s.log.Warn("workload API caller changed program since it connected; refusing to answer", "pid", c.PID, "uid", c.UID, "error", err)
		return status.Errorf(codes.PermissionDenied, "pid %d runs another program than when it connected (exec after connect) or has exited: connect to the Workload API after the last exec", c.PID)
	}
	return nil
}

// refusalLogEvery bounds how often the same refused caller (the same
// selectors) is logged; maxRefusalKeys bounds the memory of it.
const (
	refusalLogEvery = time.Minute
	maxRefusalKeys  = 1024
	maxShownSelect  = 16
)

// refuse is the answer to a caller that matches no registration entry:
// PermissionDenied naming the selectors it attested with (its own uid,
// gids, binary path and digest: facts about the caller, never secrets),
// so that a workload, or a proxy waiting for its SVID, can say what is
// missing. The agent logs the refusal too, at most once a minute for the
// same selectors.
func (s *Server) refuse(ctx context.Context, sel []attest.Selector) error {
	shown := make([]string, 0, min(len(sel), maxShownSelect))
	for i, x := range sel {
		if i == maxShownSelect {
			shown = append(shown, fmt.Sprintf("(%d more)", len(sel)-maxShownSelect))
			break
		}
		shown = append(shown, x.String())
	}
	list := strings.Join(shown, " ")
	var pid int32
	var uid uint32
	if c, ok := peercred.FromContext(ctx); ok {
		pid, uid = c.PID, c.UID
	}
	now := time.Now()
	s.refusedMu.Lock()
	if s.refusedLog == nil || len(s.refusedLog) >= maxRefusalKeys {
		s.refusedLog = map[string]time.Time{}
	}
	logIt := now.Sub(s.refusedLog[list]) >= refusalLogEvery
	if logIt {
		s.refusedLog[list] = now
	}
	s.refusedMu.Unlock()
	if logIt {
		s.log.Warn("workload API: no registration entry matches the caller; refused (same caller logged at most once a minute)",
			"pid", pid, "uid", uid, "selectors", list)
	}
	return status.Errorf(codes.PermissionDenied,
		"no identity issued: no registration entry of this agent matches the caller (pid %d), which attested as [%s]; "+
			"register an entry with a subset of these selectors under this node's agent (`ward entry create --parent AGENT-ID --selector %s ...`, AGENT-ID from `ward agent list`)",
		pid, list, firstOr(shown, "unix:uid:N"))
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

// FetchX509SVID implements the Workload API.
func (s *Server) FetchX509SVID(_ *pb.X509SVIDRequest, stream grpc.ServerStreamingServer[pb.X509SVIDResponse]) error {
	sel, err := s.attestCaller(stream.Context())
	if err != nil {
		return err
	}
	return stream_(s, stream, func() (*pb.X509SVIDResponse, error) { return s.x509SVIDResponse(stream.Context(), sel) })
}

// FetchX509Bundles implements the Workload API.
func (s *Server) FetchX509Bundles(_ *pb.X509BundlesRequest, stream grpc.ServerStreamingServer[pb.X509BundlesResponse]) error {
	sel, err := s.attestCaller(stream.Context())
	if err != nil {
		return err
	}
	return stream_(s, stream, func() (*pb.X509BundlesResponse, error) {
		if err := s.mayVerify(stream.Context(), sel); err != nil {
			return nil, err
		}
		own, fed := s.bundlesFor(sel)
		resp := &pb.X509BundlesResponse{Bundles: map[string][]byte{}, Crl: s.crls()}
		for _, b := range append([]*spiffebundle.Bundle{own}, fed...) {
			if b != nil {
				resp.Bundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
			}
		}
		return resp, nil
	})
}

// FetchJWTBundles implements the Workload API.
func (s *Server) FetchJWTBundles(_ *pb.JWTBundlesRequest, stream grpc.ServerStreamingServer[pb.JWTBundlesResponse]) error {
	sel, err := s.attestCaller(stream.Context())
	if err != nil {
		return err
	}
	return stream_(s, stream, func() (*pb.JWTBundlesResponse, error) {
		if err := s.mayVerify(stream.Context(), sel); err != nil {
			return nil, err
		}
		own, fed := s.bundlesFor(sel)
		resp := &pb.JWTBundlesResponse{Bundles: map[string][]byte{}}
		for _, b := range append([]*spiffebundle.Bundle{own}, fed...) {
			if b == nil {
				continue
			}
			doc, err := b.JWTBundle().Marshal()
			if err != nil {
				return nil, status.Errorf(codes.Internal, "marshal JWT bundle of %s: %v", b.TrustDomain(), err)
			}
			resp.Bundles[b.TrustDomain().IDString()] = doc
		}
		return resp, nil
	})
}

// FetchJWTSVID implements the Workload API.
func (s *Server) FetchJWTSVID(ctx context.Context, req *pb.JWTSVIDRequest) (*pb.JWTSVIDResponse, error) {
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, a := range req.Audience {
		if a == "" {
			return nil, status.Error(codes.InvalidArgument, "audience must not contain empty strings")
		}
	}
	var want spiffeid.ID
	if req.SpiffeId != "" {
		id, err := spiffeid.FromString(req.SpiffeId)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid requested SPIFFE ID: %v", err)
		}
		want = id
	}
	sel, err := s.attestCaller(ctx)
	if err != nil {
		return nil, err
	}
	resp := &pb.JWTSVIDResponse{}
	for _, ident := range s.src.Identities(sel) {
		if !want.IsZero() && ident.ID != want {
			continue
		}
		tok, err := s.src.MintJWTSVID(ctx, ident.ID, req.Audience)
		if err != nil {
			s.log.Warn("mint JWT-SVID failed", "spiffe_id", ident.ID.String(), "error", err)
			return nil, status.Errorf(codes.Unavailable, "could not mint a JWT-SVID for %s; retry", ident.ID)
		}
		resp.Svids = append(resp.Svids, &pb.JWTSVID{SpiffeId: ident.ID.String(), Svid: tok, Hint: ident.Hint})
	}
	if len(resp.Svids) == 0 {
		if !want.IsZero() {
			return nil, status.Errorf(codes.PermissionDenied, "no identity issued: the caller is not entitled to the requested SPIFFE ID %s", want)
		}
		return nil, s.refuse(ctx, sel)
	}
	if err := s.checkUnchanged(ctx); err != nil {
		return nil, err
	}
	return resp, nil
}

// ValidateJWTSVID implements the Workload API.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *pb.ValidateJWTSVIDRequest) (*pb.ValidateJWTSVIDResponse, error) {
	if req.Audience == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	sel, err := s.attestCaller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.mayVerify(ctx, sel); err != nil {
		return nil, err
	}
	own, fed := s.bundlesFor(sel)
	set := jwtbundle.NewSet()
	for _, b := range append([]*spiffebundle.Bundle{own}, fed...) {
		if b != nil {
			set.Add(b.JWTBundle())
		}
	}
	svid, err := jwtsvid.ParseAndValidate(req.Svid, set, []string{req.Audience})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %v", err)
	}
	if rs, ok := s.src.(RevocationSource); ok {
		if jti, _ := svid.Claims["jti"].(string); jti != "" && rs.JWTRevoked(svid.ID.TrustDomain(), jti) {
			s.log.Debug("revoked JWT-SVID refused", "spiffe_id", svid.ID.String(), "jti", jti)
			return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: revoked (jti %s is on the deny-list of %s: "+
				"the agent it was minted through was evicted)", jti, svid.ID.TrustDomain())
		}
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "JWT-SVID claims cannot be represented: %v", err)
	}
	if err := s.checkUnchanged(ctx); err != nil {
		return nil, err
	}
	return &pb.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

func (s *Server) crls() [][]byte {
	if cs, ok := s.src.(CRLSource); ok {
		return cs.CRLs()
	}
	return nil
}

// bundlesFor is the own bundle and the federated bundles of the trust
// domains that the caller's identities federate with (federates_with):
// the bundles FetchX509Bundles, FetchJWTBundles and ValidateJWTSVID use.
// A workload whose entries federate with no one validates only its own
// trust domain, as with its X509-SVIDs, whatever other workloads of the
// node federate with; so does a verifier without identity
// (WithAllowUnauthenticatedVerifiers).
func (s *Server) bundlesFor(sel []attest.Selector) (*spiffebundle.Bundle, []*spiffebundle.Bundle) {
	own, fed := s.src.Bundles()
	if len(fed) == 0 {
		return own, nil
	}
	want := map[spiffeid.TrustDomain]bool{}
	for _, ident := range s.src.Identities(sel) {
		for _, td := range ident.FederatesWith {
			want[td] = true
		}
	}
	var out []*spiffebundle.Bundle
	for _, b := range fed {
		if b != nil && want[b.TrustDomain()] {
			out = append(out, b)
		}
	}
	return own, out
}

func (s *Server) mayVerify(ctx context.Context, sel []attest.Selector) error {
	if s.allowUnauthVerifier || len(s.src.Identities(sel)) > 0 {
		return nil
	}
	return s.refuse(ctx, sel)
}

func (s *Server) x509SVIDResponse(ctx context.Context, sel []attest.Selector) (*pb.X509SVIDResponse, error) {
	idents := s.src.Identities(sel)
	if len(idents) == 0 {
		return nil, s.refuse(ctx, sel)
	}
	own, fed := s.src.Bundles()
	if own == nil || len(own.X509Authorities()) == 0 {
		return nil, status.Error(codes.Unavailable, "no trust bundle yet (agent not synced with its authority); retry")
	}
	ownDER := concatDER(own.X509Authorities())
	fedByTD := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	for _, b := range fed {
		if b != nil {
			fedByTD[b.TrustDomain()] = b
		}
	}
	resp := &pb.X509SVIDResponse{Crl: s.crls()}
	for _, ident := range idents {
		if len(ident.Chain) == 0 || ident.Key == nil {
			continue
		}
		key, err := x509.MarshalPKCS8PrivateKey(ident.Key)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode key of %s", ident.ID)
		}
		resp.Svids = append(resp.Svids, &pb.X509SVID{
			SpiffeId: ident.ID.String(), X509Svid: concatDER(ident.Chain), X509SvidKey: key,
			Bundle: ownDER, Hint: ident.Hint,
		})
		for _, td := range ident.FederatesWith {
			if b, ok := fedByTD[td]; ok {
				if resp.FederatedBundles == nil {
					resp.FederatedBundles = map[string][]byte{}
				}
				resp.FederatedBundles[td.IDString()] = concatDER(b.X509Authorities())
			}
		}
	}
	if len(resp.Svids) == 0 {
		return nil, status.Error(codes.Unavailable, "X509-SVID not issued yet; retry")
	}
	return resp, nil
}

// stream_ sends build()'s response at once and again whenever the Source
// changes and the response differs from the last one sent. An error from
// build (e.g. the caller lost its last identity) ends the stream.
func stream_[T any, PT interface {
	*T
	proto.Message
}](s *Server, stream grpc.ServerStreamingServer[T], build func() (PT, error)) error {
	ctx := stream.Context()
	var last PT
	sent := false
	for {
		changed := s.src.Changed()
		resp, err := build()
		if err != nil {
			return err
		}
		if !sent || !proto.Equal(resp, last) {
			if err := s.checkUnchanged(ctx); err != nil {
				return err
			}
			if err := stream.Send((*T)(resp)); err != nil {
				return err
			}
			last, sent = resp, true
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil
			}
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		}
	}
}

func concatDER(certs []*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		buf.Write(c.Raw)
	}
	return buf.Bytes()
}
