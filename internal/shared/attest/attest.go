// Package attest defines workload attestation: the Caller a node agent sees
// on its Workload API socket, the selectors ("unix:uid:1000") that describe
// it, the Attestor interface that turns one into the other, and the selector
// grammar that registration entries are validated against.
package attest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Caller is what the kernel tells about the process at the other end of a
// unix socket (SO_PEERCRED).
type Caller struct {
	PID int32
	UID uint32
	GID uint32
	// PIDFD, when not nil, is a pidfd of the very process that connected
	// (SO_PEERPIDFD). Attestors use it to prove the process they read from
	// /proc is that one and not a later process that reused its PID. It is
	// owned by the connection; attestors must not close it.
	PIDFD *os.File
	// Image is the program the process was running when the connection
	// was accepted (ReadImage), zero if it could not be read. Attestors
	// that report facts about the binary must check the process still runs
	// this image: a process that connects and then execs another binary
	// keeps its PID, so /proc alone would describe the new binary while
	// the socket may be spoken on by anyone the first program handed it to.
	Image Image
}

// Attestor derives selectors from a caller. Implementations must only report
// facts they verified; an error means the caller gets no identity.
type Attestor interface {
	Attest(ctx context.Context, c Caller) ([]Selector, error)
}

// Multi runs several attestors and returns the union of their selectors. It
// fails if any attestor fails.
type Multi []Attestor

// Attest implements Attestor.
func (m Multi) Attest(ctx context.Context, c Caller) ([]Selector, error) {
	var all []Selector
	for _, a := range m {
		s, err := a.Attest(ctx, c)
		if err != nil {
			return nil, err
		}
		all = append(all, s...)
	}
	return Normalize(all), nil
}

// Selector is one attested fact: Type is the attestor ("unix"), Value the
// fact ("uid:1000").
type Selector struct {
	Type  string
	Value string
}

// String gives the canonical "type:value" form.
func (s Selector) String() string { return s.Type + ":" + s.Value }

// ErrInvalidSelector is wrapped by every ParseSelector error.
var ErrInvalidSelector = errors.New("invalid selector")

const maxSelectorLen = 4096

// ParseSelector parses "type:value". Known types are checked against their
// grammar; for "unix": uid:N, gid:N, supplementary_gid:N (decimal, 32-bit),
// path:/absolute/clean/path, sha256:<64 lowercase hex digits>. Unknown types
// need a lowercase name and a printable value.
func ParseSelector(s string) (Selector, error) {
	if len(s) > maxSelectorLen {
		return Selector{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidSelector, maxSelectorLen)
	}
	typ, value, ok := strings.Cut(s, ":")
	if !ok || typ == "" || value == "" {
		return Selector{}, fmt.Errorf("%w %q: want TYPE:VALUE, e.g. unix:uid:1000", ErrInvalidSelector, s)
	}
	for i := 0; i < len(typ); i++ {
		c := typ[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') || i >= 64 {
			return Selector{}, fmt.Errorf("%w %q: type must be up to 64 lowercase letters, digits, '_' or '-'", ErrInvalidSelector, s)
		}
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return Selector{}, fmt.Errorf("%w %q: value has a control or invalid character", ErrInvalidSelector, s)
		}
	}
	sel := Selector{Type: typ, Value: value}
	if typ == "unix" {
		if err := checkUnix(value); err != nil {
			return Selector{}, fmt.Errorf("%w %q: %v", ErrInvalidSelector, s, err)
		}
	}
	return sel, nil
}

// ParseSelectors parses the selectors of one registration entry: each
// string, then the rules for the set (CheckEntrySelectors); the result is
// normalized.
func ParseSelectors(ss []string) ([]Selector, error) {
	out := make([]Selector, 0, len(ss))
	for _, s := range ss {
		sel, err := ParseSelector(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sel)
	}
	if err := CheckEntrySelectors(out); err != nil {
		return nil, err
	}
	return Normalize(out), nil
}

// ErrUnboundBinarySelector is wrapped by CheckEntrySelectors when an entry
// selects on a binary without an account.
var ErrUnboundBinarySelector = fmt.Errorf("%w: binary selector without unix:uid or unix:gid", ErrInvalidSelector)

// CheckEntrySelectors checks the rules for the selector set of one
// registration entry: unix:path and unix:sha256 (facts about the binary,
// read from /proc) count only together with unix:uid or unix:gid (fixed by
// the kernel when the process connected, SO_PEERCRED). Any local user can
// make a process whose /proc shows a given binary (connect, then exec it;
// or run it with LD_PRELOAD or under ptrace), so a binary selector alone
// would hand the SVID to whoever asks; the account is what the binary is
// checked within.
func CheckEntrySelectors(sel []Selector) error {
	var binary, account bool
	for _, s := range sel {
		if s.Type != "unix" {
			continue
		}
		key, _, _ := strings.Cut(s.Value, ":")
		switch key {
		case "path", "sha256":
			binary = true
		case "uid", "gid":
			account = true
		}
	}
	if binary && !account {
		return fmt.Errorf("%w: unix:path and unix:sha256 prove nothing on their own (any local user can connect and then exec the binary); "+
			"add unix:uid:N or unix:gid:N of the account the workload runs as", ErrUnboundBinarySelector)
	}
	return nil
}

func checkUnix(value string) error {
	key, arg, ok := strings.Cut(value, ":")
	if !ok || arg == "" {
		return errors.New("unix selectors are uid:N, gid:N, supplementary_gid:N, path:/abs or sha256:HEX")
	}
	switch key {
	case "uid", "gid", "supplementary_gid":
		if len(arg) > 1 && arg[0] == '0' || arg[0] == '+' || arg[0] == '-' {
			return fmt.Errorf("%s must be a plain decimal number", key)
		}
		if _, err := strconv.ParseUint(arg, 10, 32); err != nil {
			return fmt.Errorf("%s must be a decimal number below 2^32", key)
		}
	case "path":
		if !strings.HasPrefix(arg, "/") || path.Clean(arg) != arg {
			return errors.New("path must be absolute and clean (no //, . or ..)")
		}
	case "sha256":
		if len(arg) != 64 {
			return errors.New("sha256 must be 64 lowercase hex digits")
		}
		for i := 0; i < len(arg); i++ {
			if c := arg[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return errors.New("sha256 must be 64 lowercase hex digits")
			}
		}
	default:
		return fmt.Errorf("unknown unix selector %q; use uid, gid, supplementary_gid, path or sha256", key)
	}
	return nil
}

// Normalize sorts selectors and removes duplicates.
func Normalize(s []Selector) []Selector {
	out := append([]Selector(nil), s...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].Value < out[j].Value
	})
	j := 0
	for i := range out {
		if i > 0 && out[i] == out[j-1] {
			continue
		}
		out[j] = out[i]
		j++
	}
	return out[:j]
}

// Subset reports whether every selector of required is in have: a
// registration entry with selectors required applies to a caller attested
// with have. An entry with no selectors matches nothing, and neither does
// one that breaks CheckEntrySelectors (a binary selector without uid/gid).
func Subset(required, have []Selector) bool {
	if len(required) == 0 || CheckEntrySelectors(required) != nil {
		return false
	}
	set := make(map[Selector]struct{}, len(have))
	for _, s := range have {
		set[s] = struct{}{}
	}
	for _, s := range required {
		if _, ok := set[s]; !ok {
			return false
		}
	}
	return true
}
