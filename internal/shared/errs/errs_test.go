package errs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestToStatus(t *testing.T) {
	sentinel := New(NotFound, "policy version not found")
	tests := []struct {
		name string
		err  error
		code codes.Code
		msg  string
	}{
		{"unknown", Errorf(Unknown, "what"), codes.Internal, "what"},
		{"invalid", Errorf(Invalid, "bad %s", "name"), codes.InvalidArgument, "bad name"},
		{"not found", Errorf(NotFound, "no key"), codes.NotFound, "no key"},
		{"exists", Errorf(Exists, "key exists"), codes.AlreadyExists, "key exists"},
		{"conflict", Errorf(Conflict, "raced"), codes.Aborted, "raced"},
		{"precondition", Errorf(Precondition, "disabled"), codes.FailedPrecondition, "disabled"},
		{"denied", Errorf(Denied, "tag mismatch"), codes.PermissionDenied, "tag mismatch"},
		{"unavailable", Errorf(Unavailable, "store down"), codes.Unavailable, "store down"},
		{"rolled back", Errorf(RolledBack, "old record"), codes.DataLoss, "old record"},
		{"internal", Errorf(Internal, "bug"), codes.Internal, "bug"},
		{"unclassified", errors.New("plain"), codes.Internal, "plain"},
		{"context canceled", context.Canceled, codes.Internal, "context canceled"},
		{"wrapped by fmt", fmt.Errorf("opening the CA: %w", Errorf(Precondition, "not initialised")), codes.FailedPrecondition, "opening the CA: not initialised"},
		{"sentinel wrapped", fmt.Errorf("%w: version 7", sentinel), codes.NotFound, "policy version not found: version 7"},
		{"outermost kind wins", Wrap(Precondition, Errorf(Unavailable, "store down"), "reading principals"), codes.FailedPrecondition, "reading principals: store down"},
		{"kind wraps plain", Errorf(Invalid, "serial %q: %w", "zz", errors.New("not hex")), codes.InvalidArgument, `serial "zz": not hex`},
		{"status passes through", status.Error(codes.ResourceExhausted, "slow down"), codes.ResourceExhausted, "slow down"},
		{"status wins over kind", Wrap(Invalid, status.Error(codes.NotFound, "gone"), "fetching"), codes.NotFound, "fetching: rpc error: code = NotFound desc = gone"},
		{"unknown status is mapped", status.Error(codes.Unknown, "??"), codes.Internal, "rpc error: code = Unknown desc = ??"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := status.Convert(ToStatus(tc.err))
			if s.Code() != tc.code || s.Message() != tc.msg {
				t.Fatalf("ToStatus(%v) = %v %q, want %v %q", tc.err, s.Code(), s.Message(), tc.code, tc.msg)
			}
		})
	}
	if ToStatus(nil) != nil {
		t.Fatal("ToStatus(nil) is not nil")
	}
}

func TestEveryKindHasCodeAndName(t *testing.T) {
	seen := map[codes.Code]bool{}
	for k := Unknown; k <= Internal; k++ {
		if k.String() == "" || k.String()[0] == 'k' {
			t.Fatalf("kind %d has no name", k)
		}
		seen[k.Code()] = true
		if k != Unknown && k != Internal && k.Code() == codes.Internal {
			t.Fatalf("kind %v maps to Internal", k)
		}
	}
	if Kind(200).Code() != codes.Internal || Kind(200).String() != "kind(200)" {
		t.Fatal("an out-of-range kind is not Internal")
	}
}

func TestKindsAndWrapping(t *testing.T) {
	sentinel := New(Invalid, "invalid init options")
	err := fmt.Errorf("init: %w", Errorf(Invalid, "%w: threshold 9 of 3", sentinel))
	if !errors.Is(err, sentinel) || KindOf(err) != Invalid || !Is(err, Invalid) {
		t.Fatalf("sentinel lost: %v %v", errors.Is(err, sentinel), KindOf(err))
	}
	cause := errors.New("disk full")
	w := Wrap(Unavailable, cause, "storing key \"k\"")
	if !errors.Is(w, cause) || w.Error() != `storing key "k": disk full` {
		t.Fatalf("Wrap = %v", w)
	}
	if Wrap(Invalid, nil, "x") != nil || Is(nil, Unknown) {
		t.Fatal("nil is an error")
	}
	if e := Errorf(Invalid, "plain %d", 1).(*Error); e.Err != nil {
		t.Fatal("Errorf without %w wraps something")
	}
	if KindOf(errors.New("x")) != Unknown {
		t.Fatal("an unclassified error has a kind")
	}
}
