package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/keyutil"
	"github.com/wardproject/ward/internal/shared/reconnect"
	"github.com/wardproject/ward/internal/shared/x509pop"
)

// rpcTimeout bounds every call to the authority.
const rpcTimeout = 30 * time.Second

// GetX509SVID implements x509svid.Source for the mTLS connection to the
// authority: the agent's current SVID.
func (n *nodeTLS) GetX509SVID() (*x509svid.SVID, error) {
	s := n.a.agentSVID.Load()
	if s == nil {
		return nil, errors.New("agent has no SVID: attest first")
	}
	return s, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source: the agent's
// current bundle of its own trust domain.
func (n *nodeTLS) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != n.a.td {
		return nil, fmt.Errorf("no bundle for trust domain %q (the agent trusts %q)", td, n.a.td)
	}
	n.a.mu.RLock()
	b := n.a.bundle
	n.a.mu.RUnlock()
	if b == nil {
		return nil, fmt.Errorf("no bundle for %q yet", td)
	}
	return b.X509Bundle(), nil
}

// maxSyncMsg is the largest Node API answer the agent takes: the
// authority's send limit (nodeapi: grpc.MaxSendMsgSize(64<<20)).
const maxSyncMsg = 64 << 20

// nodeTLS adapts the agent to go-spiffe's SVID and bundle sources.
type nodeTLS struct{ a *Agent }

// dial connects to the Node API. With mtls, the agent presents its SVID;
// either way the authority must present a certificate chaining to the
// agent's bundle with the configured server SPIFFE ID.
func (a *Agent) dial(mtls bool) (*grpc.ClientConn, error) {
	src := &nodeTLS{a: a}
	var tc *tls.Config
	if mtls {
		tc = tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(a.serverID))
	} else {
		tc = tlsconfig.TLSClientConfig(src, tlsconfig.AuthorizeID(a.serverID))
	}
	tc.MinVersion = tls.VersionTLS13
	// Sync carries the bundle of every trust domain the node's entries
	// federate with (each up to 1 MiB, controlled by that trust domain):
	// take what the authority may send (its MaxSendMsgSize), not gRPC's
	// default 4 MiB, or a few large foreign bundles stop every Sync.
	// Reconnects at most 1 s apart (gRPC's default backoff reaches 120 s):
	// the policy stream rides on this connection, and a revocation must
	// reach the proxies within 2 s of an authority coming back (an outage
	// of a few seconds otherwise left the agent waiting up to 5 s before
	// its next attempt; found by test/e2e TestChaos).
	target, opts := authorityTarget(a.cfg.ServerAddress) // failover.go
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxSyncMsg)),
		reconnect.DialOption(time.Second))...)
	if err != nil {
		return nil, fmt.Errorf("connect to authority %s: %w", a.cfg.ServerAddress, err)
	}
	return conn, nil
}

