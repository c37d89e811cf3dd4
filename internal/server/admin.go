package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/wardproject/ward/internal/reqctx"
)

// peerCredsAuth reads SO_PEERCRED from admin-socket connections so every
// admin action is attributed to the local user who made it.
type peerCredsAuth struct{}

// peerCredsInfo is the credentials.AuthInfo of an admin connection.
type peerCredsInfo struct {
	credentials.CommonAuthInfo
	UID, GID uint32
	PID      int32
}

func (peerCredsInfo) AuthType() string { return "unix-peercred" }

func (peerCredsAuth) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, peerCredsInfo{}, nil
}

func (peerCredsAuth) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("admin API accepts unix socket connections only")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("reading peer credentials: %w", credErr)
	}
	return c, peerCredsInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}

func (peerCredsAuth) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (p peerCredsAuth) Clone() credentials.TransportCredentials { return p }
func (peerCredsAuth) OverrideServerName(string) error           { return nil }

// callerFromContext builds the audit identity of a gRPC caller and its
// request id (taken from the x-request-id header when the client set one).
func callerFromContext(ctx context.Context) reqctx.Caller {
	c := reqctx.Caller{Actor: "unknown"}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(peerCredsInfo); ok {
			c.Actor = "admin:uid=" + strconv.FormatUint(uint64(info.UID), 10)
		}
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-request-id"); len(v) == 1 && validRequestID(v[0]) {
			c.RequestID = v[0]
		}
	}
	if c.RequestID == "" {
		c.RequestID = reqctx.NewRequestID()
	}
	return c
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// listenAdmin creates the admin socket, readable and writable by its owner
// only: file permissions are the admin boundary, as in SPIRE.
func listenAdmin(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating admin socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket path %s exists and is not a socket: remove it or choose another admin_socket", path)
		}
		// A stale socket from a previous run: refuse if something answers.
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s is in use by another ward server", path)
		}
		os.Remove(path)
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
