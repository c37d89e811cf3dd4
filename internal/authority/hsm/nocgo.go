//go:build !cgo

package hsm

// Token is a logged-in PKCS#11 token. Without cgo it can never be opened.
type Token struct{}

// Open always fails: this binary has no PKCS#11 support.
func Open(Config) (*Token, error) { return nil, ErrNotCompiled }

// Compiled reports whether PKCS#11 support is compiled in.
func Compiled() bool { return false }

// Close does nothing.
func (*Token) Close() error { return nil }

// GenerateKey fails: not compiled in.
func (*Token) GenerateKey(string) error { return ErrNotCompiled }

// Key fails: not compiled in.
func (*Token) Key(string) (*Key, error) { return nil, ErrNotCompiled }

// DestroyKey fails: not compiled in.
func (*Token) DestroyKey(string) error { return ErrNotCompiled }

// KeyInfo fails: not compiled in.
func (*Token) KeyInfo(string) (KeyInfo, error) { return KeyInfo{}, ErrNotCompiled }

// Key is an AES key held in the token.
type Key struct{}

// Label returns "".
func (*Key) Label() string { return "" }

// Seal fails: not compiled in.
func (*Key) Seal(_, _ []byte) ([]byte, error) { return nil, ErrNotCompiled }

// Open fails: not compiled in.
func (*Key) Open(_, _ []byte) ([]byte, error) { return nil, ErrNotCompiled }
