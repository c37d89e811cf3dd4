package audit

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/store/memstore"
	"github.com/wardproject/ward/internal/shared/reqctx"
)

func TestNewEventFillsCaller(t *testing.T) {
	ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "admin:uid=0", RequestID: "req-7"})
	ev := NewEvent(ctx, "key.create", ResultStarted)
	if ev.Actor != "admin:uid=0" || ev.RequestID != "req-7" || ev.Operation != "key.create" || ev.Result != ResultStarted {
		t.Fatalf("NewEvent = %+v", ev)
	}
	if ev.Time.IsZero() || ev.Time.Location().String() != "UTC" {
		t.Fatalf("NewEvent time %v, want now in UTC", ev.Time)
	}
	if ev, c := NewEvent(context.Background(), "x", ResultOK), reqctx.From(context.Background()); ev.Actor != c.Actor || ev.RequestID != c.RequestID {
		t.Fatalf("NewEvent without a caller = %+v", ev)
	}
}

func TestLogRecorderHashesContext(t *testing.T) {
	l := openLog(t, memstore.New(), newKey(t))
	h, err := NewHasher(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	rec := NewLogRecorder(l, h)
	ctx := reqctx.With(context.Background(), reqctx.Caller{Actor: "spiffe://td/app", RequestID: "req-1"})
	const secret = "tenant-secret-value"
	tests := []struct {
		name   string
		fields map[string]string
		encCtx map[string]string
		want   map[string]string
	}{
		{"context and fields", map[string]string{"batch": "true"}, map[string]string{"tenant": secret},
			map[string]string{"batch": "true", "context.tenant": h.HashValue(secret)}},
		{"context only", nil, map[string]string{"tenant": secret, "app": "b"},
			map[string]string{"context.tenant": h.HashValue(secret), "context.app": h.HashValue("b")}},
		{"fields only", map[string]string{"record_revision": "3"}, nil, map[string]string{"record_revision": "3"}},
		{"neither", nil, map[string]string{}, nil},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := NewEvent(ctx, "kms.encrypt", ResultOK)
			ev.Key, ev.Fields, ev.Context = "k", tc.fields, tc.encCtx
			var before map[string]string
			if tc.fields != nil {
				before = map[string]string{}
				for k, v := range tc.fields {
					before[k] = v
				}
			}
			if err := rec.Record(ctx, ev); err != nil {
				t.Fatal(err)
			}
			if len(tc.fields) != len(before) {
				t.Fatal("Record changed the caller's Fields map")
			}
			rs := readAll(t, l, uint64(i), uint64(i+1))
			if bytes.Contains(rs[0].Leaf, []byte(secret)) {
				t.Fatalf("context value stored in clear: %s", rs[0].Leaf)
			}
			got, err := DecodeEvent(rs[0].Leaf)
			if err != nil {
				t.Fatal(err)
			}
			if got.Actor != "spiffe://td/app" || got.RequestID != "req-1" || got.Context != nil {
				t.Fatalf("stored event %+v", got)
			}
			if len(got.Fields) != len(tc.want) {
				t.Fatalf("fields %v, want %v", got.Fields, tc.want)
			}
			for k, v := range tc.want {
				if got.Fields[k] != v || !strings.HasPrefix(got.Fields[k], HashPrefix) && strings.HasPrefix(k, ContextFieldPrefix) {
					t.Fatalf("fields %v, want %v", got.Fields, tc.want)
				}
			}
		})
	}
}

func TestContextInClearIsRefused(t *testing.T) {
	l := openLog(t, memstore.New(), newKey(t))
	ev := NewEvent(context.Background(), "kms.decrypt", ResultOK)
	ev.Context = map[string]string{"tenant": "a"}
	if _, err := l.Append(context.Background(), ev); err == nil || !strings.Contains(err.Error(), "in clear") {
		t.Fatalf("Append of an event with a clear context: %v", err)
	}
	if _, err := EncodeEvent(ev); err == nil {
		t.Fatal("EncodeEvent encoded a clear context")
	}
}
