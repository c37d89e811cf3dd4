package registry

import "github.com/wardproject/ward/internal/shared/errs"

// Temporary aliases for the Node API until it uses errs directly.
// Deprecated: use the errs package.
type Kind = errs.Kind

// Deprecated: use the errs kinds.
const (
	KindInternal     = errs.Internal
	KindInvalid      = errs.Invalid
	KindNotFound     = errs.NotFound
	KindExists       = errs.Exists
	KindConflict     = errs.Conflict
	KindDenied       = errs.Denied
	KindUnavailable  = errs.Unavailable
	KindPrecondition = errs.Precondition
)

// KindOf returns the kind of err.
// Deprecated: use errs.KindOf.
func KindOf(err error) Kind { return errs.KindOf(err) }
