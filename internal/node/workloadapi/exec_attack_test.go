package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/node/attestor/unix"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/peercred"
	"github.com/wardproject/ward/internal/testutil/otheruid"
)

// Helper modes of the test binary (re-executed as another user by
// TestConnectThenExecIsRefused), chosen by helperEnv.
const (
	helperEnv    = "WARD_WAPI_HELPER"
	helperSock   = "WARD_WAPI_SOCK"
	helperTarget = "WARD_WAPI_TARGET"
	helperResult = "WARD_WAPI_RESULT"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "connect-exec":
		helperConnectExec()
	case "speak-fd":
		helperSpeakFD()
	case "speak-direct":
		helperSpeakDirect()
	case "sleep":
		time.Sleep(60 * time.Second) // killed by the test long before
		os.Exit(0)
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", os.Getenv(helperEnv))
	os.Exit(2)
}

func helperFail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "helper: "+format+"\n", args...)
	writeResult("helper-error: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}

func writeResult(s string) {
	p := os.Getenv(helperResult)
	_ = os.WriteFile(p+".tmp", []byte(s), 0o644)
	_ = os.Rename(p+".tmp", p)
}

// helperConnectExec is the attacker: it connects to the Workload API
// socket, waits until the agent has accepted the connection (the server's
// HTTP/2 SETTINGS have arrived; peeked, not consumed), hands the socket to
// a child, and execs the target binary, keeping its PID. The child speaks
// gRPC on the inherited socket once the parent runs the target.
func helperConnectExec() {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		helperFail("socket: %v", err)
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: os.Getenv(helperSock)}); err != nil {
		helperFail("connect: %v", err)
	}
	tv := syscall.Timeval{Sec: 10}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		helperFail("SO_RCVTIMEO: %v", err)
	}
	buf := make([]byte, 9)
	for i := 0; ; i++ {
		n, _, err := syscall.Recvfrom(fd, buf, syscall.MSG_PEEK)
		if err == syscall.EINTR && i < 1000 {
			continue // the Go runtime's preemption signals
		}
		if err != nil || n <= 0 {
			helperFail("waiting for the server's first bytes: n=%d %v", n, err)
		}
		break
	}
	child := exec.Command(os.Args[0])
	child.Env = helperEnviron("speak-fd")
	child.ExtraFiles = []*os.File{os.NewFile(uintptr(fd), "wapi")}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		helperFail("start speaker: %v", err)
	}
	target := os.Getenv(helperTarget)
	err = syscall.Exec(target, []string{target}, helperEnviron("sleep"))
	helperFail("exec %s: %v", target, err)
}

// helperEnviron is this environment with the helper mode set to mode
// (syscall.Exec keeps the first of duplicate variables).
func helperEnviron(mode string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, helperEnv+"=") {
			env = append(env, kv)
		}
	}
	return append(env, helperEnv+"="+mode)
}

