package boltstore

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

// The crash loop (red team): a child process writes through a journaled
// store while a goroutine flushes as often as it can, printing each write
// it got an acknowledgement for; the parent kills it with SIGKILL at a
// random moment (between a frame and its flush, during bbolt's commit,
// during a switch of files, while a big frame grows the file), then checks
// a copy of the directory as the crash left it, opened with and without
// the journal: every acknowledged write is there with its revision,
// nothing is applied twice, and at most the one write in flight is there
// in addition, whole (a Batch is atomic). The next child then opens the
// crashed directory itself (replay, then files reused) and goes on.

const crashChildEnv = "WARD_JOURNAL_CRASH_CHILD"

// crashOp is write i of the crash loop, decided by i and the state.
func crashOp(i int, st map[string]store.KV) []store.Op {
	val := func(tag string, n int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("%s%d;", tag, i)), n)
	}
	switch {
	case i%4 <= 1: // a pair and the head in one batch, and an old pair deleted
		ops := []store.Op{
			{Key: fmt.Sprintf("pair/a/%06d", i), Value: val("a", 1+i%50), ExpectRevision: 0},
			{Key: fmt.Sprintf("pair/b/%06d", i), Value: val("b", 1+i%70), ExpectRevision: 0},
			{Key: "head", Value: []byte(strconv.Itoa(i)), ExpectRevision: -1},
		}
		if i >= 8 {
			ops = append(ops,
				store.Op{Key: fmt.Sprintf("pair/a/%06d", i-8), Delete: true, ExpectRevision: -1},
				store.Op{Key: fmt.Sprintf("pair/b/%06d", i-8), Delete: true, ExpectRevision: -1})
		}
		return ops
	case i%4 == 2: // compare-and-swap on the counter
		return []store.Op{{Key: "ctr", Value: []byte(strconv.Itoa(i)), ExpectRevision: st["ctr"].Revision}}
	case i%16 == 3: // a big value: the journal file grows
		return []store.Op{{Key: fmt.Sprintf("big/%d", i%3), Value: val("big", 40000), ExpectRevision: -1}}
	case i%8 == 7:
		return []store.Op{{Key: "ctr", Delete: true, ExpectRevision: -1}}
	default:
		return []store.Op{{Key: fmt.Sprintf("put/%d", i%5), Value: val("p", 3), ExpectRevision: -1}}
	}
}

// applyCrashOp applies ops at rev to st (the parent's model) and reports
// whether it changed anything (a write consumes a revision only then).
func applyCrashOp(st map[string]store.KV, ops []store.Op, rev int64) bool {
	changed := false
	for _, op := range ops {
		if op.Delete {
			if _, ok := st[op.Key]; ok {
				delete(st, op.Key)
				changed = true
			}
			continue
		}
		st[op.Key] = store.KV{Key: op.Key, Value: op.Value, Revision: rev}
		changed = true
	}
	return changed
}

// TestJournalCrashChild is the child of TestJournalCrashLoop (skipped
// otherwise).
func TestJournalCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("the child of TestJournalCrashLoop")
	}
	from, _ := strconv.Atoi(os.Getenv(crashChildEnv + "_FROM"))
	s, err := Open(filepath.Join(dir, "ward.db"), WithJournal())
	if err != nil {
		fmt.Printf("open-error %v\n", err)
		os.Exit(3)
	}
	go func() {
		for {
			s.flush()
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		}
	}()
	ctx := t.Context()
	for i := from; ; i++ {
		var ops []store.Op
		if i%4 == 2 {
			cur := map[string]store.KV{}
			if kv, err := s.Get(ctx, "ctr"); err == nil {
				cur["ctr"] = kv
			}
			ops = crashOp(i, cur)
		} else {
			ops = crashOp(i, nil)
		}
		var rev int64
		switch {
		case len(ops) == 1 && ops[0].Delete:
			err = s.Delete(ctx, ops[0].Key)
		case len(ops) == 1 && ops[0].ExpectRevision >= 0:
			rev, err = s.CompareAndSwap(ctx, ops[0].Key, ops[0].Value, ops[0].ExpectRevision)
		case len(ops) == 1:
			rev, err = s.Put(ctx, ops[0].Key, ops[0].Value)
		default:
			rev, err = s.Batch(ctx, ops)
		}
		if err != nil {
			fmt.Printf("write-error %d %v\n", i, err)
			os.Exit(4)
		}
		// One write(2) per acknowledgement: what the parent reads was
		// acknowledged before the kill.
		fmt.Printf("ack %d %d\n", i, rev)
	}
}

