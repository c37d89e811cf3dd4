// Package peercred reads the SO_PEERCRED credentials (uid, gid, pid, pidfd and
// the program image) of the process at the other end of a unix socket, as
// gRPC transport credentials and for plain connections. The Workload API,
// the agent's policy socket, the authority's admin socket and the CLI use it.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/wardproject/ward/internal/shared/attest"
)

// AuthInfo carries the caller's SO_PEERCRED credentials into each
// RPC's context (peer.FromContext(ctx).AuthInfo).
type AuthInfo struct {
	credentials.CommonAuthInfo
	Caller attest.Caller
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// Credentials returns gRPC transport credentials for a unix-socket server
// that read the peer's pid, uid and gid when each connection is accepted.
// The connection itself stays plaintext (it never leaves the host).
func Credentials() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := Read(conn)
	if err != nil {
		return nil, nil, err
	}
	info := AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Caller: c}
	if c.PIDFD != nil {
		conn = &pidfdConn{Conn: conn, pidfd: c.PIDFD}
	}
	return conn, info, nil
}

// pidfdConn closes the peer's pidfd with the connection.
type pidfdConn struct {
	net.Conn
	pidfd *os.File
	once  sync.Once
}

func (c *pidfdConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.pidfd.Close() })
	return err
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: peer credentials are server-side only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }

// Read reads SO_PEERCRED from a unix socket connection, the peer's
// pidfd (SO_PEERPIDFD, Linux ≥ 6.5) and the image of the program it runs
// (attest.ReadImage; zero if unreadable). uid and gid are the ones of the
// process that called connect(2), fixed by the kernel at that moment: they
// say who connected, not who speaks now (the descriptor may have been
// inherited or passed with SCM_RIGHTS to another process).
func Read(conn net.Conn) (attest.Caller, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return attest.Caller{}, fmt.Errorf("peercred: connection from %s is not a unix socket; peer credentials need a unix socket", conn.RemoteAddr())
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return attest.Caller{}, fmt.Errorf("peercred: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	pidfd := -1
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr == nil {
			// Linux ≥ 6.5; older kernels answer ENOPROTOOPT.
			if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPIDFD); err == nil && pfd >= 0 {
				pidfd = pfd
			}
		}
	}); err != nil {
		return attest.Caller{}, fmt.Errorf("peercred: peer credentials: %w", err)
	}
	if credErr != nil {
		return attest.Caller{}, fmt.Errorf("peercred: SO_PEERCRED: %w", credErr)
	}
	c := attest.Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}
	// The program the peer runs now, as early as we can: the unix attestor
	// reports binary selectors only while the peer still runs it (a process
	// that connects and then execs keeps its PID). Unreadable (another
	// user's process and we are not root, or another PID namespace): no
	// image, and so no binary selectors.
	if img, err := attest.ReadImage("/proc", cred.Pid); err == nil {
		c.Image = img
	}
	if pidfd >= 0 {
		unix.CloseOnExec(pidfd)
		c.PIDFD = os.NewFile(uintptr(pidfd), "pidfd")
	}
	return c, nil
}

// soPeerPIDFD is SO_PEERPIDFD (include/uapi/asm-generic/socket.h), which
// golang.org/x/sys/unix does not name yet.
const soPeerPIDFD = 77

// FromContext returns the caller recorded by Credentials.
func FromContext(ctx context.Context) (attest.Caller, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return attest.Caller{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	return ai.Caller, ok
}
