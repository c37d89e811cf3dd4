package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/wardproject/ward/envelope"
)

// run executes ward with args and stdin, returning stdout, stderr, error.
func runWard(t *testing.T, stdin []byte, args ...string) (string, string, error) {
	t.Helper()
	root := NewRoot()
	var out, errb bytes.Buffer
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(bytes.NewReader(stdin))
	err := root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func mustRun(t *testing.T, stdin []byte, args ...string) (string, string) {
	t.Helper()
	out, errOut, err := runWard(t, stdin, args...)
	if err != nil {
		t.Fatalf("ward %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out, errOut
}

func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestFilesCLI(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.json")
	mustRun(t, nil, "local-key", "new", key, "--name", "dev")
	if _, _, err := runWard(t, nil, "local-key", "new", key); err == nil {
		t.Fatal("overwrote an existing key file")
	}
	pt := rnd(200 << 10)
	src := filepath.Join(dir, "data.bin")
	os.WriteFile(src, pt, 0o644)
	enc := filepath.Join(dir, "data.bin.ward")

	// stdin -> stdout and file -> file.
	ct, _ := mustRun(t, pt, "encrypt", "--local-key", key, "--classification", "confidential", "--meta", "owner=team-a", "--segment-size", "4KiB")
	back, _ := mustRun(t, []byte(ct), "decrypt", "--local-key", key)
	if back != string(pt) {
		t.Fatal("stdin/stdout round trip differs")
	}
	mustRun(t, nil, "encrypt", "--local-key", key, "--key", "local/dev", "-i", src, "-o", enc, "--classification", "confidential", "--meta", "owner=team-a", "--segment-size", "4K")

	out, _ := mustRun(t, nil, "inspect", enc)
	for _, want := range []string{"local/dev", "Key version:", "aes-256-gcm", "confidential", "owner=team-a", "Segment size:    4096", "Plaintext size:  204800"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect lacks %q:\n%s", want, out)
		}
	}
	out, _ = mustRun(t, nil, "inspect", "--json", enc)
	var ij inspectJSON
	if err := json.Unmarshal([]byte(out), &ij); err != nil || ij.PlaintextSize != int64(len(pt)) || ij.Segments != 50 {
		t.Fatalf("inspect --json: %v %+v", err, ij)
	}
	_, errOut := mustRun(t, nil, "verify", "--local-key", key, enc)
	if !strings.Contains(errOut, "verified 1 files, 200.0 KiB; 0 failures") {
		t.Fatalf("verify summary: %q", errOut)
	}
	dec := filepath.Join(dir, "dec.bin")
	mustRun(t, nil, "decrypt", "--local-key", key, "-i", enc, "-o", dec)
	if b, _ := os.ReadFile(dec); !bytes.Equal(b, pt) {
		t.Fatal("file round trip differs")
	}

	// Rotation, rewrap, reencrypt.
	mustRun(t, nil, "local-key", "rotate", key)
	_, errOut = mustRun(t, nil, "rewrap", "--local-key", key, enc)
	if !strings.Contains(errOut, "rewrapped 1 files") {
		t.Fatalf("rewrap: %q", errOut)
	}
	_, errOut = mustRun(t, nil, "rewrap", "--local-key", key, enc)
	if !strings.Contains(errOut, "rewrapped 0 files, 0 B; 1 already current") {
		t.Fatalf("second rewrap: %q", errOut)
	}
	out, _ = mustRun(t, nil, "inspect", enc)
	if !strings.Contains(out, "Key version:     2") {
		t.Fatalf("after rewrap:\n%s", out)
	}
	mustRun(t, nil, "reencrypt", "--local-key", key, enc)
	mustRun(t, nil, "verify", "--local-key", key, enc)

	// Context: bound but not stored.
	withCtx := filepath.Join(dir, "ctx.ward")
	mustRun(t, nil, "encrypt", "--local-key", key, "-i", src, "-o", withCtx, "--context", "tenant=a")
	if _, _, err := runWard(t, nil, "verify", "--local-key", key, withCtx); err == nil {
		t.Fatal("verify without the context succeeded")
	}
	mustRun(t, nil, "verify", "--local-key", key, "--context", "tenant=a", withCtx)

	// Errors users will hit.
	for _, args := range [][]string{
		{"encrypt", "-i", src, "-o", enc + "2"},                            // no --key, no local key
		{"encrypt", "--key", "k", "-i", src, "-o", enc + "2"},              // no authority yet
		{"encrypt", "--local-key", key, "--alg", "des", "-i", src},         // bad algorithm
		{"encrypt", "--local-key", key, "--meta", "novalue", "-i", src},    // bad meta
		{"encrypt", "--local-key", key, "--segment-size", "12", "-i", src}, // too small
		{"encrypt", "--local-key", key, "--key", "local/other", "-i", src}, // wrong local key
		{"decrypt", "--local-key", key, "-i", src, "-o", dec + "2"},        // plaintext input
		{"inspect", src},
	} {
		if _, _, err := runWard(t, nil, args...); err == nil {
			t.Errorf("ward %s succeeded", strings.Join(args, " "))
		}
	}
	if _, err := os.Stat(enc + "2"); err == nil {
		t.Error("failed encrypt left an output file")
	}
	if _, err := os.Stat(dec + "2"); err == nil {
		t.Error("failed decrypt left an output file")
	}
}

func TestDecryptBadFileCLI(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.json")
	mustRun(t, nil, "local-key", "new", key)
	pt := rnd(10 * 4096)
	ct, _ := mustRun(t, pt, "encrypt", "--local-key", key, "--segment-size", "4096")
	h, err := envelope.ParseHeader(strings.NewReader(ct))
	if err != nil {
		t.Fatal(err)
	}
	bad := []byte(ct)
	bad[h.Len+3*(4096+16)+7] ^= 1 // segment 3

	// To stdout: exactly the three verified segments, then a non-zero exit.
	out, _, err := runWard(t, bad, "decrypt", "--local-key", key)
	if err == nil || !strings.Contains(err.Error(), "segment 3") {
		t.Fatalf("decrypt to stdout: %v", err)
	}
	if out != string(pt[:3*4096]) {
		t.Fatalf("stdout got %d bytes, want the 3 verified segments (%d)", len(out), 3*4096)
	}

	// To a file: nothing appears.
	badFile := filepath.Join(dir, "bad.ward")
	os.WriteFile(badFile, bad, 0o600)
	if _, _, err := runWard(t, nil, "decrypt", "--local-key", key, "-i", badFile, "-o", filepath.Join(dir, "out")); err == nil {
		t.Fatal("decrypting a damaged file succeeded")
	}
	if got := strings.Join(files(t, dir), ","); got != "bad.ward,key.json" {
		t.Fatalf("left behind: %s", got)
	}
	// Truncated at a segment boundary, on stdin.
	if _, _, err := runWard(t, []byte(ct[:h.Len+5*(4096+16)]), "decrypt", "--local-key", key); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated: %v", err)
	}
	// verify reports per file and fails overall.
	good := filepath.Join(dir, "good.ward")
	os.WriteFile(good, []byte(ct), 0o600)
	_, errOut, err := runWard(t, nil, "verify", "--local-key", key, dir)
	if err == nil || !strings.Contains(errOut, "FAILED "+badFile) || !strings.Contains(errOut, "verified 1 files") {
		t.Fatalf("verify dir: %v\n%s", err, errOut)
	}
}

func TestDirectoryCLI(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.json")
	mustRun(t, nil, "local-key", "new", key)
	in, enc, dec := filepath.Join(dir, "in"), filepath.Join(dir, "enc"), filepath.Join(dir, "dec")
	want := map[string][]byte{"a.txt": []byte("alpha"), "sub/b.bin": rnd(70000), "sub/deeper/empty": nil}
	for name, data := range want {
		p := filepath.Join(in, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data, 0o644)
	}
	if _, _, err := runWard(t, nil, "encrypt", "--local-key", key, "-i", in); err == nil {
		t.Fatal("directory without -o accepted")
	}
	if _, _, err := runWard(t, nil, "encrypt", "--local-key", key, "-i", in, "-o", filepath.Join(in, "x")); err == nil {
		t.Fatal("output inside input accepted")
	}
	_, errOut := mustRun(t, nil, "encrypt", "--local-key", key, "-i", in, "-o", enc)
	if !strings.Contains(errOut, "encrypted 3 files") {
		t.Fatalf("summary: %q", errOut)
	}
	if got := strings.Join(files(t, enc), ","); got != "a.txt.ward,sub/b.bin.ward,sub/deeper/empty.ward" {
		t.Fatalf("encrypted tree: %s", got)
	}
	mustRun(t, nil, "local-key", "rotate", key)
	_, errOut = mustRun(t, nil, "rewrap", "--local-key", key, enc)
	if !strings.Contains(errOut, "rewrapped 3 files") {
		t.Fatalf("rewrap summary: %q", errOut)
	}
	mustRun(t, nil, "reencrypt", "--local-key", key, enc)
	mustRun(t, nil, "decrypt", "--local-key", key, "-i", enc, "-o", dec)
	for name, data := range want {
		if b, err := os.ReadFile(filepath.Join(dec, name)); err != nil || !bytes.Equal(b, data) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"65536": 65536, "64K": 65536, "64KiB": 65536, "1m": 1 << 20, "2MiB": 2 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x", "-1", "1G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// The red-team attacks on output paths, through the CLI: a planted link
// at -o, a planted 0666 file at -o, a link out of the tree under -o DIR,
// and a link in the input tree.
func TestOutputPathAttacksCLI(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key.json")
	mustRun(t, nil, "local-key", "new", key)
	src := filepath.Join(dir, "report")
	os.WriteFile(src, []byte("salaries"), 0o600)
	enc := filepath.Join(dir, "report.ward")
	mustRun(t, nil, "encrypt", "--local-key", key, "-i", src, "-o", enc)
	shared := t.TempDir()

	// Planted symlink at -o → refused, target untouched.
	victim := filepath.Join(t.TempDir(), "attacker-file")
	os.WriteFile(victim, []byte("bait"), 0o644)
	os.Chmod(victim, 0o644)
	link := filepath.Join(shared, "report.txt")
	os.Symlink(victim, link)
	_, _, err := runWard(t, nil, "decrypt", "--local-key", key, "-i", enc, "-o", link)
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("decrypt to a planted link: %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "bait" {
		t.Fatalf("target written: %q", b)
	}
	_, _, err = runWard(t, []byte("x"), "decrypt", "--local-key", key, "-o", link) // stdin form
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("decrypt stdin to a planted link: %v", err)
	}

	// Planted 0666 file → the plaintext is a new 0600 file.
	planted := filepath.Join(shared, "planted.txt")
	os.WriteFile(planted, nil, 0o666)
	os.Chmod(planted, 0o666)
	mustRun(t, nil, "decrypt", "--local-key", key, "-i", enc, "-o", planted)
	if st, _ := os.Lstat(planted); !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Fatalf("plaintext mode %v", st.Mode())
	}
	// Ciphertext outputs are 0600 too; --mode chooses, validated.
	if st, _ := os.Stat(enc); st.Mode().Perm() != 0o600 {
		t.Fatalf("ciphertext mode %v", st.Mode())
	}
	mustRun(t, nil, "encrypt", "--local-key", key, "-i", src, "-o", enc, "--mode", "0644")
	if st, _ := os.Stat(enc); st.Mode().Perm() != 0o644 {
		t.Fatalf("--mode 0644 gave %v", st.Mode())
	}
	for _, m := range []string{"0666", "0777", "abc", "4700"} {
		out := filepath.Join(shared, "m"+m)
		if _, _, err := runWard(t, nil, "decrypt", "--local-key", key, "-i", enc, "-o", out, "--mode", m); err == nil || !strings.Contains(err.Error(), "--mode") {
			t.Errorf("--mode %s: %v", m, err)
		}
		if _, err := os.Lstat(out); err == nil {
			t.Errorf("--mode %s: output written", m)
		}
	}
	if _, _, err := runWard(t, []byte("x"), "decrypt", "--local-key", key, "--mode", "0600"); err == nil {
		t.Error("--mode with stdout accepted")
	}

	// Directory mode: an output subdirectory that links out of the tree.
	in := filepath.Join(dir, "in")
	os.MkdirAll(filepath.Join(in, "sub"), 0o700)
	os.WriteFile(filepath.Join(in, "a"), []byte("a"), 0o600)
	os.WriteFile(filepath.Join(in, "sub", "b"), []byte("b"), 0o600)
	encDir := filepath.Join(dir, "enc")
	mustRun(t, nil, "encrypt", "--local-key", key, "-i", in, "-o", encDir)
	outDir, escape := filepath.Join(shared, "dec"), t.TempDir()
	os.MkdirAll(outDir, 0o700)
	os.Symlink(escape, filepath.Join(outDir, "sub"))
	_, errOut, err := runWard(t, nil, "decrypt", "--local-key", key, "-i", encDir, "-o", outDir)
	if err == nil || !strings.Contains(errOut, filepath.Join(outDir, "sub")+" is a symbolic link") {
		t.Fatalf("decrypt into a tree with a link out: %v\n%s", err, errOut)
	}
	if got := files(t, escape); len(got) != 0 {
		t.Fatalf("written outside the output tree: %v", got)
	}
	if b, err := os.ReadFile(filepath.Join(outDir, "a")); err != nil || string(b) != "a" {
		t.Fatalf("the safe file: %q %v", b, err)
	}
	// -o DIR that is itself a link is refused before anything is written.
	linkDir := filepath.Join(shared, "decl")
	os.Symlink(escape, linkDir)
	if _, _, err := runWard(t, nil, "decrypt", "--local-key", key, "-i", encDir, "-o", linkDir+"/"); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("-o DIR link: %v", err)
	}
	if got := files(t, escape); len(got) != 0 {
		t.Fatalf("written through -o DIR link: %v", got)
	}

	// The input walk does not follow a symlinked directory.
	secret := t.TempDir()
	os.WriteFile(filepath.Join(secret, "s"), []byte("s"), 0o600)
	os.Symlink(secret, filepath.Join(in, "linked"))
	_, errOut = mustRun(t, nil, "encrypt", "--local-key", key, "-i", in, "-o", filepath.Join(dir, "enc2"))
	if !strings.Contains(errOut, "skipping "+filepath.Join(in, "linked")) || strings.Contains(strings.Join(files(t, filepath.Join(dir, "enc2")), ","), "linked") {
		t.Fatalf("input link followed: %s", errOut)
	}
}
