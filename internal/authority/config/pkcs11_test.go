package config

import (
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

func TestPKCS11SealConfig(t *testing.T) {
	const base = "trust_domain: a.org\ndata_dir: /d\n"
	p11 := func(s string) string { return base + "seal: {type: pkcs11, pkcs11: {" + s + "}}\n" }
	cases := []struct{ name, yaml, wantErr string }{
		{"env", p11("module: /usr/lib/softhsm/libsofthsm2.so, token_label: ward, pin_env: WARD_HSM_PIN"), ""},
		{"file and slot", p11("module: /m.so, slot: 0, pin_file: /etc/ward/hsm.pin"), ""},
		{"no module", p11("token_label: ward, pin_env: P"), "seal.pkcs11.module is required"},
		{"relative module", p11("module: m.so, token_label: ward, pin_env: P"), "relative path"},
		{"no token", p11("module: /m.so, pin_env: P"), "exactly one of token_label and slot"},
		{"two tokens", p11("module: /m.so, slot: 1, token_label: w, pin_env: P"), "exactly one of token_label and slot"},
		{"no PIN source", p11("module: /m.so, token_label: w"), "exactly one of pin_env"},
		{"two PIN sources", p11("module: /m.so, token_label: w, pin_env: P, pin_file: /p"), "exactly one of pin_env"},
		{"a PIN in pin_env", p11("module: /m.so, token_label: w, pin_env: '1234 5678'"), "not an environment variable name"},
		{"relative PIN file", p11("module: /m.so, token_label: w, pin_file: hsm.pin"), "relative path"},
		{"a pin field", p11("module: /m.so, token_label: w, pin: '1234'"), "pin"},
		{"hardware-backed row", base + "kms: {classifications: {h: {hardware_backed: true, rotation_period: 30d}}}\n", ""},
		{"hardware-backed with another alg", base + "kms: {classifications: {h: {hardware_backed: true, algorithm: aes-256-gcm, rotation_period: 30d}}}\n", "hardware_backed"},
		{"hsm alg without hardware_backed", base + "kms: {classifications: {h: {algorithm: aes-256-gcm-hsm, rotation_period: 30d}}}\n", "hardware_backed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.yaml))
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err = %v, want %q", err, c.wantErr)
			}
			_ = cfg
		})
	}
	cfg, err := Parse([]byte(base + "kms: {classifications: {h: {hardware_backed: true, rotation_period: 30d}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	tab, _ := cfg.ClassificationTable()
	if r := tab["h"]; !r.HardwareBacked || r.Algorithm != kmsfmt.AlgAES256GCMHSM {
		t.Fatalf("row %+v", r)
	}
}
