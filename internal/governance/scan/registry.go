package scan

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Version is a protocol version as it appears on the wire.
type Version uint16

// The versions ward probes for (SSLv2 is not probed: no server built in
// the last fifteen years speaks it, and its hello is another format).
const (
	SSL30 Version = 0x0300
	TLS10 Version = 0x0301
	TLS11 Version = 0x0302
	TLS12 Version = 0x0303
	TLS13 Version = 0x0304
)

// Versions lists the probed versions, oldest first.
var Versions = []Version{SSL30, TLS10, TLS11, TLS12, TLS13}

func (v Version) String() string {
	switch v {
	case SSL30:
		return "SSLv3"
	case TLS10:
		return "TLSv1.0"
	case TLS11:
		return "TLSv1.1"
	case TLS12:
		return "TLSv1.2"
	case TLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", uint16(v))
}

// MarshalText names the version in JSON.
func (v Version) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// Suite describes a cipher suite, its properties read from its IANA name.
type Suite struct {
	ID   uint16 `json:"id"`
	Name string `json:"name"` // IANA name, TLS_ prefix included
	// KeyExchange: RSA (static), DH, DHE, ECDH, ECDHE, PSK, DHE_PSK, ...,
	// or "any" for TLS 1.3 suites.
	KeyExchange string `json:"key_exchange"`
	// Auth: RSA, DSS, ECDSA, anon, PSK, SRP, or "any" (TLS 1.3).
	Auth   string `json:"auth"`
	Cipher string `json:"cipher"` // e.g. AES_128_GCM, 3DES_EDE_CBC, RC4_128, NULL
	MAC    string `json:"mac"`    // SHA, SHA256, SHA384, MD5, or AEAD
	Bits   int    `json:"bits"`   // effective key bits of the cipher (0 for NULL)

	Export  bool `json:"export,omitempty"`
	AEAD    bool `json:"aead,omitempty"`
	Forward bool `json:"forward_secrecy,omitempty"`
}

func (s Suite) String() string { return s.Name }

// tls13 reports whether the suite exists only in TLS 1.3.
func (s Suite) tls13() bool { return s.ID>>8 == 0x13 }

// tls12Only: AEAD and SHA-2 MAC suites exist only from TLS 1.2 on.
func (s Suite) tls12Only() bool {
	return s.AEAD || s.MAC == "SHA256" || s.MAC == "SHA384"
}

// ecdhe: the suite's key exchange uses elliptic-curve ephemeral keys, so a
// TLS 1.2 ServerKeyExchange names its group.
func (s Suite) ecdhe() bool { return strings.HasPrefix(s.KeyExchange, "ECDHE") }

// SuiteByID returns the suite ward knows by that number, or one named by
// its number only.
func SuiteByID(id uint16) Suite {
	name, ok := suiteNames[id]
	if !ok {
		return Suite{ID: id, Name: fmt.Sprintf("0x%04X", id)}
	}
	return parseSuite(id, name)
}

// parseSuite reads the properties of a suite from its IANA name
// ("ECDHE_RSA_WITH_AES_128_GCM_SHA256", "AES_128_GCM_SHA256" for TLS 1.3).
func parseSuite(id uint16, name string) Suite {
	s := Suite{ID: id, Name: "TLS_" + name}
	kx, rest, found := strings.Cut(name, "_WITH_")
	if !found { // TLS 1.3: only the AEAD and the hash
		s.KeyExchange, s.Auth, rest = "any", "any", name
		s.Forward = true
	} else {
		if strings.Contains(kx, "EXPORT") {
			s.Export = true
			kx = strings.Replace(strings.Replace(kx, "_EXPORT1024", "", 1), "_EXPORT", "", 1)
		}
		switch kx {
		case "RSA":
			s.KeyExchange, s.Auth = "RSA", "RSA"
		case "PSK", "SRP_SHA":
			s.KeyExchange, s.Auth = strings.TrimSuffix(kx, "_SHA"), strings.TrimSuffix(kx, "_SHA")
		case "DH_anon", "ECDH_anon":
			s.KeyExchange, s.Auth = strings.TrimSuffix(kx, "_anon"), "anon"
			s.Forward = true // ephemeral, but unauthenticated
		case "PSK_DHE":
			s.KeyExchange, s.Auth = "DHE_PSK", "PSK"
		default:
			a, b, _ := strings.Cut(kx, "_")
			s.KeyExchange, s.Auth = a, b
			if b == "PSK" {
				s.KeyExchange = kx
			}
			if a == "SRP" {
				s.KeyExchange, s.Auth = "SRP", strings.TrimPrefix(b, "SHA_")
			}
		}
		if strings.HasPrefix(s.KeyExchange, "DHE") || strings.HasPrefix(s.KeyExchange, "ECDHE") {
			s.Forward = true
		}
	}
	// rest: CIPHER_MAC, where AEAD ciphers end in GCM, CCM, CCM_8 or POLY1305
	// (followed by the PRF hash, or nothing for the CCM suites of TLS 1.2).
	switch {
	case strings.HasSuffix(rest, "_CCM"), strings.HasSuffix(rest, "_CCM_8"):
		s.Cipher, s.MAC = rest, "AEAD"
	default:
		i := strings.LastIndexByte(rest, '_')
		s.Cipher, s.MAC = rest[:i], rest[i+1:]
	}
	for _, a := range []string{"_GCM", "_CCM", "POLY1305"} {
		if strings.Contains(s.Cipher, a) {
			s.AEAD = true
		}
	}
	if s.AEAD {
		s.MAC = "AEAD"
	}
	s.Bits = cipherBits(s.Cipher, s.Export)
	return s
}

func cipherBits(c string, export bool) int {
	switch {
	case c == "NULL":
		return 0
	case strings.Contains(c, "40"):
		return 40
	case strings.Contains(c, "_56"):
		return 56
	case strings.HasPrefix(c, "DES_CBC"), strings.HasPrefix(c, "DES40"):
		if export {
			return 40
		}
		return 56
	case strings.HasPrefix(c, "3DES"):
		return 112 // effective strength
	case strings.Contains(c, "256"), strings.HasPrefix(c, "CHACHA20"):
		return 256
	case strings.Contains(c, "128"), strings.HasPrefix(c, "IDEA"), strings.HasPrefix(c, "SEED"):
		return 128
	}
	return 0
}

// allSuites are the probed suites, sorted by number (built on first use,
// not when ward starts).
var allSuites = sync.OnceValue(func() []Suite {
	out := make([]Suite, 0, len(suiteNames))
	for id, n := range suiteNames {
		out = append(out, parseSuite(id, n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
})

// suitesFor are the suites worth offering in a hello of version v: TLS 1.3
// suites only in TLS 1.3, AEAD and SHA-2 suites only from TLS 1.2 on.
func suitesFor(v Version) []uint16 {
	var out []uint16
	for _, s := range allSuites() {
		switch {
		case v == TLS13:
			if s.tls13() {
				out = append(out, s.ID)
			}
		case s.tls13():
		case v < TLS12 && s.tls12Only():
		default:
			out = append(out, s.ID)
		}
	}
	return out
}

// Group is a key-exchange group (named curve, finite-field group or
// post-quantum hybrid).
type Group struct {
	ID   uint16 `json:"id"`
	Name string `json:"name"`
	// Hybrid: a post-quantum hybrid (ML-KEM with an elliptic curve).
	Hybrid bool `json:"post_quantum_hybrid,omitempty"`
	// Bits: the classical security level in bits (NIST SP 800-57 for the
	// finite-field groups).
	Bits int `json:"bits"`
}

func (g Group) String() string { return g.Name }

// The groups ward probes for. The post-quantum hybrids come first, as a
// modern client offers them.
var allGroups = []Group{
	{0x11EC, "X25519MLKEM768", true, 128},
	{0x11EB, "SecP256r1MLKEM768", true, 128},
	{0x11ED, "SecP384r1MLKEM1024", true, 192},
	{0x6399, "X25519Kyber768Draft00", true, 128},
	{0x001D, "x25519", false, 128},
	{0x0017, "secp256r1", false, 128},
	{0x0018, "secp384r1", false, 192},
	{0x0019, "secp521r1", false, 256},
	{0x001E, "x448", false, 224},
	{0x001A, "brainpoolP256r1", false, 128},
	{0x001B, "brainpoolP384r1", false, 192},
	{0x001C, "brainpoolP512r1", false, 256},
	{0x001F, "brainpoolP256r1tls13", false, 128},
	{0x0020, "brainpoolP384r1tls13", false, 192},
	{0x0021, "brainpoolP512r1tls13", false, 256},
	{0x0100, "ffdhe2048", false, 112},
	{0x0101, "ffdhe3072", false, 128},
	{0x0102, "ffdhe4096", false, 152},
	{0x0103, "ffdhe6144", false, 176},
	{0x0104, "ffdhe8192", false, 200},
	{0x0016, "secp256k1", false, 128},
	{0x0015, "secp224r1", false, 112},
	{0x0014, "secp224k1", false, 112},
	{0x0013, "secp192r1", false, 96},
	{0x0012, "secp192k1", false, 96},
	{0x0011, "secp160r2", false, 80},
	{0x0010, "secp160r1", false, 80},
	{0x000F, "secp160k1", false, 80},
	{0x000E, "sect571r1", false, 256},
	{0x000D, "sect571k1", false, 256},
	{0x000C, "sect409r1", false, 192},
	{0x000B, "sect409k1", false, 192},
	{0x000A, "sect283r1", false, 128},
	{0x0009, "sect283k1", false, 128},
	{0x0008, "sect239k1", false, 120},
	{0x0007, "sect233r1", false, 112},
	{0x0006, "sect233k1", false, 112},
	{0x0005, "sect193r2", false, 96},
	{0x0004, "sect193r1", false, 96},
	{0x0003, "sect163r2", false, 80},
	{0x0002, "sect163r1", false, 80},
	{0x0001, "sect163k1", false, 80},
}

// GroupByID returns the group ward knows by that number, or one named by
// its number only.
func GroupByID(id uint16) Group {
	for _, g := range allGroups {
		if g.ID == id {
			return g
		}
	}
	return Group{ID: id, Name: fmt.Sprintf("0x%04X", id)}
}

// groupsFor are the groups worth offering in version v: the TLS 1.3-only
// groups (hybrids, brainpool tls13) in TLS 1.3, the curves of RFC 8422 and
// the finite-field groups below it.
func groupsFor(v Version) []uint16 {
	var out []uint16
	for _, g := range allGroups {
		only13 := g.Hybrid || (g.ID >= 0x001F && g.ID <= 0x0021)
		legacy := g.ID < 0x0017 // deprecated curves: TLS 1.2 and below only
		if (v == TLS13 && !legacy) || (v < TLS13 && !only13 && g.ID < 0x0100) {
			out = append(out, g.ID)
		}
	}
	return out
}

// signatureSchemes offered in every hello: every scheme a server might
// sign with, so that the choice of suite is never limited by signatures.
var signatureSchemes = []uint16{
	0x0403, 0x0503, 0x0603, // ecdsa_secp256r1_sha256 .. secp521r1_sha512
	0x0807, 0x0808, // ed25519, ed448
	0x0804, 0x0805, 0x0806, // rsa_pss_rsae
	0x0809, 0x080a, 0x080b, // rsa_pss_pss
	0x081a, 0x081b, 0x081c, // ecdsa_brainpool tls13
	0x0401, 0x0501, 0x0601, // rsa_pkcs1
	0x0303, 0x0301, 0x0302, // sha224 ecdsa, rsa, dsa
	0x0402, 0x0502, 0x0602, // dsa sha256..512
	0x0203, 0x0201, 0x0202, // sha1 ecdsa, rsa, dsa
}
