package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wardproject/ward/internal/attest"
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
	caller := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
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
	got, err := New().Attest(context.Background(), attest.Caller{PID: int32(cmd.Process.Pid), UID: 5, GID: 6})
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
	c := attest.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
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
