//go:build cgo

package hsm

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/miekg/pkcs11"
)

// Compiled reports whether PKCS#11 support is compiled in.
func Compiled() bool { return true }

// gcmNonceSize and gcmTagBits are the CKM_AES_GCM parameters ward uses.
const (
	gcmNonceSize = 12
	gcmTagBits   = 128
	// poolSize sessions serve concurrent operations.
	poolSize = 4
)

// A PKCS#11 library may be initialised once per process: modules are
// shared by every Token on the same path and finalised with the last one.
var (
	modulesMu sync.Mutex
	modules   = map[string]*module{}
)

type module struct {
	ctx  *pkcs11.Ctx
	refs int
}

func openModule(path string) (*pkcs11.Ctx, error) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	if m, ok := modules[path]; ok {
		m.refs++
		return m.ctx, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: PKCS#11 module %s: %v; install the HSM vendor's library (for SoftHSM2: apt-get install softhsm2) or fix seal.pkcs11.module", ErrToken, path, err)
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: %s cannot be loaded as a PKCS#11 module (dlopen failed or it lacks C_GetFunctionList)", ErrToken, path)
	}
	if err := ctx.Initialize(); err != nil && !isCode(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: initialising PKCS#11 module %s: %v", ErrToken, path, err)
	}
	modules[path] = &module{ctx: ctx, refs: 1}
	return ctx, nil
}

func closeModule(path string) {
	modulesMu.Lock()
	defer modulesMu.Unlock()
	m, ok := modules[path]
	if !ok {
		return
	}
	if m.refs--; m.refs > 0 {
		return
	}
	m.ctx.Finalize()
	m.ctx.Destroy()
	delete(modules, path)
}

func isCode(err error, code uint) bool {
	var p pkcs11.Error
	return errors.As(err, &p) && uint(p) == code
}

// Token is a logged-in PKCS#11 token. Safe for concurrent use.
type Token struct {
	cfg      Config
	ctx      *pkcs11.Ctx
	slot     uint
	sessions chan pkcs11.SessionHandle // idle sessions; never closed
	opened   int                       // sessions opened (all return to sessions)
	done     chan struct{}             // closed by Close

	closeOnce sync.Once
}

// Open loads the module, finds the token, opens sessions and logs in with
// the PIN from cfg. Errors say what is wrong (module, token, PIN) and
// never contain the PIN.
func Open(cfg Config) (*Token, error) {
	if cfg.Module == "" {
		return nil, fmt.Errorf("%w: no PKCS#11 module path configured", ErrToken)
	}
	if (cfg.TokenLabel == "") == (cfg.Slot == nil) {
		return nil, fmt.Errorf("%w: select the token by exactly one of token label or slot", ErrToken)
	}
	pin, err := cfg.ReadPIN()
	if err != nil {
		return nil, err
	}
	ctx, err := openModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	t := &Token{cfg: cfg, ctx: ctx, sessions: make(chan pkcs11.SessionHandle, poolSize), done: make(chan struct{})}
	if err := t.open(pin); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Token) open(pin string) error {
	slots, err := t.ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("%w: listing the slots of %s: %v", ErrToken, t.cfg.Module, err)
	}
	found := false
	var labels []string
	for _, s := range slots {
		ti, err := t.ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		labels = append(labels, fmt.Sprintf("%q", ti.Label))
		if (t.cfg.Slot != nil && uint(*t.cfg.Slot) == s) || (t.cfg.Slot == nil && ti.Label == t.cfg.TokenLabel) {
			t.slot, found = s, true
			break
		}
	}
	if !found {
		want := fmt.Sprintf("token labelled %q", t.cfg.TokenLabel)
		if t.cfg.Slot != nil {
			want = fmt.Sprintf("token in slot %d", *t.cfg.Slot)
		}
		return fmt.Errorf("%w: PKCS#11 module %s has no %s (tokens present: %d %v): is the HSM connected and the token initialised? The authority stays sealed; if the token is lost for good, unseal with the recovery shares (docs/hsm.md)", ErrToken, t.cfg.Module, want, len(labels), labels)
	}
	for i := 0; i < poolSize; i++ {
		sh, err := t.ctx.OpenSession(t.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return fmt.Errorf("%w: opening a session on %s: %v", ErrToken, t.cfg, err)
		}
		t.sessions <- sh
		t.opened++
		if i == 0 {
			// Login applies to every session of this process on the slot.
			if err := t.ctx.Login(sh, pkcs11.CKU_USER, pin); err != nil && !isCode(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
				return t.loginErr(err)
			}
		}
	}
	return nil
}