// helperSpeakFD waits until its parent runs the target binary, then
// fetches an X509-SVID over the socket on fd 3.
func helperSpeakFD() {
	target := os.Getenv(helperTarget)
	exe := fmt.Sprintf("/proc/%d/exe", os.Getppid())
	for i := 0; ; i++ {
		if p, err := os.Readlink(exe); err == nil && p == target {
			break
		}
		if i == 1000 {
			helperFail("parent never exec'd %s", target)
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := net.FileConn(os.NewFile(3, "wapi"))
	if err != nil {
		helperFail("socket on fd 3: %v", err)
	}
	used := false
	dial := func(context.Context, string) (net.Conn, error) {
		if used {
			return nil, errors.New("the inherited connection is gone")
		}
		used = true
		return conn, nil
	}
	writeResult(fetchOnce(grpc.WithContextDialer(dial), "passthrough:///inherited"))
	os.Exit(0)
}

// helperSpeakDirect is the honest workload: the target binary connects
// itself and fetches.
func helperSpeakDirect() {
	writeResult(fetchOnce(nil, "unix://"+os.Getenv(helperSock)))
	os.Exit(0)
}

// fetchOnce returns "OK <spiffe id>" or "ERR <grpc code>: <message>".
func fetchOnce(dialOpt grpc.DialOption, target string) string {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if dialOpt != nil {
		opts = append(opts, dialOpt)
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return "ERR client: " + err.Error()
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := pb.NewSpiffeWorkloadAPIClient(cc).FetchX509SVID(withHeader(ctx), &pb.X509SVIDRequest{})
	if err == nil {
		var m *pb.X509SVIDResponse
		if m, err = s.Recv(); err == nil {
			if len(m.Svids) == 0 || len(m.Svids[0].X509SvidKey) == 0 {
				return "ERR empty response"
			}
			return "OK " + m.Svids[0].SpiffeId
		}
	}
	st, _ := status.FromError(err)
	return "ERR " + st.Code().String() + ": " + st.Message()
}

// TestConnectThenExecIsRefused runs the red-team attack on unix:path: a
// process of uid 65534 connects to the Workload API, hands the socket to
// a child and execs the binary an entry selects (unix:uid:65534 +
// unix:path:<target>); the child asks for the SVID on the inherited
// socket. It must be refused (before the fix /proc showed the target and
// the SVID and key were handed over). The same target binary connecting
// by itself after its exec is served. The helper waits until the agent
// has accepted before it execs: an exec in the instant between connect(2)
// and accept can still be recorded as the connecting program, which is why
// binary selectors count only together with the account (unix:uid or
// unix:gid) and docs/identity.md says so; this test proves the image
// check, not that race.
func TestConnectThenExecIsRefused(t *testing.T) {
	otheruid.Require(t) // helper processes run as uid 65534
	work, err := os.MkdirTemp("", "wexec")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	work, err = filepath.EvalSymlinks(work)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(work, 0o777); err != nil {
		t.Fatal(err)
	}
	// The target: a copy of this test binary at another path (so its
	// /proc/PID/exe differs from the attacker's), readable by uid 65534.
	target := otheruid.CopyTestBinary(t, work, "target-workload")
	attacker := otheruid.CopyTestBinary(t, work, "attacker")

	c := newTestCA(t)
	src := newMemSource(t, c)
	id := src.addEntry(t, "/exec-target", "unix:uid:65534", "unix:path:"+target)
	addr := serve(t, src, unix.New())
	sock := strings.TrimPrefix(addr, "unix://")
	if err := os.Chmod(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}

	run := func(t *testing.T, bin, mode string) string {
		t.Helper()
		result := filepath.Join(work, mode+".result")
		cmd := otheruid.Command(otheruid.Nobody, bin)
		cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperSock+"="+sock, helperTarget+"="+target, helperResult+"="+result)
		cmd.SysProcAttr.Setpgid = true
		cmd.Stderr = &testWriter{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The attacker's process ends up sleeping as the target and its
		// speaker child is in the same process group: end them all.
		t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
		for i := 0; i < 300; i++ {
			if b, err := os.ReadFile(result); err == nil {
				return string(b)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("helper %s wrote no result", mode)
		return ""
	}

	t.Run("attack", func(t *testing.T) {
		got := run(t, attacker, "connect-exec")
		t.Logf("attacker's speaker got: %s", got)
		if !strings.HasPrefix(got, "ERR PermissionDenied") {
			t.Fatalf("connect-then-exec: %q, want PermissionDenied (the attacker got the SVID of the exec'd binary)", got)
		}
	})
	t.Run("benign", func(t *testing.T) {
		got := run(t, target, "speak-direct")
		t.Logf("target got: %s", got)
		if got != "OK "+id.String() {
			t.Fatalf("target connecting by itself: %q, want OK %s", got, id)
		}
	})
}

// TestBinarySelectorAloneNeverMatches: an entry selecting only on the
// binary cannot be created in a Source built with ParseSelectors, and
// attest.Subset never matches one, whatever the caller's selectors.
func TestBinarySelectorAloneNeverMatches(t *testing.T) {
	c := newTestCA(t)
	src := newMemSource(t, c)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	self, _ = filepath.EvalSymlinks(self)
	// Bypass ParseSelectors (which refuses it) to see matching ignores it.
	id := src.addEntry(t, "/binary-only", "unix:uid:"+fmt.Sprint(os.Getuid()))
	src.mu.Lock()
	src.entries[len(src.entries)-1].selectors = src.entries[len(src.entries)-1].selectors[:0:0]
	src.entries[len(src.entries)-1].selectors = append(src.entries[len(src.entries)-1].selectors, pathSelector(self))
	src.mu.Unlock()
	addr := serve(t, src, unix.New())
	cl := rawClient(t, addr)
	s, err := cl.FetchX509SVID(withHeader(testCtx(t)), &pb.X509SVIDRequest{})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("entry %s with only unix:path:%s: %v, want PermissionDenied", id, self, err)
	}
}

func pathSelector(p string) attest.Selector { return attest.Selector{Type: "unix", Value: "path:" + p} }

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestAnswerRefusedAfterImageChange: before every answer the server
// checks the caller still runs the program recorded when it connected;
// one that exec'd (here: a recorded image that is not the current one) is
// refused with PermissionDenied, one without a recorded image got no
// binary selectors and is not checked.
func TestAnswerRefusedAfterImageChange(t *testing.T) {
	self, err := attest.ReadImage("/proc", int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil, unix.New())
	for _, tc := range []struct {
		name string
		img  attest.Image
		ok   bool
	}{
		{"unchanged", self, true},
		{"none recorded", attest.Image{}, true},
		{"exec'd", attest.Image{Dev: self.Dev, Ino: self.Ino ^ 1, StartTime: self.StartTime}, false},
	} {
		ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Caller: attest.Caller{PID: int32(os.Getpid()), Image: tc.img}}})
		err := s.checkUnchanged(ctx)
		if tc.ok && err != nil || !tc.ok && status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
