package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// The docs as tests: blocks of README.md and docs/*.md run verbatim in a
// real bash, where `ward` is the binary TestMain built.

// docBlock is one fenced shell block of a markdown file.
type docBlock struct {
	file   string
	line   int    // of the opening fence, 1-based
	marker string // the <!-- ... --> comment right above the fence, "" if none
	lines  []string
}

// docBlocks returns the ```sh blocks of a markdown file with the HTML
// comment (if any) on the line just above each.
func docBlocks(t *testing.T, path string) []docBlock {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []docBlock
	var cur *docBlock
	prev := ""
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && (line == "```sh" || line == "```bash" || line == "```shell"):
			cur = &docBlock{file: path, line: n}
			if m, ok := strings.CutPrefix(strings.TrimSpace(prev), "<!--"); ok {
				cur.marker = strings.TrimSpace(strings.TrimSuffix(m, "-->"))
			}
		case cur != nil && strings.HasPrefix(line, "```"):
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, line)
		}
		prev = line
	}
	return out
}

// commands joins continuation lines (ending in a backslash) and drops
// blank lines and whole-line comments.
func (b docBlock) commands() []string {
	var out []string
	var acc string
	for _, l := range b.lines {
		if acc == "" && (strings.TrimSpace(l) == "" || strings.HasPrefix(strings.TrimSpace(l), "#")) {
			continue
		}
		if s, ok := strings.CutSuffix(l, "\\"); ok {
			acc += s
			continue
		}
		out = append(out, acc+l)
		acc = ""
	}
	return out
}

// docShell is one bash process fed one command at a time, like a user's
// terminal: variables, exports and background jobs carry over.
type docShell struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncbuf.Buffer
	n     int
}

// startDocShell runs bash in dir with the built ward first on PATH and
// env added (WARD_ADDRESS and the like).
func startDocShell(t *testing.T, dir string, env ...string) *docShell {
	t.Helper()
	s := &docShell{t: t, out: &syncbuf.Buffer{}}
	s.cmd = exec.Command("bash", "--noprofile", "--norc")
	s.cmd.Dir = dir
	var base []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "WARD_") && !strings.HasPrefix(e, "PATH=") {
			base = append(base, e)
		}
	}
	s.cmd.Env = append(append(base, "PATH="+filepath.Dir(WardBin)+":"+os.Getenv("PATH"),
		"WARD_STATE_DIR="+filepath.Join(dir, ".ward-state")), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.stdin.Close()
		// the shell's background jobs (a curl left streaming) go with it
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		s.cmd.Wait()
	})
	return s
}

var doneMarker = regexp.MustCompile(`@@done (\d+) rc=(\d+)@@\n`)

// run types one command and waits (bounded) until it returns; it gives
// the command's output (stdout and stderr, plus whatever a background job
// printed meanwhile) and exit code. ok is false if it did not return.
func (s *docShell) run(command string, within time.Duration) (out string, rc int, ok bool) {
	s.n++
	start := len(s.out.String())
	// A group, so the command reads no input meant for the shell (its own
	// redirections still win) and its variables stay.
	fmt.Fprintf(s.stdin, "{ %s\n} </dev/null\necho \"@@done %d rc=$?@@\"\n", command, s.n)
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		all := s.out.String()[start:]
		for _, m := range doneMarker.FindAllStringSubmatchIndex(all, -1) {
			if all[m[2]:m[3]] == strconv.Itoa(s.n) {
				rc, _ := strconv.Atoi(all[m[4]:m[5]])
				return all[:m[0]], rc, true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s.out.String()[start:], -1, false
}

// since returns what the shell printed after offset (background jobs).
func (s *docShell) since(offset int) string { return s.out.String()[offset:] }

// offset is the current end of the shell's output.
func (s *docShell) offset() int { return len(s.out.String()) }
