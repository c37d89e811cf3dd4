// Package wgnet is the node's WireGuard interface (docs/network.md): a
// userspace wireguard-go device on a TUN interface (these kernels have no
// WireGuard module), configured with the peers the authority lists, the
// routes to their subnets and, in strict mode, routes and rules that drop
// rather than send in clear what should cross a tunnel. It knows nothing of
// the authority: the agent feeds it keys and peers.
package wgnet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wardproject/ward/internal/shared/netrange"
)

// Key is a Curve25519 key (private or public).
type Key [32]byte

// NewPrivateKey returns a fresh private key (crypto/ecdh, X25519).
func NewPrivateKey() (Key, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, err
	}
	var out Key
	copy(out[:], k.Bytes())
	return out, nil
}

// Public returns the public key of private key k.
func (k Key) Public() Key {
	pk, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		return Key{} // cannot happen: every 32-byte string is an X25519 key
	}
	var out Key
	copy(out[:], pk.PublicKey().Bytes())
	return out
}

func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// KeyFrom copies a 32-byte key.
func KeyFrom(b []byte) (Key, bool) {
	var k Key
	if len(b) != len(k) {
		return k, false
	}
	copy(k[:], b)
	return k, true
}

// Config describes the interface.
type Config struct {
	// Interface is the TUN interface's name (at most 15 bytes).
	Interface  string
	ListenPort int
	MTU        int // default 1420
	// Address is the node's overlay address (set on the interface as /32).
	Address netip.Addr
	// Own are the prefixes this node routes (its address and subnets);
	// with Strict, traffic to them is accepted only from the tunnel.
	Own []netip.Prefix
	// Strict: StrictCIDRs are routed to the interface (so nothing to them
	// leaves in clear: without a peer whose allowed IPs cover the
	// destination the device drops it), with a blackhole route below it
	// that stays when the interface is gone (the agent stopped); and
	// traffic to Own arriving on any other interface is dropped.
	Strict      bool
	StrictCIDRs []netip.Prefix
	Log         *slog.Logger
}

// Peer is one other node.
type Peer struct {
	ID        string // the agent's SPIFFE ID
	PublicKey Key
	// NextKey, when set, is accepted for handshakes before it becomes
	// current (a rotation in progress); it routes nothing yet.
	NextKey    *Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

// Device is the running interface.
type Device struct {
	cfg  Config
	log  *slog.Logger
	tun  tun.Device
	dev  *device.Device
	bind *nsBind

	mu      sync.Mutex
	public  Key
	peers   map[Key]wgPeer // as configured on the device
	routes  map[netip.Prefix]bool
	handsMu sync.Mutex
	hands   map[Key]time.Time // last handshake seen per key (for Handshakes)
	nHands  uint64
}

// wgPeer is a peer entry as configured on the device.
type wgPeer struct {
	id       string
	endpoint netip.AddrPort
	allowed  []netip.Prefix
}

// Open creates the TUN interface, starts WireGuard on it with key and
// sets its address, routes and (strict) rules.
func Open(cfg Config, key Key) (*Device, error) {
	if cfg.MTU == 0 {
		cfg.MTU = 1420
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := &Device{cfg: cfg, log: cfg.Log, peers: map[Key]wgPeer{}, routes: map[netip.Prefix]bool{}, hands: map[Key]time.Time{}}
	t, err := tun.CreateTUN(cfg.Interface, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("network: creating TUN interface %s: %w (needs CAP_NET_ADMIN and /dev/net/tun)", cfg.Interface, err)
	}
	d.tun = t
	logger := &device.Logger{
		Verbosef: func(string, ...any) {},
		Errorf:   func(f string, args ...any) { d.log.Warn("wireguard: " + fmt.Sprintf(f, args...)) },
	}
	bind, err := newNSBind()
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("network: %w", err)
	}
	d.bind = bind
	d.dev = device.NewDevice(t, bind, logger)
	fail := func(err error) (*Device, error) { d.dev.Close(); d.bind.ns.Close(); return nil, err }
	if err := d.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", key.hex(), cfg.ListenPort)); err != nil {
		return fail(fmt.Errorf("network: configuring %s: %w", cfg.Interface, err))
	}
	d.public = key.Public()
	if err := d.dev.Up(); err != nil {
		return fail(fmt.Errorf("network: starting WireGuard on %s: %w", cfg.Interface, err))
	}
	for _, args := range [][]string{
		{"addr", "replace", cfg.Address.String() + "/32", "dev", cfg.Interface},
		{"link", "set", cfg.Interface, "up"},
	} {
		if err := ip(args...); err != nil {
			return fail(err)
		}
	}
	if cfg.Strict {
		if err := d.strict(); err != nil {
			return fail(err)
		}
	}
	return d, nil
}

