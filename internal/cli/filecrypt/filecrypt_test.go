package filecrypt

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/envelope"
)

var bg = context.Background()

func setup(t *testing.T) (*Runner, *envelope.LocalKMS, string) {
	t.Helper()
	l, err := envelope.NewLocalKMS("t")
	if err != nil {
		t.Fatal(err)
	}
	return &Runner{KMS: l}, l, t.TempDir()
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o640); err != nil {
		t.Fatal(err)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// listDir returns every name under dir, to prove nothing stray is left.
func listDir(t *testing.T, dir string) []string {
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

func TestCollect(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a"), []byte("1"))
	write(t, filepath.Join(dir, "sub", "b"), []byte("22"))
	write(t, filepath.Join(dir, "sub", tmpPrefix+"x"), []byte("tmp"))
	os.Symlink(filepath.Join(dir, "a"), filepath.Join(dir, "link"))
	items, skipped, err := Collect([]string{dir, filepath.Join(dir, "a")})
	if err != nil {
		t.Fatal(err)
	}
	var rels []string
	for _, it := range items {
		rels = append(rels, it.Rel)
	}
	if strings.Join(rels, ",") != "a,sub/b" || len(skipped) != 1 {
		t.Fatalf("items %v skipped %v", rels, skipped)
	}
	if _, _, err := Collect([]string{filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("missing path accepted")
	}
}

func TestAtomicWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	write(t, p, []byte("old"))
	err := AtomicWrite(p, 0o600, func(f *os.File) error {
		f.Write([]byte("partial"))
		return errors.New("boom")
	})
	if err == nil {
		t.Fatal("error lost")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("file changed to %q", b)
	}
	if got := listDir(t, dir); len(got) != 1 {
		t.Fatalf("left behind: %v", got)
	}
	if err := AtomicWrite(p, 0o600, func(f *os.File) error { _, err := f.Write([]byte("new")); return err }); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(p)
	// The old file was 0640: its mode is not inherited.
	if b, _ := os.ReadFile(p); string(b) != "new" || st.Mode().Perm() != 0o600 {
		t.Fatalf("got %q mode %v", b, st.Mode())
	}
}

func TestFileOps(t *testing.T) {
	r, l, dir := setup(t)
	pt := randBytes(300 << 10)
	src, enc, dec := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward"), filepath.Join(dir, "out")
	write(t, src, pt)
	if _, err := r.EncryptFile(bg, enc, src, l.KeyName(), envelope.WithSegmentSize(envelope.MinSegmentSize), envelope.WithClassification("internal")); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Verify(bg, enc); err != nil || n != int64(len(pt)) {
		t.Fatalf("verify: %d %v", n, err)
	}
	if _, err := r.DecryptFile(bg, dec, enc); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dec); !bytes.Equal(b, pt) {
		t.Fatal("round trip differs")
	}

	// Rewrap: unchanged until the key rotates, then header only.
	if changed, _, err := r.Rewrap(bg, enc); err != nil || changed {
		t.Fatalf("rewrap before rotation: changed=%v %v", changed, err)
	}
	before, _ := os.ReadFile(enc)
	l.Rotate()
	changed, h, err := r.Rewrap(bg, enc)
	if err != nil || !changed || h.KeyVersion != 2 {
		t.Fatalf("rewrap: %v %v", changed, err)
	}
	after, _ := os.ReadFile(enc)
	oh, _ := envelope.ParseHeader(bytes.NewReader(before))
	if !bytes.Equal(before[oh.Len:], after[h.Len:]) {
		t.Fatal("rewrap touched the segments")
	}

	// Reencrypt: new object id, same labels, same plaintext.
	if _, err := r.Reencrypt(bg, enc, ""); err != nil {
		t.Fatal(err)
	}
	re, _ := os.ReadFile(enc)
	rh, _ := envelope.ParseHeader(bytes.NewReader(re))
	if rh.ObjectID == h.ObjectID || rh.Classification != "internal" || rh.SegmentSize != envelope.MinSegmentSize || rh.KeyVersion != 2 {
		t.Fatalf("reencrypted header: %+v", rh)
	}
	if _, err := r.Verify(bg, enc); err != nil {
		t.Fatal(err)
	}
}

// Damaged input leaves nothing behind: no output file, no temp file, the
// original untouched.
func TestBadInputLeavesNothing(t *testing.T) {
	r, l, dir := setup(t)
	pt := randBytes(100 << 10)
	src, enc := filepath.Join(dir, "src"), filepath.Join(dir, "src.ward")
	write(t, src, pt)
	if _, err := r.EncryptFile(bg, enc, src, l.KeyName(), envelope.WithSegmentSize(envelope.MinSegmentSize)); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(enc)
	bad := bytes.Clone(good)
	bad[len(bad)-100] ^= 1 // last segment
	write(t, enc, bad)
	out := filepath.Join(dir, "out")
	if _, err := r.DecryptFile(bg, out, enc); !errors.Is(err, envelope.ErrSegmentAuth) {
		t.Fatalf("decrypt damaged: %v", err)
	}
	if _, err := r.Reencrypt(bg, enc, ""); !errors.Is(err, envelope.ErrSegmentAuth) {
		t.Fatalf("reencrypt damaged: %v", err)
	}
	if b, _ := os.ReadFile(enc); !bytes.Equal(b, bad) {
		t.Fatal("reencrypt of a damaged file changed it")
	}
	write(t, enc, good[:len(good)-1000])
	l.Rotate()
	if _, err := r.Reencrypt(bg, enc, ""); !errors.Is(err, envelope.ErrSegmentAuth) {
		t.Fatalf("reencrypt truncated: %v", err)
	}
	write(t, enc, []byte("not encrypted"))
	if _, _, err := r.Rewrap(bg, enc); !errors.Is(err, envelope.ErrNotEnvelope) {
		t.Fatalf("rewrap plaintext: %v", err)
	}
	if got := strings.Join(listDir(t, dir), ","); got != "src,src.ward" {
		t.Fatalf("left behind: %s", got)
	}
}

func TestEachSummary(t *testing.T) {
	items := []Item{{Path: "a", Size: 1}, {Path: "b", Size: 2}, {Path: "c", Size: 3}}
	s := Each(bg, "checked", items, 2, nil, func(ctx context.Context, it Item) (Result, error) {
		switch it.Path {
		case "b":
			return Result{}, errors.New("bad b")
		case "c":
			return Result{Unchanged: true}, nil
		}
		return Result{Bytes: it.Size}, nil
	})
	var buf bytes.Buffer
	s.Print(&buf)
	want := "FAILED b: bad b\nchecked 1 files, 1 B; 1 already current; 1 failures\n"
	if buf.String() != want || s.Err() == nil || !strings.Contains(s.Err().Error(), "1 of 3") {
		t.Fatalf("summary:\n%s\nerr %v", buf.String(), s.Err())
	}
}

func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress(&buf, false, "encrypting", 2<<20, 4)
	p.Add(1 << 20)
	p.FileDone()
	line := p.Line(time.Second)
	for _, want := range []string{"encrypting", " 50%", "1.0 MiB/2.0 MiB", "1/4 files", "1.0 MiB/s"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	p.Stop()
	if buf.Len() != 0 {
		t.Fatalf("disabled progress wrote %q", buf.String())
	}
	p = NewProgress(&buf, true, "x", 0, 1)
	p.Stop()
	if !strings.Contains(buf.String(), "\r") {
		t.Fatalf("enabled progress did not clear its line: %q", buf.String())
	}
	if HumanBytes(1536) != "1.5 KiB" || HumanBytes(3<<30) != "3.0 GiB" || HumanBytes(12) != "12 B" {
		t.Fatal("HumanBytes")
	}
}
