// Package client is the Go client of ward's authority API. It dials the
// local admin socket (unix:///path) and exposes the generated service
// clients, plus helpers that make it an envelope.KMS for the envelope
// package.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/local"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/shared/reconnect"
)

// EnvAddress is the environment variable that names the authority.
const EnvAddress = "WARD_ADDRESS"

// Client is a connection to a ward authority. Safe for concurrent use.
type Client struct {
	conn     grpc.ClientConnInterface
	close    func() error
	Operator wardv1.OperatorClient
	Keys     wardv1.KeysClient
	KMS      wardv1.KMSClient
	Audit    wardv1.AuditClient
	Policy   wardv1.PolicyClient
	Entries  wardv1.EntriesClient
	Agents   wardv1.AgentsClient
	CA       wardv1.CAClient
	// Federation manages federation relationships with foreign trust domains.
	Federation wardv1.FederationClient
	// Catalog manages exported services (docs/gateway.md).
	Catalog wardv1.CatalogClient
	// PolicyDistribution streams policy versions as they change.
	PolicyDistribution wardv1.PolicyDistributionClient
	// Posture manages the declared posture and reports drift
	// (docs/governance.md).
	Posture wardv1.PostureClient
	// Cluster reports the authorities sharing one store and their leader.
	Cluster wardv1.ClusterClient
}

type options struct {
	tls       *tls.Config
	peerCheck func(net.Conn) error
	attempt   time.Duration
}

// WithAttemptTimeout bounds each attempt of a call that may be retried on
// another authority (default DefaultAttemptTimeout; only with several
// addresses).
func WithAttemptTimeout(d time.Duration) Option { return func(o *options) { o.attempt = d } }

// Option configures Dial.
type Option func(*options)

// WithTLS sets the mTLS configuration used for host:port addresses.
func WithTLS(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// WithUnixPeerCheck runs check on every new admin-socket connection
// before any byte of a request is written to it (as part of the transport
// handshake); an error fails the connection, so nothing is sent to a
// listener the caller does not trust (for instance, check its SO_PEERCRED
// uid).
func WithUnixPeerCheck(check func(net.Conn) error) Option {
	return func(o *options) { o.peerCheck = check }
}

// checkedCreds are local credentials whose client handshake runs a check.
type checkedCreds struct {
	credentials.TransportCredentials
	check func(net.Conn) error
}

func (c checkedCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if err := c.check(conn); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return c.TransportCredentials.ClientHandshake(ctx, authority, conn)
}

func (c checkedCreds) Clone() credentials.TransportCredentials {
	return checkedCreds{TransportCredentials: c.TransportCredentials.Clone(), check: c.check}
}

// ResolveAddress returns flag if set, else $WARD_ADDRESS, else an error
// that says how to set it.
func ResolveAddress(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if v := os.Getenv(EnvAddress); v != "" {
		return v, nil
	}
	return "", errors.New("no authority address: pass --address unix:///path/to/admin.sock (or host:port), or set WARD_ADDRESS (`ward server --dev` prints the line to paste)")
}

// Dial connects to address: "unix:///abs/path" for the admin socket or
// "host:port" (requires WithTLS), or to several authorities sharing one
// store, separated by commas ("unix:///a/admin.sock,unix:///b/admin.sock"):
// calls then fail over between them (failover.go). It does not block.
func Dial(address string, opts ...Option) (*Client, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if o.attempt <= 0 {
		o.attempt = DefaultAttemptTimeout
	}
	var addrs []string
	for _, a := range strings.Split(address, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("address %q names no authority: use unix:///path or host:port (several separated by commas)", address)
	}
	f := &failover{addrs: addrs, attempt: o.attempt}
	for _, a := range addrs {
		conn, err := dialOne(a, o)
		if err != nil {
			f.Close()
			return nil, err
		}
		f.conns = append(f.conns, conn)
	}
	var conn grpc.ClientConnInterface = f
	if len(f.conns) == 1 {
		conn = f.conns[0]
	}
	return newClient(conn, f.Close), nil
}

func dialOne(address string, o options) (*grpc.ClientConn, error) {
	var creds credentials.TransportCredentials
	switch {
	case strings.HasPrefix(address, "unix://"):
		if !strings.HasPrefix(address, "unix:///") {
			return nil, fmt.Errorf("address %q: a unix address needs an absolute path, as in unix:///var/lib/ward/admin.sock", address)
		}
		creds = local.NewCredentials()
		if o.peerCheck != nil {
			creds = checkedCreds{TransportCredentials: creds, check: o.peerCheck}
		}
	case strings.Contains(address, "://"):
		return nil, fmt.Errorf("address %q: use unix:///path or host:port", address)
	default:
		if o.tls == nil {
			return nil, fmt.Errorf("address %q is TCP, which needs mutual TLS with a workload identity; use the admin socket (unix:///path) here", address)
		}
		creds = credentials.NewTLS(o.tls)
	}
	// Reconnects at most 2 s apart (gRPC's default backoff reaches 120 s:
	// the kms-plugin stayed failing that long after an authority outage).
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(creds), reconnect.DialOption(0))
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", address, err)
	}
	return conn, nil
}

