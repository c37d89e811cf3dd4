package config

import (
	"errors"
	"fmt"
	"regexp"
	"sync"
)

// PKCS11 configures the PKCS#11 HSM seal (seal.type pkcs11). The PIN is
// never in this file: it comes from the environment variable pin_env or
// the file pin_file (mode 0600, owned by ward's user).
type PKCS11 struct {
	// Module is the vendor's PKCS#11 library, e.g.
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string `yaml:"module"`
	// TokenLabel or Slot selects the token (exactly one).
	TokenLabel string `yaml:"token_label"`
	Slot       *int   `yaml:"slot"`
	// KeyLabel labels the root key's wrapping key in the token (default
	// ward-seal); generated there at init if missing.
	KeyLabel string `yaml:"key_label"`
	PINEnv   string `yaml:"pin_env"`
	PINFile  string `yaml:"pin_file"`
}

var envName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })

func (p PKCS11) validate() error {
	if p.Module == "" {
		return errors.New("seal.pkcs11.module is required with seal.type pkcs11: the HSM vendor's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
	}
	if err := absPath("seal.pkcs11.module", p.Module); err != nil {
		return err
	}
	if (p.TokenLabel == "") == (p.Slot == nil) {
		return errors.New("seal.pkcs11: set exactly one of token_label and slot to select the token")
	}
	if p.Slot != nil && *p.Slot < 0 {
		return fmt.Errorf("seal.pkcs11.slot %d is negative", *p.Slot)
	}
	if (p.PINEnv == "") == (p.PINFile == "") {
		return errors.New("seal.pkcs11: set exactly one of pin_env (an environment variable holding the user PIN) and pin_file (a file of mode 0600 holding it); the PIN itself never goes in the config")
	}
	if p.PINEnv != "" && !envName().MatchString(p.PINEnv) {
		return fmt.Errorf("seal.pkcs11.pin_env %q is not an environment variable name (give the name, e.g. WARD_HSM_PIN, not the PIN)", p.PINEnv)
	}
	if err := absPath("seal.pkcs11.pin_file", p.PINFile); err != nil {
		return err
	}
	if len(p.KeyLabel) > 64 {
		return fmt.Errorf("seal.pkcs11.key_label is %d characters; keep it under 64", len(p.KeyLabel))
	}
	return nil
}
