package server

import (
	"github.com/wardproject/ward/internal/authority/config"
	"github.com/wardproject/ward/internal/authority/hsm"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/seal"
	"github.com/wardproject/ward/internal/shared/kmscrypto"
)

// openPKCS11Seal makes the PKCS#11 seal. It refuses at once in a binary
// built without cgo, where the seal could never work.
func openPKCS11Seal(c config.PKCS11) (seal.Seal, error) {
	if !hsm.Compiled() {
		return nil, hsm.ErrNotCompiled
	}
	return seal.NewPKCS11(seal.PKCS11Config{KeyLabel: c.KeyLabel, Token: hsm.Config{
		Module: c.Module, TokenLabel: c.TokenLabel, Slot: c.Slot, PINEnv: c.PINEnv, PINFile: c.PINFile}}), nil
}

// recoverable: the seal also takes recovery shares and the authority was
// initialised with some, so a failed auto-unseal leaves it up and sealed.
func (s *Server) recoverable(st seal.Status) bool {
	_, ok := s.sealer.(seal.RecoverySeal)
	return ok && st.Shares > 0
}

// kmsHSM gives the KMS the PKCS#11 seal's token for hardware-backed
// classifications. With another seal, or when the token cannot be opened
// (unsealed with recovery shares while the HSM is lost), the KMS has no
// HSM: hardware-backed keys then fail with an error saying so.
func (s *Server) kmsHSM() kms.Option {
	p, ok := s.sealer.(*seal.PKCS11Seal)
	if !ok {
		return func(*kms.Manager) {}
	}
	tok, err := p.Token()
	if err != nil {
		s.log.Error("the PKCS#11 token is unavailable: hardware-backed keys cannot be used until it is back and the authority restarts", "err", err)
		return func(*kms.Manager) {}
	}
	return kms.WithHSM(tokenHSM{tok})
}

// closeSeal releases the seal's HSM session, if any.
func (s *Server) closeSeal() {
	if p, ok := s.sealer.(*seal.PKCS11Seal); ok {
		p.Close()
	}
}

// tokenHSM is an hsm.Token as the KMS sees it.
type tokenHSM struct{ t *hsm.Token }

func (h tokenHSM) GenerateKey(label string) error { return h.t.GenerateKey(label) }
func (h tokenHSM) DestroyKey(label string) error  { return h.t.DestroyKey(label) }
func (h tokenHSM) Key(label string) (kmscrypto.External, error) {
	k, err := h.t.Key(label)
	if err != nil {
		return nil, err
	}
	return k, nil
}
