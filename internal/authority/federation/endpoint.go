package federation

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// EndpointConfig configures the bundle endpoint.
type EndpointConfig struct {
	// CA's bundle is served; it also signs the endpoint's X509-SVID. Required.
	CA *ca.CA
	// ServerID is the SPIFFE ID the https_spiffe endpoint presents
	// (default spiffe://<trust domain>/ward/server).
	ServerID spiffeid.ID
	// Address (host:port) of the https_spiffe endpoint; "" turns it off.
	Address string
	// WebAddress (host:port) of the https_web endpoint, with the Web PKI
	// certificate chain and key in CertFile and KeyFile (PEM; re-read when
	// the files change); "" turns it off.
	WebAddress, CertFile, KeyFile string
	// Log receives operational messages (default: discard).
	Log *slog.Logger
	// Revocations, when set, are served at RevocationPath of the
	// https_spiffe endpoint to the server IDs of federated trust domains,
	// verified with Peers (their bundles: the Manager). Required together.
	Revocations RevocationSource
	Peers       x509bundle.Source
	// OnRevocationRefused counts a refused client of the revocation channel
	// (and the catalog channel) by reason (no_client_certificate,
	// not_federated, not_a_server).
	OnRevocationRefused func(reason string)
	// Checkpoints, when set, is this authority's audit log, served at
	// WitnessPath of the https_spiffe endpoint to the server IDs of
	// federated trust domains (verified with Peers, which is then
	// required), each with the cosignature this authority made on its log
	// (Cosignatures: the Manager's CosignatureOf).
	Checkpoints  CheckpointSource
	Cosignatures func(td spiffeid.TrustDomain) *checkpoint.Cosignature
	// OnWitnessRefused counts a refused client of WitnessPath by reason
	// (as OnRevocationRefused).
	OnWitnessRefused func(reason string)
	// OnConnRefused counts a connection closed at accept for being over a
	// limit, by reason (RefusedEndpoint*; endpointlimits.go).
	OnConnRefused func(reason string)
	// Catalog, when set with Revocations, is served at CatalogPath to the
	// same clients (catalog.go).
	Catalog CatalogSource
	// Network, when set with Revocations, is served at NetworkPath to the
	// peers whose relationship shares the network (network.go).
	Network NetworkSource
}

// Endpoint serves the trust domain's SPIFFE bundle (GET on any path) over
// https_spiffe and, when configured, https_web.
type Endpoint struct {
	cfg     EndpointConfig
	handler http.Handler
	srvs    []*http.Server
	addrs   map[Profile]net.Addr

	certMu  sync.Mutex
	svid    *tls.Certificate
	renewAt time.Time
	interID string // CA key ID of the certificate's intermediate
	web     *tls.Certificate
	webMod  time.Time

	slots peerSlots // authenticated requests in progress per peer
}

type caSource struct{ c *ca.CA }

func (s caSource) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	if td != s.c.TrustDomain() {
		return nil, fmt.Errorf("no bundle for %s", td)
	}
	return s.c.Bundle()
}

