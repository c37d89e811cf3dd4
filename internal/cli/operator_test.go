package cli

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/testutil/otheruid"
)

// fakeAuthority is an Operator service that records every share it is
// sent: the listener an attacker would put at the admin socket path.
type fakeAuthority struct {
	wardv1.UnimplementedOperatorServer
	mu     sync.Mutex
	shares []string
	log    io.Writer // also appended to, when the fake runs in a child
}

func (f *fakeAuthority) Unseal(_ context.Context, r *wardv1.UnsealRequest) (*wardv1.SealStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shares = append(f.shares, r.Share)
	if f.log != nil {
		io.WriteString(f.log, r.Share+"\n")
	}
	return &wardv1.SealStatus{Sealed: true, Progress: 1, Threshold: 3}, nil
}

func (f *fakeAuthority) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.shares...)
}

func serveFake(t *testing.T, sock string, f *fakeAuthority) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	wardv1.RegisterOperatorServer(s, f)
	go s.Serve(l)
	t.Cleanup(s.Stop)
}

const testShare = "ward-share-1-0123456789abcdef"

// A share on argv is refused before anything is dialled, with a message
// saying how to pass it, and the share is not echoed.
func TestUnsealRefusesShareOnArgv(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	f := &fakeAuthority{}
	serveFake(t, sock, f)
	addr := "unix://" + sock
	_, _, err := runWard(t, nil, "--address", addr, "operator", "unseal", testShare)
	if err == nil || !strings.Contains(err.Error(), "ward operator unseal < share.txt") || strings.Contains(err.Error(), testShare) {
		t.Fatalf("argv share: %v", err)
	}
	if got := f.got(); len(got) != 0 {
		t.Fatalf("the argv share reached the socket: %q", got)
	}
	// Control: on stdin it goes through (this listener is run by us).
	out, _ := mustRun(t, []byte(testShare+"\n"), "--address", addr, "operator", "unseal")
	if !strings.Contains(out, "Unseal progress: 1/3") || strings.Join(f.got(), ",") != testShare {
		t.Fatalf("stdin share: %q %q", out, f.got())
	}
}

// TestFakeAuthorityHelper is the attacker's listener when run as a child
// process (as another uid) by TestUnsealRefusesForeignSocket.
func TestFakeAuthorityHelper(t *testing.T) {
	sock := os.Getenv("WARD_FAKE_AUTHORITY_SOCKET")
	if sock == "" {
		t.Skip("helper process for TestUnsealRefusesForeignSocket")
	}
	logf, err := os.OpenFile(os.Getenv("WARD_FAKE_AUTHORITY_LOG"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	wardv1.RegisterOperatorServer(s, &fakeAuthority{log: logf})
	s.Serve(l) // until killed
}

// The attack: another local user (uid 65534) listens at the admin socket
// path. The CLI reads the listener's SO_PEERCRED, refuses with an error
// naming the uid, and the share never reaches it. The control run with
// --server-uid shows the same listener does record shares, so the test
// would fail on code that sent them.
func TestUnsealRefusesForeignSocket(t *testing.T) {
	otheruid.Require(t) // the fake listener runs as another uid
	const nobody = otheruid.Nobody
	base := otheruid.PublicDir(t, "ward-peer-")
	// The test binary, readable and executable by the other uid.
	bin := otheruid.CopyTestBinary(t, base, "ward.test")
	evil := filepath.Join(base, "evil")
	os.Mkdir(evil, 0o700)
	if err := os.Chown(evil, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	sock, logPath := filepath.Join(evil, "admin.sock"), filepath.Join(evil, "received")
	child := otheruid.Command(nobody, bin, "-test.run=^TestFakeAuthorityHelper$")
	child.Dir = evil
	child.Env = []string{"WARD_FAKE_AUTHORITY_SOCKET=" + sock, "WARD_FAKE_AUTHORITY_LOG=" + logPath, "HOME=" + evil}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	// Wait (bounded) until the listener accepts: the socket file exists
	// from bind, before listen, when a dial is still refused.
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i == 500 {
			t.Fatal("fake listener did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := "unix://" + sock
	received := func() string { b, _ := os.ReadFile(logPath); return string(b) }

	_, _, err := runWard(t, []byte(testShare+"\n"), "--address", addr, "operator", "unseal")
	if err == nil || !strings.Contains(err.Error(), "served by uid "+strconv.Itoa(nobody)) || !strings.Contains(err.Error(), "refusing to send") {
		t.Fatalf("unseal to a socket served by uid %d: %v", nobody, err)
	}
	if strings.Contains(err.Error(), testShare) {
		t.Fatal("the error shows the share")
	}
	// Every other command on the admin socket is guarded the same way.
	if _, _, err := runWard(t, nil, "--address", addr, "operator", "init"); err == nil || !strings.Contains(err.Error(), "served by uid") {
		t.Fatalf("init to a foreign socket: %v", err)
	}
	if got := received(); got != "" {
		t.Fatalf("the fake listener received %q", got)
	}

	// Control: trusting that uid explicitly lets the share through, so
	// the recorder works and the refusal above is what kept it out.
	mustRun(t, []byte(testShare+"\n"), "--address", addr, "--server-uid", strconv.Itoa(nobody), "operator", "unseal")
	if got := received(); got != testShare+"\n" {
		t.Fatalf("control: the fake listener received %q", got)
	}
}

// The private-directory rule: which socket layouts make their owner a
// trusted server uid.
func TestPrivateDirRule(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	const other = 65534
	mk := func(t *testing.T, parent string, dirMode os.FileMode, dirOwner, sockOwner int) string {
		t.Helper()
		d, err := os.MkdirTemp(parent, "ward-dir-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		sock := filepath.Join(d, "admin.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		os.Chmod(d, dirMode)
		os.Chown(d, dirOwner, dirOwner)
		os.Lchown(sock, sockOwner, sockOwner)
		return sock
	}
	// Under /tmp: world-writable above, so never trusted.
	tmpBase := t.TempDir()
	os.Chmod(tmpBase, 0o755)
	if err := privateDirOwnedBy(mk(t, tmpBase, 0o700, other, other), other); err == nil || !strings.Contains(err.Error(), "another user could have made") {
		t.Errorf("socket dir under /tmp trusted: %v", err)
	}
	// A root-owned chain: /run (root 0755) exists on Linux.
	if st, err := os.Stat("/run"); err != nil || st.Mode().Perm()&0o022 != 0 {
		t.Skip("no root-owned /run to build a private directory under")
	}
	good := mk(t, "/run", 0o700, other, other)
	if err := privateDirOwnedBy(good, other); err != nil {
		t.Errorf("private dir owned by the server uid: %v", err)
	}
	if err := privateDirOwnedBy(good, other+1); err == nil {
		t.Error("another uid trusted for that dir")
	}
	if err := privateDirOwnedBy(mk(t, "/run", 0o770, other, other), other); err == nil {
		t.Error("group-writable dir trusted")
	}
	if err := privateDirOwnedBy(mk(t, "/run", 0o700, other, other+1), other); err == nil {
		t.Error("socket owned by someone else trusted")
	}
	// trust: root and self always; others only by the rules above.
	a := &adminPeer{path: good, self: 1000, extraUID: -1}
	for uid, ok := range map[uint32]bool{0: true, 1000: true, other: true, 4242: false} {
		if err := a.trust(uid, 1); (err == nil) != ok {
			t.Errorf("uid %d: %v", uid, err)
		}
	}
	a.extraUID = 4242
	if err := a.trust(4242, 1); err != nil {
		t.Errorf("--server-uid: %v", err)
	}
}
