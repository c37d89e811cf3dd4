// Package errs is ward's one error vocabulary: a small set of kinds that
// every authority package (kms, registry, ca, policystore, seal) tags its
// errors with, and the one mapping from kinds to gRPC status codes
// (ToStatus) that every API service uses.
//
// Kinds. An error gets its kind where the failure is understood (the
// package that knows the key is missing says NotFound), with Errorf, New
// (for sentinels that callers match with errors.Is) or Wrap. Kinds travel
// up through fmt.Errorf("...: %w", err); the outermost kind in a chain wins,
// so a layer that knows better can reclassify what it wraps with Wrap. An
// error nobody classified is Unknown, which maps to Internal: the zero
// value never claims anything about the failure.
//
// Messages. An error says what failed, for which object, and what to do.
// It does not start with its package's name ("ca: ", "seal: "): the caller
// that wraps it says what it was doing ("opening the CA: trust domain
// ..."), so every layer adds its context once and nothing is said twice.
package errs

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kind classifies an error for callers and for the API's status codes.
type Kind uint8

// The kinds. Unknown (the zero value) is an error nobody classified.
const (
	Unknown      Kind = iota // not classified: Internal
	Invalid                  // bad input; nothing changed
	NotFound                 // no such object
	Exists                   // the object already exists
	Conflict                 // lost a race or a revision check: re-read and retry
	Precondition             // the object's state forbids it (disabled, destroyed, sealed, not initialised)
	Denied                   // authentication or authorization failed (bad ciphertext tag, rejected token, evicted agent)
	Unavailable              // storage or the audit log failed: retry later
	RolledBack               // stored data is older than the audit log says (data loss)
	Internal                 // a bug or an impossible state
)

var kindNames = [...]string{"unknown", "invalid", "not-found", "exists", "conflict", "precondition", "denied", "unavailable", "rolled-back", "internal"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

var kindCodes = [...]codes.Code{
	Unknown:      codes.Internal,
	Invalid:      codes.InvalidArgument,
	NotFound:     codes.NotFound,
	Exists:       codes.AlreadyExists,
	Conflict:     codes.Aborted,
	Precondition: codes.FailedPrecondition,
	Denied:       codes.PermissionDenied,
	Unavailable:  codes.Unavailable,
	RolledBack:   codes.DataLoss,
	Internal:     codes.Internal,
}

// Code is the gRPC status code of kind k.
func (k Kind) Code() codes.Code {
	if int(k) < len(kindCodes) {
		return kindCodes[k]
	}
	return codes.Internal
}

// Error is an error with a kind. Msg is the whole message; Err, if set, is
// what it wraps (for errors.Is and errors.As).
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the wrapped error.
func (e *Error) Unwrap() error { return e.Err }

// New returns an error of kind k with message msg, for sentinels that
// callers match with errors.Is.
func New(k Kind, msg string) *Error { return &Error{Kind: k, Msg: msg} }

// Errorf returns an error of kind k formatted as fmt.Errorf does; a %w
// verb wraps its operand.
func Errorf(k Kind, format string, a ...any) error {
	err := fmt.Errorf(format, a...)
	e := &Error{Kind: k, Msg: err.Error()}
	if wrapsSomething(err) {
		e.Err = err
	}
	return e
}

func wrapsSomething(err error) bool {
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return u.Unwrap() != nil
	case interface{ Unwrap() []error }:
		return len(u.Unwrap()) > 0
	}
	return false
}

// Wrap returns err with kind k and the context msg in front ("msg: err").
// An empty msg keeps err's message. Wrap(k, nil, ...) is nil.
func Wrap(k Kind, err error, msg string) error {
	if err == nil {
		return nil
	}
	m := err.Error()
	if msg != "" {
		m = msg + ": " + m
	}
	return &Error{Kind: k, Msg: m, Err: err}
}

// KindOf returns the kind of the outermost Error in err's chain, or
// Unknown.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Unknown
}

// Is reports whether err is of kind k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }

// ToStatus maps err to a gRPC status error: an error that already carries
// a status (other than Unknown) passes through as it is, anything else gets
// the code of its kind and its message. ToStatus(nil) is nil.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(KindOf(err).Code(), err.Error())
}
