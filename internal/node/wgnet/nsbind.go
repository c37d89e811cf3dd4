package wgnet

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// nsBind opens wireguard-go's UDP sockets in the network namespace the
// device was created in. wireguard-go re-opens them from whichever thread
// handles an interface event (a link going up); in a process whose
// threads are all in one namespace (ward agent) that is the same, but a
// caller that created the device from a thread moved into another
// namespace (tests, an agent run in process) would otherwise get its
// sockets in the process's own namespace.
type nsBind struct {
	conn.Bind
	ns *os.File // the creating thread's network namespace
}

func newNSBind() (*nsBind, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, err
	}
	return &nsBind{Bind: conn.NewDefaultBind(), ns: f}, nil
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		self, oerr := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if oerr != nil {
			err = oerr
			return // the thread stays locked and is discarded with the goroutine
		}
		defer self.Close()
		if serr := unix.Setns(int(b.ns.Fd()), unix.CLONE_NEWNET); serr != nil {
			err = fmt.Errorf("network: entering the device's namespace: %w", serr)
			return
		}
		fns, actual, err = b.Bind.Open(port)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	<-done
	return fns, actual, err
}
