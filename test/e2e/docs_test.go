package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// runMarker marks a runnable example: an HTML comment on the line right
// above a ```sh fence, invisible on GitHub:
//
//	<!-- run -->
//	```sh
//	ward key create tenant-a/payments --classification confidential
//	```
const runMarker = "run"

// expectExit reads an expected non-zero exit code from a line's comment
// ("# DENY, exit 3").
var expectExit = regexp.MustCompile(`#.*\bexit (\d+)\b`)

// TestDocsRunnableExamples runs every block of README.md and docs/*.md
// marked <!-- run -->, in order per file, line by line in one bash, against
// a fresh dev authority per file: `ward` is the built binary, WARD_ADDRESS
// points at the authority, and the working directory holds examples/ (the
// repository's) and two files the tour encrypts, report.csv and data/.
// Every line must exit 0, or the code its comment names ("exit 3").
func TestDocsRunnableExamples(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	total := 0
	for _, f := range files {
		var blocks []docBlock
		for _, b := range docBlocks(t, f) {
			if b.marker == runMarker {
				blocks = append(blocks, b)
			}
		}
		if len(blocks) == 0 {
			continue
		}
		total += len(blocks)
		rel, _ := filepath.Rel(root, f)
		t.Run(rel, func(t *testing.T) { runDocBlocks(t, root, rel, blocks) })
	}
	if total == 0 {
		t.Fatal("no block of README.md or docs/*.md is marked <!-- run -->")
	}
}

func runDocBlocks(t *testing.T, root, rel string, blocks []docBlock) {
	dir := t.TempDir()
	addr := startDevAuthority(t, filepath.Join(dir, "authority"))
	work := filepath.Join(dir, "work")
	os.MkdirAll(filepath.Join(work, "data", "q1"), 0o755)
	os.Symlink(filepath.Join(root, "examples"), filepath.Join(work, "examples"))
	os.WriteFile(filepath.Join(work, "report.csv"), []byte("id,amount\n1,42\n"), 0o600)
	os.WriteFile(filepath.Join(work, "data", "a.csv"), []byte("a,b\n"), 0o600)
	os.WriteFile(filepath.Join(work, "data", "q1", "b.csv"), []byte("c,d\n"), 0o600)
	sh := startDocShell(t, work, "WARD_ADDRESS="+addr)
	n := 0
	defer func() { t.Logf("%s: %d commands of %d blocks ran", rel, n, len(blocks)) }()
	for _, b := range blocks {
		for _, cmd := range b.commands() {
			want := 0
			if m := expectExit.FindStringSubmatch(cmd); m != nil {
				want, _ = strconv.Atoi(m[1])
			}
			out, rc, ok := sh.run(cmd, 2*time.Minute)
			n++
			if !ok || rc != want {
				t.Fatalf("%s (block at line %d): %s\nexit %d, want %d (returned: %v); output:\n%s", rel, b.line, cmd, rc, want, ok, out)
			}
		}
	}
}

// startDevAuthority runs `ward server --dev --dev-dir dir` and returns its
// admin address once it is initialised and unsealed.
func startDevAuthority(t *testing.T, dir string) string {
	t.Helper()
	logs := &syncbuf.Buffer{}
	cmd := exec.Command(WardBin, "server", "--dev", "--dev-dir", dir)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopProcess(cmd) })
	deadline := time.Now().Add(time.Minute)
	for !logs.Contains("initialised and unsealed") {
		if time.Now().After(deadline) {
			t.Fatalf("the dev authority did not come up:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(l), "export WARD_ADDRESS="); ok {
			return a
		}
	}
	t.Fatalf("the dev authority printed no WARD_ADDRESS:\n%s", logs.String())
	return ""
}