// Rule preferences of strict mode: before the local table, moved to
// localPref (as other network agents do).
const (
	prefLoopback = 90
	prefTunnel   = 91
	prefDrop     = 92
	localPref    = 100
	blackholeMet = 4096
)

func (d *Device) strict() error {
	dev := d.cfg.Interface
	for _, p := range d.cfg.StrictCIDRs {
		if err := ip("route", "replace", p.String(), "dev", dev, "src", d.cfg.Address.String()); err != nil {
			return err
		}
		if err := ip("route", "replace", "blackhole", p.String(), "metric", strconv.Itoa(blackholeMet)); err != nil {
			return err
		}
	}
	// Inbound: the local table is consulted after our rules, so traffic
	// to Own is delivered only from loopback or the tunnel (per address
	// family: IPv4 and IPv6 have their own rules).
	for _, fam := range []string{"-4", "-6"} {
		var own []netip.Prefix
		for _, p := range d.cfg.Own {
			if p.Addr().Is4() == (fam == "-4") {
				own = append(own, p)
			}
		}
		if len(own) == 0 {
			continue
		}
		out, err := ipOut(fam, "rule", "show", "pref", strconv.Itoa(localPref))
		if err != nil {
			return err
		}
		if !strings.Contains(out, "lookup local") {
			if err := ip(fam, "rule", "add", "pref", strconv.Itoa(localPref), "lookup", "local"); err != nil {
				return err
			}
		}
		if out, _ := ipOut(fam, "rule", "show", "pref", "0"); strings.Contains(out, "lookup local") {
			if err := ip(fam, "rule", "del", "pref", "0", "lookup", "local"); err != nil {
				return err
			}
		}
		for _, pref := range []int{prefLoopback, prefTunnel, prefDrop} {
			for range 256 {
				if ip(fam, "rule", "del", "pref", strconv.Itoa(pref)) != nil {
					break
				}
			}
		}
		for _, p := range own {
			for _, args := range [][]string{
				{fam, "rule", "add", "pref", strconv.Itoa(prefLoopback), "to", p.String(), "iif", "lo", "lookup", "local"},
				{fam, "rule", "add", "pref", strconv.Itoa(prefTunnel), "to", p.String(), "iif", dev, "lookup", "local"},
				{fam, "rule", "add", "pref", strconv.Itoa(prefDrop), "to", p.String(), "blackhole"},
			} {
				if err := ip(args...); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// PublicKey is the device's current public key.
func (d *Device) PublicKey() Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.public
}

// SetPrivateKey switches the device to key (a rotation). Sessions in
// progress still receive; new ones are made with key at once.
func (d *Device) SetPrivateKey(key Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.dev.IpcSet("private_key=" + key.hex() + "\n"); err != nil {
		return fmt.Errorf("network: setting the new private key: %w", err)
	}
	d.public = key.Public()
	return nil
}

// routable splits a peer's prefixes into those the device may route into
// the tunnel and the reasons the others may not (netrange.CheckOverlay:
// loopback, link-local, multicast, most of the address space): whatever
// the authority sends, a node never routes such traffic to a peer.
func routable(prefixes []netip.Prefix) (ok []netip.Prefix, dropped []string) {
	for _, p := range prefixes {
		if err := netrange.CheckOverlay(p); err != nil {
			dropped = append(dropped, err.Error())
			continue
		}
		ok = append(ok, p)
	}
	return ok, dropped
}

// SetPeers makes the device's peers exactly peers (the node itself is
// left out by the caller): new and changed ones are configured, gone ones
// removed (their sessions with them), and the routes to their prefixes
// follow. Only what changed is touched.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[Key]wgPeer{}
	for _, p := range peers {
		if p.PublicKey == d.public {
			continue
		}
		allowed, dropped := routable(p.AllowedIPs)
		for _, r := range dropped {
			d.log.Warn("network: a peer's prefix is not routed: it is no overlay range (the authority should have refused it)", "peer", p.ID, "reason", r)
		}
		slices.SortFunc(allowed, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
		want[p.PublicKey] = wgPeer{id: p.ID, endpoint: p.Endpoint, allowed: allowed}
		if p.NextKey != nil && *p.NextKey != p.PublicKey && *p.NextKey != d.public {
			if _, dup := want[*p.NextKey]; !dup {
				want[*p.NextKey] = wgPeer{id: p.ID, endpoint: p.Endpoint}
			}
		}
	}
	var b strings.Builder
	// Removals and peers losing prefixes first, so that a prefix moving
	// to another key (a rotation) is never held by two.
	for k := range d.peers {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
		}
	}
	keys := make([]Key, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y Key) int { return len(want[x].allowed) - len(want[y].allowed) })
	for _, k := range keys {
		w := want[k]
		if cur, ok := d.peers[k]; ok && cur.endpoint == w.endpoint && slices.Equal(cur.allowed, w.allowed) {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\n", k.hex())
		if w.endpoint.IsValid() {
			fmt.Fprintf(&b, "endpoint=%s\n", w.endpoint)
		}
		b.WriteString("replace_allowed_ips=true\n")
		for _, p := range w.allowed {
			fmt.Fprintf(&b, "allowed_ip=%s\n", p)
		}
	}
	if b.Len() > 0 {
		if err := d.dev.IpcSet(b.String()); err != nil {
			// Part may be applied: the next list removes every key that
			// may be on the device and sets every wanted one again.
			for k := range want {
				d.peers[k] = wgPeer{id: "(unknown)"}
			}
			return fmt.Errorf("network: configuring peers: %w", err)
		}
	}
	d.peers = want
	// Routes: every peer prefix through the interface.
	routes := map[netip.Prefix]bool{}
	for _, w := range want {
		for _, p := range w.allowed {
			routes[p] = true
		}
	}
	var errsOut []error
	for p := range routes {
		if !d.routes[p] {
			if err := ip("route", "replace", p.String(), "dev", d.cfg.Interface, "src", d.cfg.Address.String()); err != nil {
				errsOut = append(errsOut, err)
				delete(routes, p)
			}
		}
	}
	for p := range d.routes {
		if !routes[p] && !slices.Contains(d.cfg.StrictCIDRs, p) {
			_ = ip("route", "del", p.String(), "dev", d.cfg.Interface)
		}
	}
	d.routes = routes
	return errors.Join(errsOut...)
}

// PeerStats is one configured peer as the device reports it.
type PeerStats struct {
	ID            string    `json:"agent_id"`
	PublicKey     []byte    `json:"public_key"`
	Endpoint      string    `json:"endpoint"`
	AllowedIPs    []string  `json:"allowed_ips"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
}

// Stats reads the device's peers (sorted by agent ID, then key).
func (d *Device) Stats() ([]PeerStats, error) {
	d.mu.Lock()
	ids := make(map[Key]wgPeer, len(d.peers))
	for k, v := range d.peers {
		ids[k] = v
	}
	d.mu.Unlock()
	raw, err := d.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	var out []PeerStats
	var cur *PeerStats
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			out = append(out, *cur)
		}
		cur, sec, nsec = nil, 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(raw))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "public_key":
			flush()
			kb, _ := hex.DecodeString(v)
			key, _ := KeyFrom(kb)
			cur = &PeerStats{PublicKey: key[:], ID: ids[key].id}
			for _, p := range ids[key].allowed {
				cur.AllowedIPs = append(cur.AllowedIPs, p.String())
			}
		case "endpoint":
			if cur != nil {
				cur.Endpoint = v
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.RxBytes, _ = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.TxBytes, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	flush()
	slices.SortFunc(out, func(a, b PeerStats) int {
		if c := strings.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return bytes.Compare(a.PublicKey, b.PublicKey)
	})
	// Count handshakes: each change of a peer's last handshake time.
	d.handsMu.Lock()
	for _, p := range out {
		k, _ := KeyFrom(p.PublicKey)
		if !p.LastHandshake.IsZero() && !p.LastHandshake.Equal(d.hands[k]) {
			d.hands[k] = p.LastHandshake
			d.nHands++
		}
	}
	d.handsMu.Unlock()
	return out, nil
}

// Handshakes counts the handshakes Stats has seen complete (a handshake
// between two reads of the same peer counts once).
func (d *Device) Handshakes() uint64 {
	d.handsMu.Lock()
	defer d.handsMu.Unlock()
	return d.nHands
}

// Close stops WireGuard and removes the interface (its routes go with
// it; strict mode's blackhole routes and rules stay: nothing leaves in
// clear while the agent is down).
func (d *Device) Close() {
	d.dev.Close()
	d.bind.ns.Close()
}

func ip(args ...string) error {
	_, err := ipOut(args...)
	return err
}

func ipOut(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("network: ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
