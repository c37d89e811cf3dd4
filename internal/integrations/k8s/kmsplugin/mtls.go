package kmsplugin

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	gsw "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/reconnect"
)

// The mTLS mode: the plugin is a workload. Its X509-SVID comes from the
// node's ward agent over the Workload API (rotations followed), and it
// calls the authority's workload KMS on the Node API with it, accepting
// only the configured server SPIFFE ID. The authority authorizes every call
// by policy on the plugin's SPIFFE ID and audits it under that ID, so the
// plugin holds no operator access and works on control-plane nodes without
// an authority.

// SVIDSource is the plugin's identity in the mTLS mode: its X509-SVID and
// the trust bundles (a go-spiffe workloadapi.X509Source, or WorkloadAPI).
type SVIDSource interface {
	x509svid.Source
	x509bundle.Source
}

// SVIDError says the plugin has no usable X509-SVID (none yet, or expired):
// nothing was sent to the authority. Status reports it as "no valid SVID".
type SVIDError struct{ msg string }

func (e *SVIDError) Error() string { return e.msg }

// NodeAPIAuthority is the authority's workload KMS over the Node API.
// Each connection rides on exactly one X509-SVID: when the source's SVID
// changes, the next call dials a new connection with the new one, and the
// old connection is closed once calls on it had time to finish.
type NodeAPIAuthority struct {
	addr     string
	serverID spiffeid.ID
	src      SVIDSource
	now      func() time.Time
	drain    time.Duration
	attempt  time.Duration // per attempt with several addresses (0: the client's default)

	mu     sync.Mutex
	c      *client.Client
	leaf   []byte // DER of the SVID c rides on
	closed bool
	old    []*client.Client // replaced, closed after drain
}

// NewNodeAPIAuthority calls the workload KMS at addr (host:port, or several
// separated by commas) as the identity src holds, accepting only a server
// that presents serverID. drain (at least the per-call timeout) is how long
// a replaced connection stays open for the calls still on it.
func NewNodeAPIAuthority(addr string, serverID spiffeid.ID, src SVIDSource, drain time.Duration) *NodeAPIAuthority {
	return &NodeAPIAuthority{addr: addr, serverID: serverID, src: src, now: time.Now, drain: drain}
}

// pinned is one SVID as an x509svid.Source: a connection presents the SVID
// it was dialed for, never a later one (a new SVID gets a new connection).
type pinned struct{ s *x509svid.SVID }

func (p pinned) GetX509SVID() (*x509svid.SVID, error) { return p.s, nil }

// SVID returns the source's current X509-SVID if it is valid now, else an
// *SVIDError saying why.
func (a *NodeAPIAuthority) SVID() (*x509svid.SVID, error) {
	s, err := a.src.GetX509SVID()
	if err != nil {
		return nil, &SVIDError{msg: err.Error()}
	}
	if s == nil || len(s.Certificates) == 0 {
		return nil, &SVIDError{msg: "the Workload API gave no X509-SVID"}
	}
	leaf, now := s.Certificates[0], a.now()
	if now.After(leaf.NotAfter) {
		return nil, &SVIDError{msg: fmt.Sprintf("the plugin's X509-SVID %s expired at %s and the ward agent has not renewed it: is the agent running and attested (an evicted agent renews nothing)?",
			s.ID, leaf.NotAfter.UTC().Format(time.RFC3339))}
	}
	if now.Before(leaf.NotBefore) {
		return nil, &SVIDError{msg: fmt.Sprintf("the plugin's X509-SVID %s is not valid before %s: check this node's clock", s.ID, leaf.NotBefore.UTC().Format(time.RFC3339))}
	}
	return s, nil
}

// Ready implements Ready: the serial of the current X509-SVID if it is
// valid now, else an *SVIDError. It asks nothing of the authority.
func (a *NodeAPIAuthority) Ready() (string, error) {
	s, err := a.SVID()
	if err != nil {
		return "", err
	}
	return s.Certificates[0].SerialNumber.Text(16), nil
}

// client returns the connection for the current SVID, dialing it if the
// SVID changed.
func (a *NodeAPIAuthority) client() (*client.Client, error) {
	s, err := a.SVID()
	if err != nil {
		return nil, err
	}
	leaf := s.Certificates[0].Raw
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, errors.New("the plugin is shutting down")
	}
	if a.c != nil && bytes.Equal(a.leaf, leaf) {
		return a.c, nil
	}
	tc := tlsconfig.MTLSClientConfig(pinned{s}, a.src, tlsconfig.AuthorizeID(a.serverID))
	tc.MinVersion = tls.VersionTLS13
	opts := []client.Option{client.WithTLS(tc)}
	if a.attempt > 0 {
		opts = append(opts, client.WithAttemptTimeout(a.attempt))
	}
	c, err := client.Dial(a.addr, opts...)
	if err != nil {
		return nil, err
	}
	if prev := a.c; prev != nil {
		a.old = append(a.old, prev)
		time.AfterFunc(a.drain, func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			for i, o := range a.old {
				if o == prev {
					a.old = append(a.old[:i], a.old[i+1:]...)
					prev.Close()
					return
				}
			}
		})
	}
	a.c, a.leaf = c, bytes.Clone(leaf)
	return c, nil
}

