package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wardproject/ward/internal/shared/attest"
)

func TestAttestSelf(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	a := New()
	caller := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Image: image(t, os.Getpid())}
	for round := 0; round < 2; round++ { // second round hits the digest cache
		got, err := a.Attest(context.Background(), caller)
		if err != nil {
			t.Fatal(err)
		}
		want := []attest.Selector{
			{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
			{Type: "unix", Value: "gid:" + strconv.Itoa(os.Getgid())},
			{Type: "unix", Value: "path:" + exe},
			{Type: "unix", Value: "sha256:" + hex.EncodeToString(sum[:])},
		}
		for _, g := range groups {
			want = append(want, attest.Selector{Type: "unix", Value: "supplementary_gid:" + strconv.Itoa(g)})
		}
		want = attest.Normalize(want)
		if len(got) != len(want) {
			t.Fatalf("got %v\nwant %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("selector %d: got %s, want %s", i, got[i], want[i])
			}
			if _, err := attest.ParseSelector(got[i].String()); err != nil {
				t.Errorf("attestor emitted an unparsable selector: %v", err)
			}
		}
	}
}

func TestAttestOtherProcessBinary(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	real, _ := filepath.EvalSymlinks(sleep)
	data, err := os.ReadFile(real)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	got, err := New().Attest(context.Background(), attest.Caller{PID: int32(cmd.Process.Pid), UID: 5, GID: 6, Image: image(t, cmd.Process.Pid)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"unix:path:" + real: false, "unix:sha256:" + hex.EncodeToString(sum[:]): false, "unix:uid:5": false, "unix:gid:6": false}
	for _, s := range got {
		if _, ok := want[s.String()]; ok {
			want[s.String()] = true
		}
	}
	for s, seen := range want {
		if !seen {
			t.Errorf("missing %s in %v", s, got)
		}
	}
}

func TestAttestErrors(t *testing.T) {
	a := New()
	if _, err := a.Attest(context.Background(), attest.Caller{PID: 0}); err == nil {
		t.Error("PID 0 accepted")
	}
	// A process that has exited cannot be attested.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("no true binary")
	}
	if _, err := a.Attest(context.Background(), attest.Caller{PID: int32(cmd.Process.Pid)}); err == nil {
		t.Error("exited process attested")
	}
	// A fake /proc without a Groups line.
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "42"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "42", "status"), []byte("Name:\tx\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readGroups(filepath.Join(root, "42", "status")); err == nil {
		t.Error("status without Groups accepted")
	}
	if err := os.WriteFile(filepath.Join(root, "42", "status"), []byte("Groups:\t1 x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readGroups(filepath.Join(root, "42", "status")); err == nil {
		t.Error("bad group accepted")
	}
}

func BenchmarkAttest(b *testing.B) {
	a := New()
	c := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Image: image(b, os.Getpid())}
	for i := 0; i < b.N; i++ {
		if _, err := a.Attest(context.Background(), c); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPIDReuseDetected simulates a PID reused after the connection: the
// caller's pidfd names a process that has exited while /proc/<PID> shows a
// live (different) process. Attestation must fail rather than describe the
// wrong process.
func TestPIDReuseDetected(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Skip("no true binary")
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		t.Skipf("pidfd_open: %v", err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	defer pidfd.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	// "Reused": the PID now shows this test process.
	c := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PIDFD: pidfd}
	if _, err := New().Attest(context.Background(), c); err == nil {
		t.Fatal("attested a reused PID")
	}
	// With a pidfd of the live process it works.
	self, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	selfFile := os.NewFile(uintptr(self), "pidfd")
	defer selfFile.Close()
	c.PIDFD = selfFile
	if _, err := New().Attest(context.Background(), c); err != nil {
		t.Fatalf("live pidfd: %v", err)
	}
}

func image(t testing.TB, pid int) attest.Image {
	t.Helper()
	img, err := attest.ReadImage("/proc", int32(pid))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestBinarySelectorsOnlyForConnectImage: the binary selectors describe
// the program recorded when the caller connected. A caller that runs
// another program now (it exec'd: here, a recorded image that is not the
// current one) is refused; a caller with no recorded image gets uid/gid
// facts only.
func TestBinarySelectorsOnlyForConnectImage(t *testing.T) {
	self := image(t, os.Getpid())
	base := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	for _, tc := range []struct {
		name       string
		img        attest.Image
		wantErr    bool
		wantBinary bool
	}{
		{"recorded and unchanged", self, false, true},
		{"not recorded", attest.Image{}, false, false},
		{"other executable (exec after connect)", attest.Image{Dev: self.Dev, Ino: self.Ino + 1, StartTime: self.StartTime}, true, false},
		{"other start time (PID reused)", attest.Image{Dev: self.Dev, Ino: self.Ino, StartTime: self.StartTime + 1}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.Image = tc.img
			got, err := New().Attest(context.Background(), c)
			if tc.wantErr {
				if err == nil || !errors.Is(err, attest.ErrImageChanged) {
					t.Fatalf("Attest = %v, %v; want ErrImageChanged", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			binary := false
			for _, s := range got {
				if strings.HasPrefix(s.Value, "path:") || strings.HasPrefix(s.Value, "sha256:") {
					binary = true
				}
			}
			if binary != tc.wantBinary {
				t.Fatalf("binary selectors in %v: %v, want %v", got, binary, tc.wantBinary)
			}
		})
	}
}

// TestExecChangesImage: a real exec keeps the PID and start time but
// changes the recorded image, so CheckImage catches it.
func TestExecChangesImage(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// sh prints its PID, waits for a line on stdin, then execs sleep.
	cmd := exec.Command(sh, "-c", "echo $$; read x; exec "+sleep+" 30")
	cmd.Stdout = w
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	buf := make([]byte, 32)
	n, err := r.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || pid != cmd.Process.Pid {
		t.Fatalf("pid line %q", buf[:n])
	}
	before := image(t, pid)
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(sleep)
	for i := 0; ; i++ {
		if p, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); p == real {
			break
		}
		if i == 1000 {
			t.Fatal("sh never exec'd sleep")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := attest.CheckImage("/proc", int32(pid), before); !errors.Is(err, attest.ErrImageChanged) {
		t.Fatalf("CheckImage after exec: %v, want ErrImageChanged", err)
	}
	after := image(t, pid)
	if after.StartTime != before.StartTime {
		t.Errorf("exec changed the start time (%d -> %d); the image check relies on the executable", before.StartTime, after.StartTime)
	}
	if _, err := New().Attest(context.Background(), attest.Caller{PID: int32(pid), UID: 1, GID: 1, Image: before}); !errors.Is(err, attest.ErrImageChanged) {
		t.Fatalf("Attest after exec: %v, want ErrImageChanged", err)
	}
}
