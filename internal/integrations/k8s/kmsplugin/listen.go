package kmsplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"
)

// Listen makes the plugin's unix socket at path with mode 0600. A file
// already there is replaced only if it is a socket owned by this process's
// user that nothing answers on (left by an earlier run); a socket owned by
// someone else, a live one or any other file is refused.
func Listen(path string) (net.Listener, error) {
	st, err := os.Lstat(path)
	switch {
	case err == nil:
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("socket %s: a %s is there, not a socket: remove it or choose another path", path, st.Mode().Type())
		}
		if o := ownerOf(st); o != uint32(os.Geteuid()) {
			return nil, fmt.Errorf("socket %s is owned by uid %d, not by this plugin's uid %d: refusing to take it over (the apiserver would talk to whoever made it)", path, o, os.Geteuid())
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s: another process answers on it (is another kms-plugin running?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	// The umask makes the socket 0600 from its first instant: there is no
	// window in which another user could connect.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func ownerOf(st os.FileInfo) uint32 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Uid
	}
	return ^uint32(0)
}

// streamWorkers is how many goroutines the plugin's gRPC server keeps to
// run calls on. kube-apiserver calls the plugin once per object it stores
// or reads; without a pool each call starts a new goroutine whose stack
// grows again every time, as measured on the authority's admin socket.
const streamWorkers = 16

// Serve serves the KMS v2 API on ln until ctx ends, then stops gracefully.
func (p *Plugin) Serve(ctx context.Context, ln net.Listener) error {
	srv := grpc.NewServer(grpc.NumStreamWorkers(streamWorkers))
	kmsapi.RegisterKeyManagementServiceServer(srv, p)
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				srv.Stop()
			}
		case <-done:
		}
	}()
	err := srv.Serve(ln)
	close(done)
	if ctx.Err() != nil || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}
