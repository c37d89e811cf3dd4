package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc/peer"

	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

// adminCaller builds the audit identity of an admin-socket caller
// (its uid, from SO_PEERCRED, read once per connection at its handshake)
// and its request id (x-request-id, or new).
func adminCaller(ctx context.Context) reqctx.Caller {
	c := reqctx.Caller{Actor: "unknown", RequestID: reqctx.RequestIDFrom(ctx), IdempotencyKey: reqctx.IdempotencyKeyFrom(ctx)}
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(peercred.AuthInfo); ok {
			c.Actor = adminActor(info.Caller.UID)
		}
	}
	return c
}

// adminActors remembers the actor name of each uid seen on the admin
// socket ("admin:uid=N", a function of the uid alone), so that a call does
// not build the same string again. Only uids that can open the socket
// (its owner's, root's) get in; maxAdminActors bounds it all the same.
var adminActors sync.Map // uint32 -> string

const maxAdminActors = 256

var adminActorCount atomic.Int32

func adminActor(uid uint32) string {
	if v, ok := adminActors.Load(uid); ok {
		return v.(string)
	}
	a := "admin:uid=" + strconv.FormatUint(uint64(uid), 10)
	if adminActorCount.Load() < maxAdminActors {
		if _, loaded := adminActors.LoadOrStore(uid, a); !loaded {
			adminActorCount.Add(1)
		}
	}
	return a
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
