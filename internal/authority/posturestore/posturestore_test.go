package posturestore

import (
	"context"
	"errors"
	"testing"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

// TestSetRefusedWithoutAudit: when the audit log cannot be written, a
// posture change is refused and nothing is stored (no version without its
// audit trail); once the log works again the same file is stored and
// audited as started, then ok.
func TestSetRefusedWithoutAudit(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	broken := true
	var results []string
	rec := audit.RecorderFunc(func(_ context.Context, ev audit.Event) error {
		if broken {
			return errors.New("audit log unavailable")
		}
		results = append(results, ev.Result)
		return nil
	})
	s := New(st, rec, []string{"confidential"})
	src := []byte("defaults: {rotation: {confidential: {period: 30d}}}")
	if _, err := s.Set(ctx, "op", src, ""); err == nil {
		t.Fatal("a posture was set with the audit log down")
	}
	if vs, cur, err := s.List(ctx); err != nil || len(vs) != 0 || cur != 0 {
		t.Fatalf("stored without audit: %v %d %v", vs, cur, err)
	}
	broken = false
	v, err := s.Set(ctx, "op", src, "")
	if err != nil || v.Number != 1 {
		t.Fatalf("set: %+v %v", v, err)
	}
	if len(results) != 2 || results[0] != audit.ResultStarted || results[1] != audit.ResultOK {
		t.Fatalf("audit results %v, want [started ok]", results)
	}
}
