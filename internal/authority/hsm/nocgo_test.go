//go:build !cgo

package hsm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/hsm"
)

// Without cgo the PKCS#11 support is absent and says so (scripts/nocgo.sh
// runs this with CGO_ENABLED=0).
func TestNotCompiled(t *testing.T) {
	if hsm.Compiled() {
		t.Fatal("Compiled() in a CGO_ENABLED=0 build")
	}
	_, err := hsm.Open(hsm.Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "x", PINEnv: "X"})
	if !errors.Is(err, hsm.ErrNotCompiled) || !strings.Contains(err.Error(), "built with CGO_ENABLED=0") {
		t.Fatalf("Open: %v", err)
	}
}
