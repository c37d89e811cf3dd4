package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/store"
)

// RestoreOptions configures Restore.
type RestoreOptions struct {
	// TrustedKey: see VerifyOptions.
	TrustedKey any
	// Progress, if set, is called after each written batch with the
	// entries written so far and the total.
	Progress func(done, total int64)
	// MaxBatchBytes bounds the value bytes of one store batch (default
	// 1 MiB, under etcd's default request limit of 1.5 MiB).
	MaxBatchBytes int
	// KeepBackupLintMode lets the backup's stored federation lint mode
	// stand, warn included; without it the restored authority enforces
	// at least strict (LintStricter). Either way the restored authority
	// audits the choice and the resulting mode at its first unseal.
	KeepBackupLintMode bool
	// Now dates the restore record (default time.Now).
	Now func() time.Time
}

// ErrNotEmpty: the restore target holds data; nothing was written.
var ErrNotEmpty = errors.New("the restore target is not empty")

// Restore verifies the backup in f completely, then writes its entries
// into dst, which must be empty: create-only batches, the barrier keyring
// last, so a restore that stops half way leaves a store no authority can
// unseal (and that a new restore refuses as not empty: empty it first).
// The restored authority is sealed; unseal it with the original shares.
func Restore(ctx context.Context, f io.ReadSeeker, dst store.Store, opts RestoreOptions) (*Verified, error) {
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = 1 << 20
	}
	if err := CheckEmpty(ctx, dst); err != nil {
		return nil, err
	}
	vopts := VerifyOptions{}
	if opts.TrustedKey != nil {
		vopts.TrustedKey = opts.TrustedKey
	}
	v, err := Verify(f, vopts)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewinding the backup: %w", err)
	}
	total := v.Manifest.Entries
	var (
		ops     []store.Op
		nbytes  int
		done    int64
		keyring []byte
	)
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		if _, err := dst.Batch(ctx, ops); err != nil {
			return fmt.Errorf("writing entries %d..%d of %d: %w; the target now holds a partial restore without a keyring (it cannot be unsealed): empty it, then restore again", done+1, done+int64(len(ops)), total, err)
		}
		done += int64(len(ops))
		ops, nbytes = ops[:0], 0
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
		return nil
	}
	maxOps := dst.MaxBatch()
	vopts.Entry = func(key string, value []byte) error {
		if key == barrier.KeyringKey {
			keyring = value
			return nil
		}
		if key == RecordKey {
			// a record the backed-up authority had not consumed yet:
			// this restore's own replaces it
			return nil
		}
		if len(ops) > 0 && (len(ops) >= maxOps || nbytes+len(key)+len(value) > opts.MaxBatchBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		ops = append(ops, store.Op{Key: key, Value: value, ExpectRevision: 0})
		nbytes += len(key) + len(value)
		return nil
	}
	// The second pass re-verifies what it writes: a file changed between
	// the passes fails here, before the keyring is written.
	if _, err := Verify(f, vopts); err != nil {
		return nil, fmt.Errorf("%w (the target holds a partial restore without a keyring: empty it before restoring again)", err)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	rec := Record{BackupCreated: v.Manifest.Created, TrustDomain: v.Manifest.TrustDomain, PayloadSHA256: v.Manifest.PayloadSHA256,
		KeyID: v.Manifest.KeyID, PolicyLint: LintStricter}
	if opts.KeepBackupLintMode {
		rec.PolicyLint = LintFromBackup
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	rec.Restored = opts.Now().UTC()
	rb, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	// The record goes with the keyring, in one batch: a restore that
	// stops before has neither (no authority unseals it).
	ops = append(ops, store.Op{Key: RecordKey, Value: rb, ExpectRevision: 0})
	if maxOps < 2 {
		if err := flush(); err != nil {
			return nil, err
		}
	}
	ops = append(ops, store.Op{Key: barrier.KeyringKey, Value: keyring, ExpectRevision: 0})
	if err := flush(); err != nil {
		return nil, err
	}
	return v, nil
}

// CheckEmpty returns an error wrapping ErrNotEmpty if st holds anything.
func CheckEmpty(ctx context.Context, st store.Store) error {
	kvs, err := st.List(ctx, "")
	if err != nil {
		return fmt.Errorf("checking that the restore target is empty: %w", err)
	}
	if len(kvs) == 0 {
		return nil
	}
	partial := ""
	if _, err := st.Get(ctx, barrier.KeyringKey); errors.Is(err, store.ErrNotFound) {
		partial = " It holds no keyring: if it is a restore that stopped half way, empty it and restore again."
	}
	return fmt.Errorf("%w: it holds %d entries (the first is %q). Restore writes only into an empty data directory or etcd prefix, so that it never mixes two authorities; nothing was changed.%s", ErrNotEmpty, len(kvs), kvs[0].Key, partial)
}
