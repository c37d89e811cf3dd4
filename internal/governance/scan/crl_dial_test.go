package scan

import "testing"

// TestCRLDialRefusesMetadataInDisguise runs the attack of a scanned
// server naming a CRL URL whose host resolves to a cloud metadata service
// written another way: the check on the dialled address sees through
// NAT64 and IPv4-compatible forms, and refuses the metadata addresses
// outside link-local; ordinary addresses (and NAT64 of an ordinary IPv4
// address, as DNS64 resolves an IPv4-only CRL server) are dialled.
func TestCRLDialRefusesMetadataInDisguise(t *testing.T) {
	for _, a := range []string{"169.254.169.254", "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]", "[::a9fe:a9fe]",
		"[64:ff9b:1::a9fe:a9fe]", "[2002:a9fe:a9fe::1]", "[2001:0:a9fe:a9fe::1]", "[fd00:ec2::254]", "100.100.100.200",
		"[fe80::1]", "0.0.0.0", "[::]", "224.0.0.1", "[64:ff9b::e000:1]"} {
		if err := refuseSpecialDestinations("tcp", a+":80", nil); err == nil {
			t.Errorf("CRL fetch dials %s", a)
		}
	}
	for _, a := range []string{"192.0.2.10", "[2001:db8::10]", "[64:ff9b::c000:20a]", "127.0.0.1", "[::1]"} {
		if err := refuseSpecialDestinations("tcp", a+":80", nil); err != nil {
			t.Errorf("CRL fetch refuses %s: %v", a, err)
		}
	}
}
