package audit

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/testutil/syncbuf"
)

// TestFailedWriteIsLogged: a store that cannot write (disk full) fails the
// append, and the failure is logged at error level with its cause.
func TestFailedWriteIsLogged(t *testing.T) {
	st := memstore.New(memstore.WithMaxBatch(1024))
	logs := &syncbuf.Buffer{}
	l := openLog(t, st, newKey(t), WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	appendN(t, l, 0, 2)
	if logs.String() != "" {
		t.Fatalf("logged while healthy:\n%s", logs)
	}
	st.SetBatchHook(func([]store.Op) error { return syscall.ENOSPC })
	ev := testEvent(2)
	ev.Operation = "key.destroy"
	_, err := l.Append(context.Background(), ev)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append on a full disk: %v", err)
	}
	out := logs.String()
	for _, want := range []string{"level=ERROR", "events could not be stored", "no space left on device", "key.destroy"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 1 {
		t.Errorf("want exactly one log line for one failed group, got %d:\n%s", n, out)
	}
}

// TestRevisionIndex: marks follow the newest revision per key, destroyed
// versions accumulate, and a log that shrinks under the index is reported.
func TestRevisionIndex(t *testing.T) {
	ctx := context.Background()
	st := memstore.New(memstore.WithMaxBatch(1024))
	logs := &syncbuf.Buffer{}
	l := openLog(t, st, newKey(t), WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
	add := func(key, result string, fields map[string]string) {
		t.Helper()
		if _, err := l.Append(ctx, Event{Operation: "key.x", Key: key, Result: result, Fields: fields}); err != nil {
			t.Fatal(err)
		}
	}
	add("a", ResultOK, map[string]string{FieldRecordRevision: "1", FieldRecordDigest: "d1"})
	add("a", ResultOK, map[string]string{FieldRecordRevision: "2", FieldRecordDigest: "d2", FieldDestroyedVersion: "1"})
	add("a", ResultError, map[string]string{FieldRecordRevision: "9", FieldRecordDigest: "bad"}) // failed: ignored
	add("b", ResultOK, nil)
	x := NewRevisionIndex(l)
	m, ok, err := x.Latest(ctx, "a")
	if err != nil || !ok || m.Revision != 2 || m.Digest != "d2" || m.Seq != 1 || len(m.Destroyed) != 1 || m.Destroyed[0] != 1 {
		t.Fatalf("mark of a: %+v %v %v", m, ok, err)
	}
	if _, ok, _ := x.Latest(ctx, "b"); ok {
		t.Fatal("b has a mark without any revision")
	}
	add("a", ResultOK, map[string]string{FieldRecordRevision: "3", FieldRecordDigest: "d3"})
	if m, _, _ := x.Latest(ctx, "a"); m.Revision != 3 || len(m.Destroyed) != 1 {
		t.Fatalf("incremental sync: %+v", m)
	}
	st.RawDelete(headKeySuffix) // the log is rolled back under the index
	if _, _, err := x.Latest(ctx, "a"); err == nil || !strings.Contains(err.Error(), "went back") {
		t.Fatalf("Latest after the log went back: %v", err)
	}
	if l.RollbacksDetected() == 0 || !strings.Contains(logs.String(), "went backwards") {
		t.Fatalf("rollback not counted/logged: %d\n%s", l.RollbacksDetected(), logs)
	}
}