func TestJournalCrashLoop(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	model := map[string]store.KV{}
	var modelRev int64
	next := 0
	cycles := 8
	if n, err := strconv.Atoi(os.Getenv("WARD_JOURNAL_CRASH_CYCLES")); err == nil {
		cycles = n // a longer soak
	}
	for cycle := range cycles {
		cmd := exec.Command(os.Args[0], "-test.run=^TestJournalCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s_FROM=%d", crashChildEnv, next))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1<<16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill at a random moment once writes are flowing.
		first, ok := <-lines
		if !ok {
			cmd.Wait()
			t.Fatalf("cycle %d: the child printed nothing", cycle)
		}
		time.Sleep(time.Duration(20+rand.IntN(200)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		// Every line the child wrote before it died, then Wait (which
		// closes the pipe: called first, it would lose lines still in it).
		acks := []string{first}
		for l := range lines {
			acks = append(acks, l)
		}
		cmd.Wait()
		// Fold the acknowledged writes into the model, checking their
		// revisions: each change takes the next revision, none is skipped.
		for _, l := range acks {
			f := strings.Fields(l)
			if len(f) != 3 || f[0] != "ack" {
				t.Fatalf("cycle %d: child said %q", cycle, l)
			}
			i, _ := strconv.Atoi(f[1])
			rev, _ := strconv.ParseInt(f[2], 10, 64)
			if i != next {
				t.Fatalf("cycle %d: write %d acknowledged, want %d", cycle, i, next)
			}
			ops := crashOp(i, model)
			if applyCrashOp(model, ops, modelRev+1) {
				modelRev++
				if rev != modelRev && !(len(ops) == 1 && ops[0].Delete) { // Delete returns no revision
					t.Fatalf("cycle %d: write %d got revision %d, want %d", cycle, i, rev, modelRev)
				}
			}
			next++
		}
		// What the crash left, opened with and without the journal (on
		// copies), must be the acknowledged state, or that plus the one
		// write in flight, whole.
		inflight := maps(model)
		inflightRev := modelRev
		if applyCrashOp(inflight, crashOp(next, model), modelRev+1) {
			inflightRev++
		}
		var got map[string]store.KV
		var gotRev int64
		for _, journal := range []bool{true, false} {
			kvs, rev := crashState(t, dir, journal)
			if got != nil && (!sameKVs(got, kvs) || gotRev != rev) {
				t.Fatalf("cycle %d: opened with the journal and without, the store differs", cycle)
			}
			got, gotRev = kvs, rev
		}
		switch {
		case sameKVs(got, model) && gotRev == modelRev:
		case sameKVs(got, inflight) && gotRev == inflightRev:
			model, modelRev = inflight, inflightRev
			next++
		default:
			t.Fatalf("cycle %d (%d writes acknowledged, up to %d): the store after the crash is neither the acknowledged state nor that plus the write in flight:\n%s",
				cycle, len(acks), next-1, diffKVs(model, got))
		}
	}
	t.Logf("%d crashes, %d writes, revision %d", cycles, next, modelRev)
}

// crashState opens a copy of the store at dir (removed after) and returns
// its contents and revision (the revision of a Put now, minus one).
func crashState(t *testing.T, src string, journal bool) (map[string]store.KV, int64) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ward-journal-crash-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir) // not t.TempDir: one copy a crash, many a test
	copyDirTo(t, src, dir)
	var opts []Option
	if journal {
		opts = append(opts, WithJournal())
	}
	s, err := Open(filepath.Join(dir, "ward.db"), opts...)
	if err != nil {
		t.Fatalf("opening the crashed store (journal %v): %v", journal, err)
	}
	defer s.Close()
	kvs, err := s.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	rev, err := s.Put(t.Context(), "zz-probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]store.KV{}
	for _, kv := range kvs {
		m[kv.Key] = kv
	}
	return m, rev - 1
}

func maps(m map[string]store.KV) map[string]store.KV {
	out := make(map[string]store.KV, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func sameKVs(a, b map[string]store.KV) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok || x.Revision != y.Revision || !bytes.Equal(x.Value, y.Value) {
			return false
		}
	}
	return true
}

func diffKVs(want, got map[string]store.KV) string {
	var out []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("missing %s (rev %d)", k, w.Revision))
		case g.Revision != w.Revision || !bytes.Equal(g.Value, w.Value):
			out = append(out, fmt.Sprintf("%s: rev %d, want %d (value equal %v)", k, g.Revision, w.Revision, bytes.Equal(g.Value, w.Value)))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			out = append(out, fmt.Sprintf("extra %s (rev %d)", k, g.Revision))
		}
	}
	slices.Sort(out)
	if len(out) > 20 {
		out = append(out[:20], "...")
	}
	return strings.Join(out, "\n")
}
