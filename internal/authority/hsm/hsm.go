// Package hsm talks to a PKCS#11 hardware security module (tested with
// SoftHSM2). It generates AES-256 keys inside the token, never extractable
// and always sensitive, and encrypts and decrypts with them there
// (CKM_AES_GCM): key material never enters ward's memory or storage; ward
// keeps only the key's label.
//
// The binding (github.com/ThalesGroup/crypto11 over miekg/pkcs11) needs
// cgo: pkcs11.go is built with cgo, nocgo.go without it, where Open says
// that the PKCS#11 support is not compiled in. Everything else (the
// configuration, the PIN loading) is plain Go.
package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
)

// Errors; returned errors wrap them for errors.Is. No error ever contains
// the PIN.
var (
	// ErrNotCompiled: the binary was built with CGO_ENABLED=0.
	ErrNotCompiled = errs.New(errs.Precondition, "the PKCS#11 seal is not compiled into this binary (built with CGO_ENABLED=0); build ward with cgo (CGO_ENABLED=1, a C compiler installed) to use seal.type pkcs11 or hardware-backed key classifications (docs/hsm.md)")
	// ErrPIN: the PIN could not be loaded, or the token refused it.
	ErrPIN = errs.New(errs.Precondition, "HSM PIN")
	// ErrToken: the module, the token or a key is missing or failing.
	ErrToken = errs.New(errs.Unavailable, "HSM")
	// ErrAuth: a ciphertext failed authentication in the HSM (the KMS's
	// own authentication error, so it is reported the same way).
	ErrAuth = kmscrypto.ErrAuth
)

// Config selects a token and how to log in to it.
type Config struct {
	// Module is the path of the vendor's PKCS#11 library, e.g.
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string
	// TokenLabel or Slot selects the token (exactly one).
	TokenLabel string
	Slot       *int
	// PINEnv names an environment variable holding the user PIN, or
	// PINFile a file (mode 0600 or stricter, owned by ward's uid) holding
	// it. Exactly one. The PIN is never taken from the command line.
	PINEnv  string
	PINFile string
}

// maxPIN bounds what is read from a PIN file.
const maxPIN = 256

// String describes the token without the PIN (safe to log).
func (c Config) String() string {
	tok := fmt.Sprintf("token %q", c.TokenLabel)
	if c.TokenLabel == "" && c.Slot != nil {
		tok = fmt.Sprintf("slot %d", *c.Slot)
	}
	return fmt.Sprintf("%s in PKCS#11 module %s", tok, c.Module)
}

func (c Config) pinSource() string {
	if c.PINFile != "" {
		return "PIN file " + c.PINFile
	}
	return "environment variable " + c.PINEnv
}

// ReadPIN loads the PIN from the environment variable or the file. A PIN
// file must be a regular file owned by the uid ward runs as and not
// accessible by group or others, so no other local uid can read it; a
// trailing newline is dropped.
func (c Config) ReadPIN() (string, error) {
	switch {
	case c.PINEnv != "" && c.PINFile != "":
		return "", fmt.Errorf("%w: set either a PIN environment variable or a PIN file, not both", ErrPIN)
	case c.PINEnv != "":
		pin, ok := os.LookupEnv(c.PINEnv)
		if !ok || pin == "" {
			return "", fmt.Errorf("%w: environment variable %s is not set or empty; export the token's user PIN in it before starting ward", ErrPIN, c.PINEnv)
		}
		return pin, nil
	case c.PINFile != "":
		return readPINFile(c.PINFile)
	}
	return "", fmt.Errorf("%w: no PIN source: set a PIN environment variable or a PIN file", ErrPIN)
}

func readPINFile(path string) (string, error) {
	// O_NONBLOCK: a FIFO at the path must not block the start before the
	// regular-file check below refuses it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: PIN file %s does not exist", ErrPIN, path)
		}
		return "", fmt.Errorf("%w: opening PIN file %s: %v", ErrPIN, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("%w: PIN file %s: %v", ErrPIN, path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: PIN file %s is not a regular file", ErrPIN, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("%w: PIN file %s is accessible by group or others (mode %04o), so another local user could read the PIN; run chmod 600 on it and change the PIN", ErrPIN, path, perm)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%w: PIN file %s is owned by uid %d, but ward runs as uid %d; chown it to ward's user", ErrPIN, path, sys.Uid, os.Geteuid())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxPIN+1))
	if err != nil {
		return "", fmt.Errorf("%w: reading PIN file %s: %v", ErrPIN, path, err)
	}
	defer clear(b)
	if len(b) > maxPIN {
		return "", fmt.Errorf("%w: PIN file %s is longer than %d bytes; it should hold only the PIN", ErrPIN, path, maxPIN)
	}
	pin := bytes.TrimRight(b, "\r\n")
	if len(pin) == 0 {
		return "", fmt.Errorf("%w: PIN file %s is empty", ErrPIN, path)
	}
	return string(pin), nil
}

// KeyInfo is what the token says about a key (for checks and tests).
type KeyInfo struct {
	Extractable      bool
	Sensitive        bool
	NeverExtractable bool
	Token            bool // a persistent token object
}
