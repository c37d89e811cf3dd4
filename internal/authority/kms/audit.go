package kms

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/shared/errs"
)

// keyEvent is the audit event of operation op on key (version v, 0 for
// none) for the caller in ctx.
func keyEvent(ctx context.Context, op, key string, v uint32, result string, fields map[string]string) audit.Event {
	ev := audit.NewEvent(ctx, op, result)
	ev.Key, ev.KeyVersion, ev.Fields = key, v, fields
	return ev
}

// auditStart writes the "started" event of an admin mutation: if that
// cannot be written the mutation does not happen (fail closed).
func (m *Manager) auditStart(ctx context.Context, op, name string, fields map[string]string) error {
	if err := m.audit.Record(ctx, keyEvent(ctx, op, name, 0, audit.ResultStarted, fields)); err != nil {
		return errs.Errorf(errs.Unavailable, "audit log unavailable, %s on %q refused: %v", op, name, err)
	}
	return nil
}

func (m *Manager) auditEnd(ctx context.Context, op, name string, version uint32, fields map[string]string, opErr error) error {
	ev := keyEvent(ctx, op, name, version, audit.ResultOK, fields)
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
	}
	if err := m.audit.Record(ctx, ev); err != nil {
		if opErr != nil {
			return opErr
		}
		return errs.Errorf(errs.Unavailable, "%s on %q was applied but its audit event could not be written: %v", op, name, err)
	}
	return opErr
}

func (m *Manager) auditData(ctx context.Context, op, key string, v uint32, count int, encCtx map[string]string, opErr error) error {
	return m.auditDataFields(ctx, op, key, v, count, encCtx, nil, opErr)
}

// auditDataFields audits a data operation after the fact: the operation
// has no side effect, so if the event cannot be written its result is
// withheld from the caller (fail closed).
func (m *Manager) auditDataFields(ctx context.Context, op, key string, v uint32, count int, encCtx, fields map[string]string, opErr error) error {
	ev := keyEvent(ctx, op, key, v, audit.ResultOK, fields)
	ev.Count, ev.Context = count, encCtx
	if opErr != nil {
		ev.Result, ev.Error = audit.ResultError, opErr.Error()
		if errs.KindOf(opErr) == errs.Denied {
			ev.Result = audit.ResultDenied
		}
	}
	if err := m.audit.Record(ctx, ev); err != nil {
		return errs.Errorf(errs.Unavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	return nil
}

func (m *Manager) auditBatch(ctx context.Context, op, key string, v uint32, n, failed int, keys map[string]bool) error {
	fields := map[string]string{"batch": "true", "failed": fmt.Sprint(failed)}
	if len(keys) > 0 {
		ks := make([]string, 0, len(keys))
		for k := range keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		fields["keys"] = strings.Join(ks, ",")
	}
	ev := keyEvent(ctx, op, key, v, audit.ResultOK, fields)
	ev.Count = n
	if failed == n {
		ev.Result = audit.ResultError
	}
	if err := m.audit.Record(ctx, ev); err != nil {
		return errs.Errorf(errs.Unavailable, "audit log unavailable, %s refused: %v", op, err)
	}
	return nil
}