func (t *Token) loginErr(err error) error {
	switch {
	case isCode(err, pkcs11.CKR_PIN_INCORRECT), isCode(err, pkcs11.CKR_PIN_INVALID), isCode(err, pkcs11.CKR_PIN_LEN_RANGE):
		return fmt.Errorf("%w: %s refused the user PIN from %s (CKR_PIN_INCORRECT); the authority stays sealed: fix the PIN and restart", ErrPIN, t.cfg, t.cfg.pinSource())
	case isCode(err, pkcs11.CKR_PIN_LOCKED):
		return fmt.Errorf("%w: the user PIN of %s is locked after too many wrong attempts; the security officer must unlock it", ErrPIN, t.cfg)
	case isCode(err, pkcs11.CKR_PIN_EXPIRED):
		return fmt.Errorf("%w: the user PIN of %s has expired; set a new one", ErrPIN, t.cfg)
	case isCode(err, pkcs11.CKR_USER_PIN_NOT_INITIALIZED):
		return fmt.Errorf("%w: %s has no user PIN yet; initialise it (softhsm2-util --init-token ... --pin ...)", ErrPIN, t.cfg)
	}
	return fmt.Errorf("%w: logging in to %s: %v", ErrToken, t.cfg, err)
}

// Close waits for operations in flight, logs out, closes the sessions
// and releases the module. Operations after Close fail.
func (t *Token) Close() error {
	t.closeOnce.Do(func() {
		close(t.done)
		for i := 0; i < t.opened; i++ {
			sh := <-t.sessions
			if i == 0 {
				t.ctx.Logout(sh)
			}
			t.ctx.CloseSession(sh)
		}
		closeModule(t.cfg.Module)
	})
	return nil
}

func (t *Token) with(f func(sh pkcs11.SessionHandle) error) error {
	select {
	case <-t.done:
		return fmt.Errorf("%w: %s was closed", ErrToken, t.cfg)
	default:
	}
	var sh pkcs11.SessionHandle
	select {
	case sh = <-t.sessions:
	case <-t.done:
		return fmt.Errorf("%w: %s was closed", ErrToken, t.cfg)
	}
	defer func() { t.sessions <- sh }()
	return f(sh)
}

func (t *Token) find(sh pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, bool, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
	if err := t.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return 0, false, fmt.Errorf("%w: searching %s for key %q: %v", ErrToken, t.cfg, label, err)
	}
	objs, _, err := t.ctx.FindObjects(sh, 2)
	t.ctx.FindObjectsFinal(sh)
	if err != nil {
		return 0, false, fmt.Errorf("%w: searching %s for key %q: %v", ErrToken, t.cfg, label, err)
	}
	switch len(objs) {
	case 0:
		return 0, false, nil
	case 1:
		return objs[0], true, nil
	}
	return 0, false, fmt.Errorf("%w: %s holds several secret keys labelled %q; ward cannot tell which one to use", ErrToken, t.cfg, label)
}

// GenerateKey creates an AES-256 key labelled label inside the token: a
// persistent, private object that is sensitive and never extractable, so
// its value cannot leave the HSM, and usable only to encrypt and decrypt.
// It fails if a key with that label exists.
func (t *Token) GenerateKey(label string) error {
	if label == "" {
		return fmt.Errorf("%w: empty key label", ErrToken)
	}
	return t.with(func(sh pkcs11.SessionHandle) error {
		if _, ok, err := t.find(sh, label); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%w: %s already holds a key labelled %q", ErrToken, t.cfg, label)
		}
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		}
		if _, err := t.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl); err != nil {
			return fmt.Errorf("%w: generating AES-256 key %q in %s: %v", ErrToken, label, t.cfg, err)
		}
		return nil
	})
}

// Key returns the key labelled label.
func (t *Token) Key(label string) (*Key, error) {
	var k *Key
	err := t.with(func(sh pkcs11.SessionHandle) error {
		obj, ok, err := t.find(sh, label)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s holds no key labelled %q (deleted, or another token)", ErrToken, t.cfg, label)
		}
		k = &Key{t: t, obj: obj, label: label}
		return nil
	})
	return k, err
}