// NewEndpoint checks cfg and loads the Web PKI certificate if any.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.CA == nil {
		return nil, errors.New("federation: endpoint needs the CA")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	td := cfg.CA.TrustDomain()
	if cfg.ServerID.IsZero() {
		cfg.ServerID = spiffeid.RequireFromPath(td, "/ward/server")
	}
	if !cfg.ServerID.MemberOf(td) {
		return nil, fmt.Errorf("federation: endpoint ID %s is not in %s", cfg.ServerID, td)
	}
	if cfg.WebAddress != "" && (cfg.CertFile == "" || cfg.KeyFile == "") {
		return nil, errors.New("federation: bundle_endpoint.web_address needs cert_file and key_file (the Web PKI certificate and key)")
	}
	h, err := federation.NewHandler(td, caSource{cfg.CA})
	if err != nil {
		return nil, err
	}
	if (cfg.Revocations != nil || cfg.Checkpoints != nil) && cfg.Peers == nil {
		return nil, errors.New("federation: the revocation channel and the audit witness need Peers (the federated bundles)")
	}
	if cfg.Peers != nil && cfg.Revocations == nil && cfg.Checkpoints == nil {
		return nil, errors.New("federation: Peers given without the revocation channel or the audit witness")
	}
	e := &Endpoint{cfg: cfg, handler: h, addrs: map[Profile]net.Addr{}}
	if cfg.Peers != nil {
		mux := http.NewServeMux()
		mux.Handle("/", h)
		if cfg.Revocations != nil {
			mux.HandleFunc(RevocationPath, e.serveRevocations)
		}
		if cfg.Checkpoints != nil {
			mux.HandleFunc(WitnessPath, e.serveCheckpoint)
		}
		if cfg.Catalog != nil {
			mux.HandleFunc(CatalogPath, e.serveCatalog)
		}
		if cfg.Network != nil {
			mux.HandleFunc(NetworkPath, e.serveNetwork)
		}
		e.handler = mux
	}
	if cfg.WebAddress != "" {
		if _, err := e.webCert(); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Start listens on the configured addresses and serves in the background.
func (e *Endpoint) Start() error {
	type l struct {
		p    Profile
		addr string
		get  func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	}
	var ls []l
	if e.cfg.Address != "" {
		ls = append(ls, l{ProfileSPIFFE, e.cfg.Address, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.svidCert() }})
	}
	if e.cfg.WebAddress != "" {
		ls = append(ls, l{ProfileWeb, e.cfg.WebAddress, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.webCert() }})
	}
	for _, x := range ls {
		ln, err := net.Listen("tcp", x.addr)
		if err != nil {
			e.Stop()
			return fmt.Errorf("federation: bundle endpoint (%s) on %s: %w", x.p, x.addr, err)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: x.get, NextProtos: []string{"http/1.1"}}
		if x.p == ProfileSPIFFE && e.cfg.Peers != nil {
			// Asked, never required (bundle fetches stay anonymous); the
			// revocation channel and the witness verify it (peer).
			tc.ClientAuth = tls.RequestClientCert
		}
		srv := &http.Server{Handler: e.handler, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(e.cfg.Log.Handler(), slog.LevelDebug), ConnState: endpointConnState}
		e.srvs = append(e.srvs, srv)
		e.addrs[x.p] = ln.Addr()
		lln := newLimitListener(ln, e.cfg.Log, e.cfg.OnConnRefused)
		go func() { _ = srv.Serve(tls.NewListener(lln, tc)) }()
		e.cfg.Log.Info("bundle endpoint listening", "profile", string(x.p), "address", ln.Addr().String(), "spiffe_id", e.cfg.ServerID.String())
	}
	return nil
}

// Addr returns the address of the endpoint of profile p (nil if off).
func (e *Endpoint) Addr(p Profile) net.Addr { return e.addrs[p] }

// ServerID is the SPIFFE ID of the https_spiffe endpoint.
func (e *Endpoint) ServerID() spiffeid.ID { return e.cfg.ServerID }

// Stop closes the listeners and open connections.
func (e *Endpoint) Stop() {
	for _, s := range e.srvs {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.Shutdown(ctx)
		cancel()
		_ = s.Close()
	}
	e.srvs = nil
}

