package envelope

import (
	"context"
	"fmt"
)

// Rewrap asks the KMS to re-wrap the data key of h under the newest
// version of its key and returns the new header. The data key and the
// segments are untouched: write the new header's Encoded bytes followed by
// the old file's bytes from h.Len on. Constant work whatever the file
// size. Options used: WithContext (must match the one used to encrypt).
//
// Rewrap does not authenticate the segments or the header tag (it never
// sees the data key); the KMS authenticates the wrapped key against the
// header's context. Use NewReader or NewReaderAt to verify a file.
func Rewrap(ctx context.Context, kms KMS, h *Header, opts ...Option) (*Header, error) {
	c, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	wrapped, err := kms.Rewrap(ctx, h.wrapped, h.kmsContext(c.extCtx))
	if err != nil {
		return nil, fmt.Errorf("%w (key %s version %d): rewrap: %v; check the key and the encryption context", ErrUnwrap, h.KeyName, h.KeyVersion, err)
	}
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedKey {
		return nil, fmt.Errorf("%w: the KMS returned a %d-byte wrapped key (limit %d)", ErrInvalid, len(wrapped), MaxWrappedKey)
	}
	nh := *h
	nh.Metadata = h.Metadata
	nh.wrapped = wrapped
	nh.encode()
	out, err := parseRaw(nh.raw)
	if err != nil {
		return nil, fmt.Errorf("the KMS returned a wrapped key this format cannot hold: %w", err)
	}
	return out, nil
}
