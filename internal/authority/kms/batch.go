package kms

import (
	"context"
	"fmt"

	"github.com/wardproject/ward/internal/shared/errs"
)

// ItemResult is one result of a batch operation.
type ItemResult struct {
	Data    []byte
	Version uint32
	Err     error
}

// Item is one input of a batch operation.
type Item struct {
	Data    []byte
	Context map[string]string
}

// MaxBatch bounds the items of one batch call.
const MaxBatch = 10000

func checkBatch(n int) error {
	if n == 0 {
		return errs.Errorf(errs.Invalid, "batch is empty: give at least one item")
	}
	if n > MaxBatch {
		return errs.Errorf(errs.Invalid, "batch has %d items; the limit is %d: split it", n, MaxBatch)
	}
	return nil
}

// BatchEncrypt encrypts many payloads under one key; one audit event.
func (m *Manager) BatchEncrypt(ctx context.Context, name string, items []Item) ([]ItemResult, error) {
	if err := checkBatch(len(items)); err != nil {
		return nil, err
	}
	out := make([]ItemResult, len(items))
	var latest uint32
	failed := 0
	for i, it := range items {
		if len(it.Data) > MaxPlaintext {
			out[i].Err = errs.Errorf(errs.Invalid, "item %d: plaintext is %d bytes; the limit is %d", i, len(it.Data), MaxPlaintext)
		} else {
			out[i].Data, out[i].Version, out[i].Err = m.encryptRaw(ctx, name, it.Data, it.Context)
		}
		if out[i].Err != nil {
			failed++
		} else {
			latest = out[i].Version
		}
	}
	return out, m.auditBatch(ctx, "kms.encrypt", name, latest, len(items), failed, nil)
}

// BatchDecrypt decrypts many ciphertexts; one audit event.
func (m *Manager) BatchDecrypt(ctx context.Context, items []Item) ([]ItemResult, error) {
	if err := checkBatch(len(items)); err != nil {
		return nil, err
	}
	out := make([]ItemResult, len(items))
	keys := map[string]bool{}
	failed := 0
	for i, it := range items {
		pt, h, err := m.decryptRaw(ctx, it.Data, it.Context)
		out[i] = ItemResult{Data: pt, Version: h.Version, Err: err}
		if err != nil {
			failed++
		}
		if h.KeyName != "" {
			keys[fmt.Sprintf("%s@%d", h.KeyName, h.Version)] = true
		}
	}
	return out, m.auditBatch(ctx, "kms.decrypt", "", 0, len(items), failed, keys)
}

// BatchRewrap rewraps many ciphertexts; one audit event.
func (m *Manager) BatchRewrap(ctx context.Context, items []Item) ([]ItemResult, error) {
	if err := checkBatch(len(items)); err != nil {
		return nil, err
	}
	out := make([]ItemResult, len(items))
	keys := map[string]bool{}
	failed := 0
	for i, it := range items {
		pt, h, err := m.decryptRaw(ctx, it.Data, it.Context)
		if err == nil {
			out[i].Data, out[i].Version, err = m.encryptRaw(ctx, h.KeyName, pt, it.Context)
			clear(pt)
		}
		out[i].Err = err
		if err != nil {
			failed++
		}
		if h.KeyName != "" {
			keys[fmt.Sprintf("%s@%d", h.KeyName, h.Version)] = true
		}
	}
	return out, m.auditBatch(ctx, "kms.rewrap", "", 0, len(items), failed, keys)
}

// BatchGenerateDataKey returns count fresh data keys; one audit event.
func (m *Manager) BatchGenerateDataKey(ctx context.Context, name string, count int, size uint32, encCtx map[string]string) ([]DataKey, error) {
	if err := checkBatch(count); err != nil {
		return nil, err
	}
	n, err := dataKeySize(size)
	if err != nil {
		return nil, err
	}
	out := make([]DataKey, count)
	var v uint32
	for i := range out {
		if out[i], err = m.newDataKey(ctx, name, n, encCtx); err != nil {
			break
		}
		v = out[i].Version
	}
	if aerr := m.auditDataFields(ctx, "kms.datakey", name, v, count, encCtx, nil, err); aerr != nil {
		return nil, aerr
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}
