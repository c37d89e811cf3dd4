package seal

import "github.com/wardproject/ward/internal/shared/errs"

// RecoverySeal is an auto seal that can also hand out recovery shares at
// init: Shamir shares of the root key itself, for when the seal's own key
// (an HSM) is lost. The authority unseals itself while the seal works;
// a quorum of recovery shares, submitted like unseal shares, unseals it
// without the seal. Recovery shares are optional (InitOptions zero: none)
// and, unlike Vault's recovery keys, they do recover the root key: treat
// them as the keys to everything, held by different people offline (the
// key escrow, docs/hsm.md).
type RecoverySeal interface {
	AutoSeal
	ShareSeal
}

// ErrNoRecoveryShares: the authority was initialised without recovery
// shares, so only the seal itself can unseal it.
var ErrNoRecoveryShares = errs.New(errs.Precondition, "this authority was initialised without recovery shares: only its seal (the HSM) can unseal it")
