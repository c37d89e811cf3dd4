package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wardproject/ward/internal/shared/yamlconf"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name, yaml, wantErr string
	}{
		{"minimal", "trust_domain: a.org\ndata_dir: /d\n", ""},
		{"etcd tls", "trust_domain: a.org\ndata_dir: /d\nstorage: {backend: etcd, etcd: {endpoints: [https://e:2379], ca_file: ca, cert_file: c, key_file: k}}\n", ""},
		{"custom classification", "trust_domain: a.org\ndata_dir: /d\nkms: {classifications: {pci: {algorithm: aes-256-gcm, rotation_period: 30d, keep_versions: 2}}}\n", ""},
		{"unknown field", "trust_domain: a.org\ndata_dir: /d\nbogus: 1\n", "bogus"},
		{"missing td", "data_dir: /d\n", "trust_domain is required"},
		{"spiffe prefix td", "trust_domain: spiffe://a.org\ndata_dir: /d\n", "without spiffe://"},
		{"half etcd tls", "trust_domain: a.org\ndata_dir: /d\nstorage: {backend: etcd, etcd: {endpoints: [x], cert_file: c}}\n", "both or neither"},
		{"bad alg", "trust_domain: a.org\ndata_dir: /d\nkms: {classifications: {x: {algorithm: des, rotation_period: 1d}}}\n", "unknown algorithm"},
		{"no rotation", "trust_domain: a.org\ndata_dir: /d\nkms: {classifications: {x: {algorithm: aes-256-gcm}}}\n", "rotation_period is required"},
		{"short rotation", "trust_domain: a.org\ndata_dir: /d\nkms: {classifications: {x: {rotation_period: 10s}}}\n", "shorter than one minute"},
		{"bad log level", "trust_domain: a.org\ndata_dir: /d\nlog_level: loud\n", "log_level"},
		{"keyfile without path", "trust_domain: a.org\ndata_dir: /d\nseal: {type: keyfile}\n", "seal.key_file is required"},
		{"exported service", "trust_domain: a.org\ndata_dir: /d\nservices: {gateway: gw.a.org:15443, export: [{name: api, port: 8443, spiffe_id: spiffe://a.org/api}]}\n", ""},
		{"export of another domain", "trust_domain: a.org\ndata_dir: /d\nservices: {gateway: gw:1, export: [{name: api, port: 1, spiffe_id: spiffe://b.org/api}]}\n", "an identity of trust domain b.org"},
		{"export without gateway", "trust_domain: a.org\ndata_dir: /d\nservices: {export: [{name: api, port: 1, spiffe_id: spiffe://a.org/api}]}\n", "no gateway"},
		{"export without port", "trust_domain: a.org\ndata_dir: /d\nservices: {gateway: gw:1, export: [{name: api, spiffe_id: spiffe://a.org/api}]}\n", "give port"},
		{"export twice", "trust_domain: a.org\ndata_dir: /d\nservices: {gateway: gw:1, export: [{name: api, port: 1, spiffe_id: spiffe://a.org/api}, {name: api, port: 2, spiffe_id: spiffe://a.org/api}]}\n", "listed twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.yaml))
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.AdminSocket != "/d/admin.sock" || cfg.Storage.Bbolt.Path != "/d/ward.db" {
					t.Fatalf("defaults: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, c.wantErr)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "12h": 12 * time.Hour, "30d": 30 * 24 * time.Hour, "1.5d": 36 * time.Hour} {
		if got, err := yamlconf.ParseDuration(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "soon", "-1d", "-5s", "d"} {
		if _, err := yamlconf.ParseDuration(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("trust_domain: a.org\ndata_dir: /d\n"))
	f.Add([]byte("trust_domain: a.org\ndata_dir: /d\nkms: {classifications: {x: {rotation_period: 3d}}}\n"))
	f.Add([]byte("{{{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := Parse(b)
		if err == nil {
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that Validate rejects: %v", verr)
			}
		}
	})
}

// Bad paths and listen addresses are rejected at validation, naming the
// field, before the server creates anything (Parse touches no file).
func TestRejectsBadPathsAndAddresses(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"relative data_dir", "data_dir: ward-data\n", "data_dir \"ward-data\" is a relative path"},
		{"dot data_dir", "data_dir: ./d\n", "data_dir \"./d\" is a relative path"},
		{"relative admin_socket", "data_dir: /d\nadmin_socket: admin.sock\n", "admin_socket \"admin.sock\" is a relative path"},
		{"long admin_socket", "data_dir: /d\nadmin_socket: /" + strings.Repeat("x", 120) + "\n", "admin_socket"},
		{"relative bbolt path", "data_dir: /d\nstorage: {bbolt: {path: w.db}}\n", "storage.bbolt.path"},
		{"relative key file", "data_dir: /d\nseal: {type: keyfile, key_file: k}\n", "seal.key_file"},
		{"http no port", "data_dir: /d\nhttp_address: localhost\n", "http_address \"localhost\""},
		{"http port too big", "data_dir: /d\nhttp_address: 127.0.0.1:99999\n", "from 0 to 65535"},
		{"http named port", "data_dir: /d\nhttp_address: 127.0.0.1:http\n", "from 0 to 65535"},
		{"http negative port", "data_dir: /d\nhttp_address: 127.0.0.1:-1\n", "http_address"},
		{"http scheme", "data_dir: /d\nhttp_address: http://127.0.0.1:9090\n", "no scheme"},
		{"http bad host", "data_dir: /d\nhttp_address: 'bad host!:9090'\n", "neither an IP address nor a host name"},
		{"node api port", "data_dir: /d\nidentity: {node_api_address: '0.0.0.0:70000'}\n", "identity.node_api_address"},
		{"node api no port", "data_dir: /d\nidentity: {node_api_address: 0.0.0.0}\n", "identity.node_api_address"},
		{"same port", "data_dir: /d\nhttp_address: 127.0.0.1:8443\nidentity: {node_api_address: '0.0.0.0:8443'}\n", "same port"},
		{"bundle endpoint on node api port", "data_dir: /d\nidentity: {node_api_address: '127.0.0.1:8443'}\nfederation: {bundle_endpoint: {address: ':8443'}}\n", "identity.node_api_address 127.0.0.1:8443 and federation.bundle_endpoint.address :8443 use the same port"},
		{"bundle endpoint on http port", "data_dir: /d\nhttp_address: 127.0.0.1:9090\nfederation: {bundle_endpoint: {address: '127.0.0.1:9090'}}\n", "same port"},
		{"bundle endpoint bad port", "data_dir: /d\nfederation: {bundle_endpoint: {address: '127.0.0.1:99999'}}\n", "federation.bundle_endpoint.address"},
		{"bundle endpoint scheme", "data_dir: /d\nfederation: {bundle_endpoint: {address: 'https://127.0.0.1:8444'}}\n", "no scheme"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte("trust_domain: a.org\n" + c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
	for _, ok := range []string{"http_address: 127.0.0.1:0\n", "http_address: ':9090'\n", "http_address: '[::1]:9090'\n", "http_address: metrics.internal:9090\n",
		"http_address: 127.0.0.1:9090\nidentity: {node_api_address: '127.0.0.1:8443'}\n", "http_address: 127.0.0.1:0\nidentity: {node_api_address: '127.0.0.1:0'}\n"} {
		if _, err := Parse([]byte("trust_domain: a.org\ndata_dir: /d\n" + ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

func TestDashboardConfig(t *testing.T) {
	base := "trust_domain: example.org\ndata_dir: /var/lib/ward\n"
	c, err := Parse([]byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.Dashboard.Address != "" {
		t.Fatalf("the dashboard is on by default: %+v", c.Dashboard)
	}
	c, err = Parse([]byte(base + "dashboard:\n  address: 127.0.0.1:8300\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Dashboard.TokenFile != "/var/lib/ward/dashboard.token" || c.Dashboard.RefreshInterval == 0 {
		t.Fatalf("defaults: %+v", c.Dashboard)
	}
	for _, bad := range []string{
		"dashboard:\n  address: 0.0.0.0:8300\n",
		"dashboard:\n  address: :8300\n",
		"dashboard:\n  address: 10.1.2.3:8300\n",
		"dashboard:\n  address: example.org:8300\n",
		"dashboard:\n  address: 127.0.0.1\n",
		"dashboard:\n  address: 127.0.0.1:8300\n  token_file: relative/token\n",
		"dashboard:\n  address: 127.0.0.1:8300\n  refresh_interval: 1ms\n",
		"http_address: 127.0.0.1:8300\ndashboard:\n  address: 127.0.0.1:8300\n",
	} {
		if _, err := Parse([]byte(base + bad)); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
	for _, good := range []string{"[::1]:8300", "localhost:8300", "127.0.0.2:0"} {
		if _, err := Parse([]byte(base + "dashboard:\n  address: \"" + good + "\"\n")); err != nil {
			t.Errorf("%s: %v", good, err)
		}
	}
}

// TestNetworkOverlayCIDRs: network.overlay_cidrs parses into the
// registry's ranges; a bad or all-covering prefix is refused.
func TestNetworkOverlayCIDRs(t *testing.T) {
	base := "trust_domain: a.org\ndata_dir: /tmp/x\n"
	c, err := Parse([]byte(base + "network:\n  overlay_cidrs: [10.250.0.0/16, fd00:77::1/48]\n  advertised_endpoints: true\n  endpoint_cidrs: [192.168.10.0/24]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Network.Overlay(); len(got) != 2 || got[1].String() != "fd00:77::/48" || !c.Network.AdvertisedEndpoints {
		t.Fatalf("network %+v: overlay %v", c.Network, got)
	}
	for _, bad := range []string{"[10.250.0.0]", "[0.0.0.0/0]", "[\"::/0\"]"} {
		if _, err := Parse([]byte(base + "network:\n  overlay_cidrs: " + bad + "\n")); err == nil || !strings.Contains(err.Error(), "network.overlay_cidrs") {
			t.Errorf("overlay_cidrs %s: %v", bad, err)
		}
	}
	if got := c.Network.Endpoints(); len(got) != 1 || got[0].String() != "192.168.10.0/24" {
		t.Fatalf("endpoint_cidrs %v", got)
	}
	// Safe by default: advertised endpoints need endpoint_cidrs, and any
	// network setting needs overlay_cidrs (the errors name what to set).
	for yaml, want := range map[string]string{
		"network:\n  overlay_cidrs: [10.250.0.0/16]\n  advertised_endpoints: true\n":   "needs network.endpoint_cidrs",
		"network:\n  advertised_endpoints: true\n  endpoint_cidrs: [192.168.0.0/16]\n": "needs network.overlay_cidrs",
		"network:\n  overlay_cidrs: [10.250.0.0/16]\n  endpoint_cidrs: [0.0.0.0/0]\n":  "network.endpoint_cidrs",
		"network:\n  overlay_cidrs: [10.250.0.0/16]\n  endpoint_cidrs: [host]\n":       "network.endpoint_cidrs",
	} {
		if _, err := Parse([]byte(base + yaml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", yaml, err, want)
		}
	}
}

// TestOverlayCIDRsRefuseSpecialRanges: an overlay that would make every
// node route real traffic into its tunnel (most of the address space,
// loopback, link-local, multicast, the nodes' own network, the
// authority's own address) is refused with an error naming the value,
// what it overlaps and what to do.
func TestOverlayCIDRsRefuseSpecialRanges(t *testing.T) {
	base := "trust_domain: a.org\ndata_dir: /tmp/x\n"
	for yaml, want := range map[string]string{
		"network:\n  overlay_cidrs: [0.0.0.0/1]\n":                                                `"0.0.0.0/1" refused: 0.0.0.0/1 is wider than /8`,
		"network:\n  overlay_cidrs: [10.250.0.0/16, 128.0.0.0/2]\n":                               `"128.0.0.0/2" refused`,
		"network:\n  overlay_cidrs: [\"fc00::/7\"]\n":                                             "wider than /16",
		"network:\n  overlay_cidrs: [127.0.0.0/16]\n":                                             "overlaps loopback",
		"network:\n  overlay_cidrs: [169.254.0.0/16]\n":                                           "overlaps link-local",
		"network:\n  overlay_cidrs: [232.0.0.0/8]\n":                                              "overlaps multicast",
		"network:\n  overlay_cidrs: [\"fe80::/64\"]\n":                                            "overlaps link-local",
		"network:\n  overlay_cidrs: [10.0.0.0/8]\n  endpoint_cidrs: [10.1.0.0/16]\n":              "overlaps network.endpoint_cidrs 10.1.0.0/16",
		"network:\n  overlay_cidrs: [10.0.0.0/8]\nidentity:\n  node_api_address: 10.3.0.1:8443\n": "contains 10.3.0.1:8443 (identity.node_api_address)",
	} {
		_, err := Parse([]byte(base + yaml))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "network.overlay_cidrs") {
			t.Errorf("%q: %v, want an error naming network.overlay_cidrs and %q", yaml, err, want)
		}
	}
	for _, ok := range []string{
		"network:\n  overlay_cidrs: [10.0.0.0/8, \"fd00:77::/48\"]\n  endpoint_cidrs: [192.168.10.0/24]\nidentity:\n  node_api_address: 0.0.0.0:8443\n",
		"network:\n  overlay_cidrs: [100.64.0.0/10]\nidentity:\n  node_api_address: 192.168.10.5:8443\n",
	} {
		if _, err := Parse([]byte(base + ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

// TestOverlayCIDRsMustBePrivate: an overlay range in public space is
// refused, naming the range and network.allow_public_overlay_cidrs,
// unless that setting covers it; the setting itself is checked.
func TestOverlayCIDRsMustBePrivate(t *testing.T) {
	base := "trust_domain: a.org\ndata_dir: /tmp/x\nnetwork:\n"
	for _, c := range []struct {
		name, yaml, wantErr string
	}{
		{"rfc1918", "  overlay_cidrs: [10.250.0.0/16, 172.20.0.0/16, 192.168.100.0/24]\n", ""},
		{"shared space", "  overlay_cidrs: [100.64.0.0/10]\n", ""},
		{"benchmarking", "  overlay_cidrs: [198.18.0.0/16]\n", ""},
		{"ula", "  overlay_cidrs: [\"fd00:77::/48\"]\n", ""},
		{"public v4", "  overlay_cidrs: [8.8.8.0/24]\n", `"8.8.8.0/24" refused: 8.8.8.0/24 is public address space`},
		{"public beside private", "  overlay_cidrs: [10.250.0.0/16, 172.32.0.0/16]\n", `"172.32.0.0/16" refused`},
		{"mostly public around private", "  overlay_cidrs: [172.0.0.0/8]\n", `"172.0.0.0/8" refused`},
		{"public v6", "  overlay_cidrs: [\"2001:4860::/32\"]\n", "2001:4860::/32 is public address space"},
		{"public opted in", "  overlay_cidrs: [203.0.113.0/24]\n  allow_public_overlay_cidrs: [203.0.113.0/24]\n", ""},
		{"public inside an opt-in", "  overlay_cidrs: [203.0.113.0/25]\n  allow_public_overlay_cidrs: [203.0.113.0/24]\n", ""},
		{"public wider than its opt-in", "  overlay_cidrs: [203.0.112.0/23]\n  allow_public_overlay_cidrs: [203.0.113.0/24]\n", `"203.0.112.0/23" refused`},
		{"another public range than opted in", "  overlay_cidrs: [8.8.8.0/24]\n  allow_public_overlay_cidrs: [203.0.113.0/24]\n", `"8.8.8.0/24" refused`},
		{"opt-in not a prefix", "  overlay_cidrs: [10.250.0.0/16]\n  allow_public_overlay_cidrs: [8.8.8.8]\n", "network.allow_public_overlay_cidrs: \"8.8.8.8\" is not a CIDR prefix"},
		{"opt-in of everything", "  overlay_cidrs: [10.250.0.0/16]\n  allow_public_overlay_cidrs: [0.0.0.0/0]\n", "network.allow_public_overlay_cidrs: 0.0.0.0/0 is every address"},
		{"opt-in too wide", "  overlay_cidrs: [10.250.0.0/16]\n  allow_public_overlay_cidrs: [0.0.0.0/1]\n", "network.allow_public_overlay_cidrs: \"0.0.0.0/1\" refused"},
		{"opt-in of loopback", "  overlay_cidrs: [10.250.0.0/16]\n  allow_public_overlay_cidrs: [127.0.0.0/8]\n", "overlaps loopback"},
		{"opt-in without overlay", "  allow_public_overlay_cidrs: [203.0.113.0/24]\n", "network.overlay_cidrs is not"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(base + c.yaml))
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err %v, want %q", err, c.wantErr)
			}
			if strings.Contains(c.wantErr, "public address space") && !strings.Contains(err.Error(), "network.allow_public_overlay_cidrs") {
				t.Fatalf("the error does not name the opt-in setting: %v", err)
			}
		})
	}
}

// TestNetworkDocPublicOptIn: the allow_public_overlay_cidrs example of
// docs/network.md is a valid authority network section.
func TestNetworkDocPublicOptIn(t *testing.T) {
	block := docYAMLAfter(t, "network.md", "**Private address space only, unless you opt in.**")
	if !strings.HasPrefix(block, "# ward.yaml") {
		t.Fatalf("the first block is not the authority's: %q", block)
	}
	c, err := Parse([]byte("trust_domain: a.org\ndata_dir: /tmp/x\n" + block))
	if err != nil || len(c.Network.AllowPublic()) != 1 {
		t.Fatalf("docs/network.md's example: %v", err)
	}
	// Without the opt-in the same overlay is refused.
	if _, err := Parse([]byte("trust_domain: a.org\ndata_dir: /tmp/x\nnetwork:\n  overlay_cidrs: [10.250.0.0/16, 203.0.113.0/24]\n")); err == nil {
		t.Fatal("a public overlay range without allow_public_overlay_cidrs was accepted")
	}
}

// docYAMLAfter returns the first ```yaml block after marker in docs/name.
func docYAMLAfter(t *testing.T, name, marker string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), marker)
	_, block, ok2 := strings.Cut(sec, "```yaml\n")
	block, _, ok3 := strings.Cut(block, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatalf("docs/%s lacks a yaml block after %q", name, marker)
	}
	return block
}
