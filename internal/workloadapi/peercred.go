package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/wardproject/ward/internal/attest"
)

// PeerCredAuthInfo carries the caller's SO_PEERCRED credentials into each
// RPC's context (peer.FromContext(ctx).AuthInfo).
type PeerCredAuthInfo struct {
	credentials.CommonAuthInfo
	Caller attest.Caller
}

// AuthType implements credentials.AuthInfo.
func (PeerCredAuthInfo) AuthType() string { return "peercred" }

// PeerCredentials returns gRPC transport credentials for a unix-socket server
// that read the peer's pid, uid and gid when each connection is accepted.
// The connection itself stays plaintext (it never leaves the host).
func PeerCredentials() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := PeerCaller(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, PeerCredAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Caller: c}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("workloadapi: peer credentials are server-side only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }

// PeerCaller reads SO_PEERCRED from a unix socket connection.
func PeerCaller(conn net.Conn) (attest.Caller, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return attest.Caller{}, fmt.Errorf("workloadapi: connection from %s is not a unix socket; serve the Workload API on a unix socket", conn.RemoteAddr())
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return attest.Caller{}, fmt.Errorf("workloadapi: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return attest.Caller{}, fmt.Errorf("workloadapi: peer credentials: %w", err)
	}
	if credErr != nil {
		return attest.Caller{}, fmt.Errorf("workloadapi: SO_PEERCRED: %w", credErr)
	}
	return attest.Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// callerFromContext returns the caller recorded by PeerCredentials.
func callerFromContext(ctx context.Context) (attest.Caller, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return attest.Caller{}, false
	}
	ai, ok := p.AuthInfo.(PeerCredAuthInfo)
	return ai.Caller, ok
}