// newCSR makes a key pair and a CSR naming id (zero for the agent SVID,
// whose ID the authority assigns).
func newCSR(id spiffeid.ID, dns []string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.CertificateRequest{DNSNames: dns}
	if !id.IsZero() {
		tmpl.URIs = append(tmpl.URIs, id.URL())
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// agentSVIDFromProto checks an agent SVID returned by the authority: a
// chain whose leaf carries key's public key and an ID in the trust domain,
// verifying against bundle.
func (a *Agent) agentSVIDFromProto(p *wardv1.AgentSVID, key crypto.Signer, bundle *spiffebundle.Bundle) (*x509svid.SVID, error) {
	chain, err := parseChain(p.GetChain())
	if err != nil {
		return nil, fmt.Errorf("agent SVID from authority: %w", err)
	}
	if !publicKeyEqual(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("agent SVID from authority does not carry the key the agent asked for")
	}
	id, _, err := x509svid.Verify(chain, bundle.X509Bundle())
	if err != nil {
		return nil, fmt.Errorf("agent SVID from authority does not verify against the bundle: %w", err)
	}
	if !id.MemberOf(a.td) {
		return nil, fmt.Errorf("agent SVID from authority names %s, outside trust domain %s", id, a.td)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, nil
}

func parseChain(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	out := make([]*x509.Certificate, 0, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate %d of the chain: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	k, ok := a.(eq)
	return ok && k.Equal(b)
}

// joinToken returns the configured join token (re-reading join_token_file).
func (a *Agent) joinToken() (string, error) {
	if a.cfg.JoinToken != "" {
		return a.cfg.JoinToken, nil
	}
	if a.cfg.JoinTokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(a.cfg.JoinTokenFile)
	if err != nil {
		return "", fmt.Errorf("join_token_file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("join_token_file %s is empty: write a token from `ward token create` into it", a.cfg.JoinTokenFile)
	}
	return t, nil
}

// readPSAT reads the projected service-account token (re-read at every
// attestation: the kubelet replaces it before it expires).
func readPSAT(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("k8s_psat token_path: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" || len(t) > 16<<10 {
		return "", fmt.Errorf("k8s_psat token_path %s: empty or over 16 KiB: mount a projected serviceAccountToken (audience ward:<trust domain>, or the authority's identity.k8s_psat audience) there", path)
	}
	return t, nil
}

func tokenHash(t string) string {
	h := sha256.Sum256([]byte(t))
	return hex.EncodeToString(h[:])
}

// errNoAttestation: node attestation is not possible right now (spent join
// token, nothing new configured); the agent waits for a new token.
var errNoAttestation = errors.New("no unused node attestation available")

// attest performs node attestation and installs the agent SVID.
func (a *Agent) attest(ctx context.Context) error {
	var token string
	if a.cfg.X509Pop == nil && a.cfg.K8sPSAT == nil {
		t, err := a.joinToken()
		if err != nil {
			return err
		}
		a.mu.RLock()
		used := a.usedJoinToken
		a.mu.RUnlock()
		if tokenHash(t) == used {
			return errNoAttestation
		}
		token = t
	}
	conn, err := a.dial(false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	key, csr, err := newCSR(spiffeid.ID{}, nil)
	if err != nil {
		return fmt.Errorf("agent key: %w", err)
	}
	stream, err := wardv1.NewNodeClient(conn).Attest(ctx)
	if err != nil {
		return fmt.Errorf("attest to %s: %w", a.cfg.ServerAddress, err)
	}
	var resp *wardv1.AttestResponse
	if p := a.cfg.K8sPSAT; p != nil {
		tok, err := readPSAT(p.TokenPath)
		if err != nil {
			return err
		}
		if err := stream.Send(&wardv1.AttestRequest{Step: &wardv1.AttestRequest_K8SPsat{K8SPsat: &wardv1.K8SPsatAttestation{Cluster: p.Cluster, Token: tok}}, Csr: csr}); err != nil {
			return fmt.Errorf("attest with k8s_psat: send: %w", err)
		}
		if resp, err = stream.Recv(); err != nil {
			return fmt.Errorf("attest with k8s_psat: %w", err)
		}
	} else if token != "" {
		// A join token is single use: once offered it is spent, whatever the
		// outcome, so never offer it again.
		a.mu.Lock()
		a.usedJoinToken = tokenHash(token)
		a.dirty = true
		a.mu.Unlock()
		if err := stream.Send(&wardv1.AttestRequest{Step: &wardv1.AttestRequest_JoinToken{JoinToken: &wardv1.JoinTokenAttestation{Token: token}}, Csr: csr}); err != nil {
			return fmt.Errorf("attest with join token: send: %w", err)
		}
		if resp, err = stream.Recv(); err != nil {
			return fmt.Errorf("attest with join token: %w", err)
		}
	} else {
		chain, signer, err := loadX509Pop(a.cfg.X509Pop)
		if err != nil {
			return err
		}
		if err := stream.Send(&wardv1.AttestRequest{Step: &wardv1.AttestRequest_X509Pop{X509Pop: &wardv1.X509PopAttestation{Chain: chain}}, Csr: csr}); err != nil {
			return fmt.Errorf("attest with x509pop: send: %w", err)
		}
		ch, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("attest with x509pop: %w", err)
		}
		nonce := ch.GetX509PopChallenge()
		if len(nonce) == 0 {
			return errors.New("attest with x509pop: the authority sent no challenge")
		}
		sig, err := x509pop.Sign(signer, nonce)
		if err != nil {
			return fmt.Errorf("attest with x509pop: sign challenge: %w", err)
		}
		if err := stream.Send(&wardv1.AttestRequest{Step: &wardv1.AttestRequest_X509PopChallengeSignature{X509PopChallengeSignature: sig}}); err != nil {
			return fmt.Errorf("attest with x509pop: send signature: %w", err)
		}
		if resp, err = stream.Recv(); err != nil {
			return fmt.Errorf("attest with x509pop: %w", err)
		}
	}
	_ = stream.CloseSend()
	p := resp.GetSvid()
	if p == nil {
		return errors.New("attest: the authority answered without an agent SVID")
	}
	bundle, err := a.currentOrNewBundle(p.GetBundleSpiffeJson())
	if err != nil {
		return fmt.Errorf("attest: bundle from authority: %w", err)
	}
	sv, err := a.agentSVIDFromProto(p, key, bundle)
	if err != nil {
		return err
	}
	a.installAgentSVID(sv)
	a.mu.Lock()
	a.evicted = false
	if p.GetBundleSpiffeJson() != nil {
		a.setBundleLocked(bundle, p.GetBundleSpiffeJson(), a.bundleSeq)
	}
	a.mu.Unlock()
	a.log.Info("node attested", "agent_id", sv.ID.String(), "expires", sv.Certificates[0].NotAfter)
	return nil
}

// renewAgent renews the agent SVID over mTLS with the current one.
func (a *Agent) renewAgent(ctx context.Context) error {
	key, csr, err := newCSR(spiffeid.ID{}, nil)
	if err != nil {
		return fmt.Errorf("agent key: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	p, err := a.node().RenewAgent(ctx, &wardv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		return fmt.Errorf("renew agent SVID: %w", err)
	}
	bundle, err := a.currentOrNewBundle(p.GetBundleSpiffeJson())
	if err != nil {
		return fmt.Errorf("renew agent SVID: bundle from authority: %w", err)
	}
	sv, err := a.agentSVIDFromProto(p, key, bundle)
	if err != nil {
		return err
	}
	a.installAgentSVID(sv)
	a.log.Info("agent SVID renewed", "agent_id", sv.ID.String(), "expires", sv.Certificates[0].NotAfter)
	return nil
}

// currentOrNewBundle parses a bundle sent by the authority, or returns the
// current one if none was sent.
func (a *Agent) currentOrNewBundle(doc []byte) (*spiffebundle.Bundle, error) {
	if len(doc) == 0 {
		a.mu.RLock()
		defer a.mu.RUnlock()
		if a.bundle == nil {
			return nil, errors.New("no bundle")
		}
		return a.bundle, nil
	}
	return spiffebundle.Parse(a.td, doc)
}

// installAgentSVID makes sv the agent's identity towards the authority and
// reconnects, so no RPC rides on a connection authenticated with the old
// one.
func (a *Agent) installAgentSVID(sv *x509svid.SVID) {
	a.agentSVID.Store(sv)
	a.agentRenewAt = rotateAt(a.now(), sv.Certificates[0].NotBefore, sv.Certificates[0].NotAfter, a.jitter())
	conn, err := a.dial(true)
	a.connMu.Lock()
	old := a.conn
	if err == nil {
		a.conn = conn
	}
	a.connMu.Unlock()
	if err == nil && old != nil {
		old.Close()
	}
	a.mu.Lock()
	a.dirty = true
	a.mu.Unlock()
}

// node returns a Node API client on the current mTLS connection.
func (a *Agent) node() wardv1.NodeClient {
	a.connMu.Lock()
	defer a.connMu.Unlock()
	return wardv1.NewNodeClient(a.conn)
}

// loadX509Pop reads the node certificate chain (DER, leaf first) and key.
func loadX509Pop(c *X509Pop) ([][]byte, crypto.Signer, error) {
	pemChain, err := os.ReadFile(c.CertPath)
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop cert_path: %w", err)
	}
	var chain [][]byte
	for rest := pemChain; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("x509pop cert_path %s holds no PEM CERTIFICATE", c.CertPath)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop cert_path %s: first certificate: %w", c.CertPath, err)
	}
	pemKey, err := os.ReadFile(c.KeyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop key_path: %w", err)
	}
	signer, err := keyutil.ParsePrivateKeyPEM(pemKey)
	if err != nil {
		return nil, nil, fmt.Errorf("x509pop key_path %s: %w", c.KeyPath, err)
	}
	if !publicKeyEqual(leaf.PublicKey, signer.Public()) {
		return nil, nil, fmt.Errorf("x509pop: the key in %s does not match the certificate in %s", c.KeyPath, c.CertPath)
	}
	return chain, signer, nil
}
