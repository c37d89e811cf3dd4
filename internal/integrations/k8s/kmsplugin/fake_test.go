package kmsplugin

import (
	"bytes"
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

// fakeAuthority stands in for the authority's KMS: real ward headers, the
// context bound into the "payload" (no secrecy: these tests are about the
// plugin's logic), versions that rotate and fail on demand.
type fakeAuthority struct {
	mu       sync.Mutex
	key      string
	version  uint32
	minVer   uint32
	fail     error // returned by every call while set
	encrypts int
	decrypts int
	// hold, if set, keeps every Encrypt waiting until it is closed (calls
	// in flight while others arrive).
	hold chan struct{}
}

func (f *fakeAuthority) Encrypt(_ context.Context, key string, pt []byte, encCtx map[string]string) ([]byte, uint32, error) {
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold != nil {
		<-hold
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.encrypts++
	if f.fail != nil {
		return nil, 0, f.fail
	}
	if key != f.key {
		return nil, 0, status.Errorf(codes.NotFound, "key %q not found", key)
	}
	ct := kmsfmt.AppendHeader(nil, kmsfmt.Header{Alg: kmsfmt.AlgAES256GCMHKDF, KeyName: key, Version: f.version})
	ctxb := kmsfmt.AppendContext(nil, encCtx)
	ct = append(ct, byte(len(ctxb)))
	ct = append(ct, ctxb...)
	return append(ct, pt...), f.version, nil
}

func (f *fakeAuthority) Decrypt(_ context.Context, ct []byte, encCtx map[string]string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decrypts++
	if f.fail != nil {
		return nil, f.fail
	}
	h, _, payload, err := kmsfmt.Parse(ct)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if h.Version < f.minVer || h.Version > f.version {
		return nil, status.Errorf(codes.FailedPrecondition, "key %q version %d is disabled", h.KeyName, h.Version)
	}
	ctxb := kmsfmt.AppendContext(nil, encCtx)
	if len(payload) < 1 || int(payload[0]) > len(payload)-1 || !bytes.Equal(payload[1:1+int(payload[0])], ctxb) {
		return nil, status.Error(codes.InvalidArgument, "message authentication failed: wrong key, context or tampered ciphertext")
	}
	return payload[1+int(payload[0]):], nil
}

func (f *fakeAuthority) rotate() {
	f.mu.Lock()
	f.version++
	f.mu.Unlock()
}

func (f *fakeAuthority) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func (f *fakeAuthority) calls() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.encrypts, f.decrypts
}

// readyAuthority is a fakeAuthority with the mTLS mode's local check
// (Ready): the credential it names, or the error it gives, are the test's.
type readyAuthority struct {
	*fakeAuthority
	cred string
	err  error
}

func (r *readyAuthority) Ready() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cred, r.err
}

func (r *readyAuthority) set(cred string, err error) {
	r.mu.Lock()
	r.cred, r.err = cred, err
	r.mu.Unlock()
}