// Encrypt implements Authority.
func (a *NodeAPIAuthority) Encrypt(ctx context.Context, key string, pt []byte, encCtx map[string]string) ([]byte, uint32, error) {
	c, err := a.client()
	if err != nil {
		return nil, 0, err
	}
	ct, v, err := ClientAuthority(c).Encrypt(ctx, key, pt, encCtx)
	return ct, v, a.explain(err)
}

// Decrypt implements Authority.
func (a *NodeAPIAuthority) Decrypt(ctx context.Context, ct []byte, encCtx map[string]string) ([]byte, error) {
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	pt, err := ClientAuthority(c).Decrypt(ctx, ct, encCtx)
	return pt, a.explain(err)
}

// explain adds to a failed TLS handshake which server the plugin accepts.
func (a *NodeAPIAuthority) explain(err error) error {
	s, ok := status.FromError(err)
	if err == nil || !ok || !strings.Contains(s.Message(), "authentication handshake failed") {
		return err
	}
	return status.Errorf(s.Code(), "%s (the plugin accepts only %s, its authority.server_id, with a certificate chaining to the bundle from the Workload API)", s.Message(), a.serverID)
}

// Close closes every connection.
func (a *NodeAPIAuthority) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.c != nil {
		a.c.Close()
		a.c = nil
	}
	for _, o := range a.old {
		o.Close()
	}
	a.old = nil
	return nil
}

// WorkloadAPI is the plugin's SVIDSource from the ward agent's Workload API
// socket. Unlike a bare X509Source it is usable at once: until the first
// X509-SVID arrives (the agent is not up yet, or no entry matches the
// plugin) it answers with an error naming the socket and the Workload API's
// last error, so Status can say why while the plugin keeps serving; after
// that, the X509Source follows rotations and bundle changes.
type WorkloadAPI struct {
	socket  string
	src     atomic.Pointer[gsw.X509Source]
	lastErr atomic.Pointer[string]
	cancel  context.CancelFunc
	done    chan struct{}
}

// WatchWorkloadAPI starts following the Workload API at socket (a path)
// until Close.
func WatchWorkloadAPI(socket string) *WorkloadAPI {
	ctx, cancel := context.WithCancel(context.Background())
	w := &WorkloadAPI{socket: socket, cancel: cancel, done: make(chan struct{})}
	go w.run(ctx)
	return w
}

func (w *WorkloadAPI) run(ctx context.Context) {
	defer close(w.done)
	for ctx.Err() == nil {
		src, err := gsw.NewX509Source(ctx, gsw.WithClientOptions(append(reconnect.WorkloadAPI(), gsw.WithAddr("unix://"+w.socket), gsw.WithLogger(errorLog{w}))...))
		if err == nil {
			w.src.Store(src)
			<-ctx.Done()
			src.Close()
			return
		}
		if ctx.Err() == nil {
			w.setErr(err.Error())
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (w *WorkloadAPI) setErr(msg string) { w.lastErr.Store(&msg) }

// errorLog keeps the Workload API client's last error for the message
// given while there is no SVID (the client retries on its own).
type errorLog struct{ w *WorkloadAPI }

func (errorLog) Debugf(string, ...any)               {}
func (errorLog) Infof(string, ...any)                {}
func (errorLog) Warnf(string, ...any)                {}
func (l errorLog) Errorf(format string, args ...any) { l.w.setErr(fmt.Sprintf(format, args...)) }

func (w *WorkloadAPI) notYet() error {
	msg := fmt.Sprintf("no X509-SVID yet from the Workload API at unix://%s: is the ward agent running on this node, and does an entry match the plugin?", w.socket)
	if e := w.lastErr.Load(); e != nil {
		msg += " (last error: " + *e + ")"
	}
	return errors.New(msg)
}

// GetX509SVID implements x509svid.Source.
func (w *WorkloadAPI) GetX509SVID() (*x509svid.SVID, error) {
	src := w.src.Load()
	if src == nil {
		return nil, w.notYet()
	}
	return src.GetX509SVID()
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (w *WorkloadAPI) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	src := w.src.Load()
	if src == nil {
		return nil, w.notYet()
	}
	return src.GetX509BundleForTrustDomain(td)
}

// Close stops following the Workload API.
func (w *WorkloadAPI) Close() error {
	w.cancel()
	<-w.done
	return nil
}

// NodeAPIAuthorityFor builds the mTLS mode's authority of a validated
// configuration over src.
func NodeAPIAuthorityFor(cfg *Config, src SVIDSource) (*NodeAPIAuthority, error) {
	id, err := cfg.Authority.ServerSPIFFEID()
	if err != nil {
		return nil, fmt.Errorf("authority.server_id: %w", err)
	}
	timeout := time.Duration(cfg.Timeout)
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	a := NewNodeAPIAuthority(cfg.Authority.NodeAPI, id, src, 2*timeout+time.Second)
	a.attempt = cfg.AttemptTimeout()
	return a, nil
}

var _ Ready = (*NodeAPIAuthority)(nil)
