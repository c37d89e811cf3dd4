package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Every ward invocation (a file encrypted in a script's loop, `ward kms`,
// an exec probe) pays for the init of every package linked into the
// binary, whichever command runs. ward's own packages build what only
// some commands need (regexps, templates, tables) on first use, never at
// init: these bounds hold that without timing anything.
const (
	maxInitAllocs = 120      // per ward package, as GODEBUG=inittrace=1 counts them
	maxInitBytes  = 32 << 10 // per ward package
)

// initTrace runs ward with args under GODEBUG=inittrace=1 and returns each
// package's init allocations and bytes.
func initTrace(t *testing.T, dir string, args ...string) map[string][2]int {
	t.Helper()
	cmd := exec.Command(WardBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	out := map[string][2]int{}
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		// init PKG @0.51 ms, 0.017 ms clock, 13832 bytes, 8 allocs
		f := strings.Fields(sc.Text())
		if len(f) != 11 || f[0] != "init" || f[8] != "bytes," || f[10] != "allocs" {
			continue
		}
		b, err1 := strconv.Atoi(f[7])
		a, err2 := strconv.Atoi(f[9])
		if err1 != nil || err2 != nil {
			t.Fatalf("unexpected inittrace line %q", sc.Text())
		}
		out[f[1]] = [2]int{a, b}
	}
	if len(out) < 50 {
		t.Fatalf("GODEBUG=inittrace=1 printed %d package inits, want the whole binary's:\n%s", len(out), stderr.String())
	}
	return out
}

// TestStartupInitIsLight: no ward package allocates more than a little at
// init (api/ is generated protobuf code registering its descriptors, the
// same for every protobuf user), and a 1 KiB file encrypts without a
// garbage collection cycle (start-up and the command stay under the first
// heap goal, 4 MB: init alone was past 1.5 MB when templates and regexps
// were built eagerly).
func TestStartupInitIsLight(t *testing.T) {
	dir := t.TempDir()
	inits := initTrace(t, dir, "--help")
	const prefix = "github.com/wardproject/ward/"
	seen := 0
	for pkg, ab := range inits {
		if !strings.HasPrefix(pkg, prefix) || strings.HasPrefix(pkg, prefix+"api/") {
			continue
		}
		seen++
		if ab[0] > maxInitAllocs || ab[1] > maxInitBytes {
			t.Errorf("%s: %d allocations, %d bytes at init (at most %d and %d): build what only some commands need on first use (sync.OnceValue), not in a package-level var or init", pkg, ab[0], ab[1], maxInitAllocs, maxInitBytes)
		}
	}
	if seen < 10 {
		t.Errorf("only %d ward packages in the init trace", seen)
	}

	in := filepath.Join(dir, "in.bin")
	if err := os.WriteFile(in, bytes.Repeat([]byte("ward"), 256), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(WardBin, "local-key", "new", filepath.Join(dir, "key.json"), "--name", "startup").CombinedOutput(); err != nil {
		t.Fatalf("local-key new: %v\n%s", err, out)
	}
	cmd := exec.Command(WardBin, "encrypt", "--local-key", filepath.Join(dir, "key.json"), "-i", in, "-o", filepath.Join(dir, "in.ward"))
	cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("encrypt: %v\n%s", err, out)
	}
	if bytes.Contains(out, []byte("gc 1 @")) {
		t.Errorf("encrypting 1 KiB ran a garbage collection: start-up and the command reached the first heap goal (4 MB); look for eager work in init (GODEBUG=inittrace=1) or in building the command tree:\n%s", out)
	}
}

// TestVersionOfTheBuiltBinary: the binary says which commit it was built
// from (the go command stamps it in a checkout), and --version answers as
// `ward version` does.
func TestVersionOfTheBuiltBinary(t *testing.T) {
	out, err := exec.Command(WardBin, "version", "--json").Output()
	if err != nil {
		t.Fatalf("ward version --json: %v", err)
	}
	var v struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
		Go      string `json:"go"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("ward version --json: %v\n%s", err, out)
	}
	if v.Version == "" || !strings.HasPrefix(v.Go, "go") {
		t.Errorf("ward version --json = %s", out)
	}
	if v.Commit != "" && len(v.Commit) != 40 {
		t.Errorf("commit %q is not a full git commit", v.Commit)
	}
	plain, err := exec.Command(WardBin, "version").Output()
	if err != nil {
		t.Fatalf("ward version: %v", err)
	}
	flag, err := exec.Command(WardBin, "--version").Output()
	if err != nil {
		t.Fatalf("ward --version: %v", err)
	}
	if string(flag) != string(plain) || !strings.HasPrefix(string(plain), "ward "+v.Version+"\n") {
		t.Errorf("ward --version printed %q, ward version %q", flag, plain)
	}
}