func newClient(conn grpc.ClientConnInterface, closeFn func() error) *Client {
	return &Client{conn: conn, close: closeFn,
		Operator: wardv1.NewOperatorClient(conn), Keys: wardv1.NewKeysClient(conn),
		KMS: wardv1.NewKMSClient(conn), Audit: wardv1.NewAuditClient(conn),
		Policy: wardv1.NewPolicyClient(conn), PolicyDistribution: wardv1.NewPolicyDistributionClient(conn),
		Entries: wardv1.NewEntriesClient(conn), Agents: wardv1.NewAgentsClient(conn), CA: wardv1.NewCAClient(conn),
		Federation: wardv1.NewFederationClient(conn), Catalog: wardv1.NewCatalogClient(conn),
		Posture: wardv1.NewPostureClient(conn), Cluster: wardv1.NewClusterClient(conn)}
}

// Addresses returns the authorities this client reaches, in order.
func (c *Client) Addresses() []string {
	if f, ok := c.conn.(*failover); ok {
		return append([]string(nil), f.addrs...)
	}
	return nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.close() }

// GenerateDataKey returns a fresh data key in plaintext and wrapped under
// keyName's active version, bound to encCtx. It satisfies envelope.KMS.
func (c *Client) GenerateDataKey(ctx context.Context, keyName string, encCtx map[string]string) (plaintext, wrapped []byte, err error) {
	r, err := c.KMS.GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: keyName, Context: encCtx})
	if err != nil {
		return nil, nil, Unwrap(err)
	}
	return r.Plaintext, r.Wrapped, nil
}

// Decrypt unwraps a KMS ciphertext. It satisfies envelope.KMS.
func (c *Client) Decrypt(ctx context.Context, wrapped []byte, encCtx map[string]string) ([]byte, error) {
	r, err := c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: wrapped, Context: encCtx})
	if err != nil {
		return nil, Unwrap(err)
	}
	return r.Plaintext, nil
}

// Rewrap re-wraps a KMS ciphertext under its key's newest version without
// revealing the plaintext. It satisfies envelope.KMS.
func (c *Client) Rewrap(ctx context.Context, wrapped []byte, encCtx map[string]string) ([]byte, error) {
	r, err := c.KMS.Rewrap(ctx, &wardv1.RewrapRequest{Ciphertext: wrapped, Context: encCtx})
	if err != nil {
		return nil, Unwrap(err)
	}
	return r.Ciphertext, nil
}

// Error is an API error with its gRPC code name.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap turns a gRPC status error into an *Error whose text is the
// server's message (which says what failed and what to do); connection
// failures get a hint about the address.
func Unwrap(err error) error {
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := s.Message()
	if s.Code().String() == "Unavailable" && strings.Contains(msg, "connection") {
		msg = "cannot reach the authority (" + msg + "): is `ward server` running, and does --address / WARD_ADDRESS point at its admin socket?"
	}
	return &Error{Code: s.Code().String(), Message: msg}
}