// DestroyKey deletes the key labelled label from the token; a missing
// key is not an error.
func (t *Token) DestroyKey(label string) error {
	return t.with(func(sh pkcs11.SessionHandle) error {
		obj, ok, err := t.find(sh, label)
		if err != nil || !ok {
			return err
		}
		if err := t.ctx.DestroyObject(sh, obj); err != nil {
			return fmt.Errorf("%w: destroying key %q in %s: %v", ErrToken, label, t.cfg, err)
		}
		return nil
	})
}

// KeyInfo reads the key's protection attributes from the token.
func (t *Token) KeyInfo(label string) (KeyInfo, error) {
	var info KeyInfo
	err := t.with(func(sh pkcs11.SessionHandle) error {
		obj, ok, err := t.find(sh, label)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s holds no key labelled %q", ErrToken, t.cfg, label)
		}
		attrs, err := t.ctx.GetAttributeValue(sh, obj, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		})
		if err != nil {
			return fmt.Errorf("%w: reading the attributes of key %q: %v", ErrToken, label, err)
		}
		for _, a := range attrs {
			v := len(a.Value) > 0 && a.Value[0] != 0
			switch a.Type {
			case pkcs11.CKA_EXTRACTABLE:
				info.Extractable = v
			case pkcs11.CKA_SENSITIVE:
				info.Sensitive = v
			case pkcs11.CKA_NEVER_EXTRACTABLE:
				info.NeverExtractable = v
			case pkcs11.CKA_TOKEN:
				info.Token = v
			}
		}
		return nil
	})
	return info, err
}

// Key is an AES-256 key held in the token: it encrypts and decrypts
// there with CKM_AES_GCM. Safe for concurrent use.
type Key struct {
	t     *Token
	obj   pkcs11.ObjectHandle
	label string
}

// Label returns the key's label in the token.
func (k *Key) Label() string { return k.label }

// Seal encrypts plaintext bound to aad in the HSM under a fresh random
// 96-bit nonce and returns nonce || ciphertext || tag.
func (k *Key) Seal(plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, gcmNonceSize)
	rand.Read(nonce)
	var out []byte
	err := k.t.with(func(sh pkcs11.SessionHandle) error {
		params := pkcs11.NewGCMParams(nonce, aad, gcmTagBits)
		defer params.Free()
		if err := k.t.ctx.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, k.obj); err != nil {
			return fmt.Errorf("%w: CKM_AES_GCM encrypt with key %q in %s: %v", ErrToken, k.label, k.t.cfg, err)
		}
		ct, err := k.t.ctx.Encrypt(sh, plaintext)
		if err != nil {
			return fmt.Errorf("%w: CKM_AES_GCM encrypt with key %q in %s: %v", ErrToken, k.label, k.t.cfg, err)
		}
		out = append(nonce, ct...)
		return nil
	})
	return out, err
}

// Open decrypts nonce || ciphertext || tag made by Seal with the same aad.
// A ciphertext that fails authentication gives ErrAuth.
func (k *Key) Open(payload, aad []byte) ([]byte, error) {
	if len(payload) < gcmNonceSize+gcmTagBits/8 {
		return nil, ErrAuth
	}
	var pt []byte
	err := k.t.with(func(sh pkcs11.SessionHandle) error {
		params := pkcs11.NewGCMParams(payload[:gcmNonceSize], aad, gcmTagBits)
		defer params.Free()
		if err := k.t.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, k.obj); err != nil {
			return fmt.Errorf("%w: CKM_AES_GCM decrypt with key %q in %s: %v", ErrToken, k.label, k.t.cfg, err)
		}
		var err error
		pt, err = k.t.ctx.Decrypt(sh, payload[gcmNonceSize:])
		switch {
		case err == nil:
			return nil
		case isCode(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID), isCode(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE):
			return ErrAuth
		case isCode(err, pkcs11.CKR_GENERAL_ERROR), isCode(err, pkcs11.CKR_FUNCTION_FAILED):
			// SoftHSM2 reports a GCM tag mismatch as CKR_GENERAL_ERROR;
			// the operation was accepted (C_DecryptInit succeeded), so
			// this is the tag check failing.
			return fmt.Errorf("%w (%v)", ErrAuth, err)
		}
		return fmt.Errorf("%w: CKM_AES_GCM decrypt with key %q in %s: %v", ErrToken, k.label, k.t.cfg, err)
	})
	return pt, err
}
