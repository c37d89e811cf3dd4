// Package sniname is the one scheme of TLS server names (SNI) that ward's
// east-west gateway routes by: <service>.<trust domain>.ward. The gateway
// computes the names of its routes with it, and an outbound proxy the name
// it sends (docs/gateway.md).
package sniname

import (
	"fmt"
	"strings"
)

// Suffix ends every gateway SNI name. It is no public DNS name: an SNI name
// that is not a ward service can never match a route by accident.
const Suffix = ".ward"

// MaxLen is the longest name (a DNS name without its trailing dot).
const MaxLen = 253

// For returns the SNI name of service in trustDomain:
// "<service>.<trust domain>.ward". service is one DNS label (lower-case
// letters, digits and '-', not at either end, at most 63); trustDomain is
// a SPIFFE trust domain name (e.g. "prod.example").
func For(service, trustDomain string) (string, error) {
	if err := CheckService(service); err != nil {
		return "", err
	}
	if trustDomain == "" {
		return "", fmt.Errorf("SNI name of service %q: no trust domain", service)
	}
	for _, l := range strings.Split(trustDomain, ".") {
		if err := checkLabel(l, true); err != nil {
			return "", fmt.Errorf("SNI name of service %q: trust domain %q: %v", service, trustDomain, err)
		}
	}
	n := service + "." + trustDomain + Suffix
	if len(n) > MaxLen {
		return "", fmt.Errorf("SNI name %q is %d bytes, more than %d: use a shorter service name", n, len(n), MaxLen)
	}
	return n, nil
}

// Parse splits a name made by For into its service and trust domain; ok
// is false for any other name.
func Parse(name string) (service, trustDomain string, ok bool) {
	rest, ok := strings.CutSuffix(name, Suffix)
	if !ok {
		return "", "", false
	}
	service, trustDomain, ok = strings.Cut(rest, ".")
	if !ok {
		return "", "", false
	}
	if n, err := For(service, trustDomain); err != nil || n != name {
		return "", "", false
	}
	return service, trustDomain, true
}

// CheckService says why service cannot be part of an SNI name, or nil.
func CheckService(service string) error {
	if err := checkLabel(service, false); err != nil {
		return fmt.Errorf("service name %q: %v (a gateway route's service is one DNS label, e.g. payments)", service, err)
	}
	return nil
}

// checkLabel accepts one DNS label of lower-case letters, digits and '-'
// (and '_' when underscore, as SPIFFE trust domains allow it).
func checkLabel(l string, underscore bool) error {
	switch {
	case l == "":
		return fmt.Errorf("empty label")
	case len(l) > 63:
		return fmt.Errorf("label %q is longer than 63 bytes", l)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with '-'", l)
	}
	for _, c := range []byte(l) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || underscore && c == '_' {
			continue
		}
		return fmt.Errorf("label %q has %q: use lower-case letters, digits and '-'", l, c)
	}
	return nil
}