// svidCert returns the endpoint's X509-SVID, signing a new one when there
// is none, past half life, or when its intermediate was tainted. Unlike the
// Node API's certificate it is deliberately not renewed when the CA's
// active intermediate changes: peers authenticate this endpoint with the
// last bundle they fetched from it, so after an immediate root rotation
// (`ward ca rotate --root`) the certificate under the old root (still
// published while retired) lets them fetch the bundle with the new root
// before the endpoint presents a chain to it.
func (e *Endpoint) svidCert() (*tls.Certificate, error) {
	e.certMu.Lock()
	defer e.certMu.Unlock()
	now := time.Now()
	if e.svid != nil && now.Before(e.renewAt) && !e.taintedLocked() {
		return e.svid, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	chain, err := e.cfg.CA.SignX509SVID(context.Background(), ca.SVIDRequest{ID: e.cfg.ServerID, PublicKey: key.Public()})
	if err != nil {
		if e.svid != nil && now.Before(e.svid.Leaf.NotAfter) {
			e.cfg.Log.Warn("renewing the bundle endpoint certificate failed; serving the current one", "err", err)
			return e.svid, nil
		}
		return nil, fmt.Errorf("signing the bundle endpoint certificate %s: %w", e.cfg.ServerID, err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	e.svid, e.renewAt, e.interID = tc, chain[0].NotBefore.Add(chain[0].NotAfter.Sub(chain[0].NotBefore)/2), ""
	if len(chain) > 1 {
		e.interID, _ = keyutil.CAKeyID(chain[1].PublicKey)
	}
	return tc, nil
}

// SVID returns the server's X509-SVID (the endpoint's certificate), which
// also authenticates this authority on federated peers' revocation
// channels.
func (e *Endpoint) SVID() (*x509svid.SVID, error) {
	tc, err := e.svidCert()
	if err != nil {
		return nil, err
	}
	s := &x509svid.SVID{ID: e.cfg.ServerID, PrivateKey: tc.PrivateKey.(crypto.Signer)}
	for _, raw := range tc.Certificate {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, err
		}
		s.Certificates = append(s.Certificates, c)
	}
	return s, nil
}

// serveRevocations answers a federated authority's long-poll for this
// trust domain's revocations. The client must present the server ID of a
// federated trust domain (spiffe://<td>/ward/server), verified with that
// trust domain's bundle and nothing else.
func (e *Endpoint) serveRevocations(w http.ResponseWriter, r *http.Request) {
	id, ok := e.peer(w, r, "revocation channel", e.cfg.OnRevocationRefused)
	if !ok {
		return
	}
	if !e.peerSlot(w, r, id.TrustDomain(), "revocation channel", "revocations", maxLongPollsPerPeer, e.cfg.OnRevocationRefused) {
		return
	}
	defer e.slots.give(id.TrustDomain(), "revocations")
	var err error
	q := r.URL.Query()
	var after uint64
	if a := q.Get("after"); a != "" {
		if after, err = strconv.ParseUint(a, 10, 64); err != nil {
			http.Error(w, "after: not a sequence number", http.StatusBadRequest)
			return
		}
	}
	wait := MaxRevocationWait
	if ws := q.Get("wait"); ws != "" {
		if d, err := time.ParseDuration(ws); err == nil && d >= 0 && d < wait {
			wait = d
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	rev, err := e.cfg.Revocations.Revocations(ctx, after)
	if err != nil {
		http.Error(w, "revocations unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	// The relationship may have been removed (or the peer's bundle may
	// have dropped the key of its certificate) during the wait.
	if _, ok := e.peer(w, r, "revocation channel", e.cfg.OnRevocationRefused); !ok {
		return
	}
	rev.DenyList = OwnOnly(e.cfg.CA.TrustDomain(), rev.DenyList)
	rev.TrustDomain = e.cfg.CA.TrustDomain().Name()
	var body bytes.Buffer
	_ = json.NewEncoder(&body).Encode(rev)
	if body.Len() > MaxRevocationUpdate {
		// Sent anyway (a smaller limit on the peer's side is its own), but
		// a ward peer refuses it, and with it every revocation of this
		// trust domain, until the deny-list shrinks: said here, where the
		// fix is.
		e.cfg.Log.Error("this trust domain's deny-list is too big for the federation revocation channel: federated peers refuse all of its revocations until it shrinks; "+
			"remove serials that have expired or are no longer needed (`ward policy`), or lower identity.max_jwt_svids_per_agent and the other per-agent bounds so evictions revoke fewer",
			"bytes", body.Len(), "limit", MaxRevocationUpdate, "serials", len(rev.DenyList.Serials), "peer", id.String())
		if e.cfg.OnRevocationRefused != nil {
			e.cfg.OnRevocationRefused("own_deny_list_over_limit")
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(revocationHeader, "1")
	_, _ = w.Write(body.Bytes())
}

// peer authenticates a client of the revocation channel or the witness:
// it must present the server ID of a federated trust domain
// (spiffe://<td>/ward/server), verified with that trust domain's bundle
// and nothing else. A refused client is answered, logged and counted.
func (e *Endpoint) peer(w http.ResponseWriter, r *http.Request, what string, count func(string)) (spiffeid.ID, bool) {
	refuse := func(code int, reason, msg string) (spiffeid.ID, bool) {
		if count != nil {
			count(reason)
		}
		e.logRefused(what, reason, r.RemoteAddr, msg)
		http.Error(w, msg, code)
		return spiffeid.ID{}, false
	}
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return spiffeid.ID{}, false
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return refuse(http.StatusUnauthorized, "no_client_certificate", fmt.Sprintf("the %s needs the client's X509-SVID (spiffe://<trust domain>/ward/server)", what))
	}
	id, _, err := x509svid.Verify(r.TLS.PeerCertificates, e.cfg.Peers)
	if err != nil {
		claimed := "an unparsable ID"
		if cid, cerr := x509svid.IDFromCert(r.TLS.PeerCertificates[0]); cerr == nil {
			claimed = cid.String()
		}
		return refuse(http.StatusForbidden, "not_federated", fmt.Sprintf("client %s is not a server of a trust domain %s federates with: %v", claimed, e.cfg.CA.TrustDomain().Name(), err))
	}
	if id.Path() != serverPath || id.TrustDomain() == e.cfg.CA.TrustDomain() {
		return refuse(http.StatusForbidden, "not_a_server", fmt.Sprintf("client %s is not a federated authority's server ID (spiffe://<trust domain>%s)", id, serverPath))
	}
	return id, true
}

// serveCheckpoint answers a federated authority's witness: this
// authority's latest signed audit checkpoint, its key, a consistency proof
// from ?from= (none when from is 0 or beyond the log: the witness then
// sees the log went backwards) and this authority's cosignature on the
// caller's own log.
func (e *Endpoint) serveCheckpoint(w http.ResponseWriter, r *http.Request) {
	id, ok := e.peer(w, r, "audit witness", e.cfg.OnWitnessRefused)
	if !ok {
		return
	}
	if !e.peerSlot(w, r, id.TrustDomain(), "audit witness", "witness", maxWitnessPerPeer, e.cfg.OnWitnessRefused) {
		return
	}
	defer e.slots.give(id.TrustDomain(), "witness")
	var from uint64
	if f := r.URL.Query().Get("from"); f != "" {
		var err error
		if from, err = strconv.ParseUint(f, 10, 64); err != nil {
			http.Error(w, "from: not a tree size", http.StatusBadRequest)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	cp, pub, err := e.cfg.Checkpoints.LatestCheckpoint(ctx, from)
	if err != nil {
		http.Error(w, "audit checkpoint unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	pemKey, err := checkpoint.MarshalPublicKeyPEM(pub)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ans := WitnessAnswer{Checkpoint: cp, PublicKeyPEM: string(pemKey)}
	if from > 0 && from < cp.Size {
		if ans.Consistency, err = e.cfg.Checkpoints.ConsistencyProof(ctx, from, cp.Size); err != nil {
			http.Error(w, "audit consistency proof unavailable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		ans.From = from
	} else if from == cp.Size {
		ans.From = from
	}
	if e.cfg.Cosignatures != nil {
		ans.Cosignature = e.cfg.Cosignatures(id.TrustDomain())
	}
	b, err := json.Marshal(ans)
	if err != nil || len(b) > MaxWitnessAnswer {
		http.Error(w, fmt.Sprintf("audit checkpoint answer too large or unencodable (%d bytes): %v", len(b), err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(witnessHeader, "1")
	_, _ = w.Write(b)
}

// taintedLocked reports whether the current certificate's intermediate is
// tainted (a tainted root taints its intermediates).
func (e *Endpoint) taintedLocked() bool {
	return e.interID != "" && slices.Contains(e.cfg.CA.TaintedKeyIDs(), e.interID)
}

// webCert returns the Web PKI certificate, re-read when a file changed.
func (e *Endpoint) webCert() (*tls.Certificate, error) {
	e.certMu.Lock()
	defer e.certMu.Unlock()
	mod := time.Time{}
	for _, f := range []string{e.cfg.CertFile, e.cfg.KeyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			if e.web != nil {
				return e.web, nil
			}
			return nil, fmt.Errorf("federation: bundle endpoint certificate: %w", err)
		}
		if fi.ModTime().After(mod) {
			mod = fi.ModTime()
		}
	}
	if e.web != nil && mod.Equal(e.webMod) {
		return e.web, nil
	}
	c, err := tls.LoadX509KeyPair(e.cfg.CertFile, e.cfg.KeyFile)
	if err != nil {
		if e.web != nil {
			e.cfg.Log.Warn("re-reading the bundle endpoint's Web PKI certificate failed; serving the current one", "err", err)
			return e.web, nil
		}
		return nil, fmt.Errorf("federation: bundle endpoint certificate %s / %s: %w", e.cfg.CertFile, e.cfg.KeyFile, err)
	}
	e.web, e.webMod = &c, mod
	return e.web, nil
}
