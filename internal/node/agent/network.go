package agent

import (
	"context"
	"crypto/fips140"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/node/wgnet"
	"github.com/wardproject/ward/internal/shared/atomicfile"
	"github.com/wardproject/ward/internal/shared/netrange"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// NetworkConfig is agent.yaml's network section: node-to-node encryption
// with WireGuard, keys distributed by the authority (docs/network.md).
type NetworkConfig struct {
	// Interface is the WireGuard (TUN) interface's name (default ward0).
	Interface string `yaml:"interface"`
	// ListenPort is the WireGuard UDP port (default 51820).
	ListenPort int `yaml:"listen_port"`
	// Address is this node's address in the overlay (an IP, routed to the
	// node as a /32 or /128).
	Address string `yaml:"address"`
	// Subnets this node routes for its workloads (pod subnets), announced
	// to the peers with the address.
	Subnets []string `yaml:"subnets"`
	// Endpoint is host:port where peers reach this node's UDP port
	// (default: the address the authority sees the agent call from, with
	// listen_port).
	Endpoint string `yaml:"endpoint"`
	// Strict: traffic to strict_cidrs never leaves in clear (routed into
	// the tunnel, dropped where no peer covers it, a blackhole route kept
	// when the interface is gone), and traffic to this node's address and
	// subnets is accepted only from the tunnel.
	Strict      bool     `yaml:"strict"`
	StrictCIDRs []string `yaml:"strict_cidrs"`
	// RotationPeriod is how long a key pair is used (default 24h, at
	// least 10s); RotationOverlap is how long the next key is announced
	// before it is used (default 2s).
	RotationPeriod  yamlconf.Duration `yaml:"rotation_period"`
	RotationOverlap yamlconf.Duration `yaml:"rotation_overlap"`
	// MTU of the interface (default 1420).
	MTU int `yaml:"mtu"`
	// Federated names federated trust domains whose nodes are peers too
	// (their authority must share the network with this one: the
	// relationship's network: true on both sides).
	Federated []string `yaml:"federated"`
	// AllowPublicOverlayCIDRs are public ranges (outside RFC 1918,
	// 100.64.0.0/10, 198.18.0.0/15 and fc00::/7) this node may route into
	// its tunnel: the same opt-in as the authority's
	// network.allow_public_overlay_cidrs, list the same ranges. Without it
	// a peer prefix in public space is never routed, whatever the authority
	// or a federated peer sends, and this node's own address, subnets and
	// strict_cidrs must be private.
	AllowPublicOverlayCIDRs []string `yaml:"allow_public_overlay_cidrs"`

	addr        netip.Addr
	allowPublic []netip.Prefix
	own         []netip.Prefix
	strictCIDRs []netip.Prefix
}

func (n *NetworkConfig) validate() error {
	if fips140.Enabled() {
		return errors.New("WireGuard's algorithms (Curve25519, ChaCha20-Poly1305, BLAKE2s) are not FIPS 140-3 approved, and this agent runs in FIPS mode (GODEBUG=fips140): remove the network section and encrypt between nodes with the mTLS proxies (docs/network.md)")
	}
	if n.Interface == "" {
		n.Interface = "ward0"
	}
	if len(n.Interface) > 15 {
		return fmt.Errorf("interface %q is longer than 15 bytes", n.Interface)
	}
	if n.ListenPort == 0 {
		n.ListenPort = 51820
	}
	if n.ListenPort < 1 || n.ListenPort > 65535 {
		return fmt.Errorf("listen_port %d: use 1-65535", n.ListenPort)
	}
	if n.MTU == 0 {
		n.MTU = 1420
	}
	if n.MTU < 1280 || n.MTU > 9000 {
		return fmt.Errorf("mtu %d: use 1280-9000", n.MTU)
	}
	a, err := netip.ParseAddr(n.Address)
	if err != nil {
		return fmt.Errorf("address %q is required and must be an IP address (this node's address in the overlay, e.g. 10.250.1.1): %v", n.Address, err)
	}
	n.addr = a
	for _, s := range n.AllowPublicOverlayCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("allow_public_overlay_cidrs: %q is not a CIDR prefix (e.g. 203.0.113.0/24): %v", s, err)
		}
		if err := netrange.CheckOverlay(p); err != nil {
			return fmt.Errorf("allow_public_overlay_cidrs: %q refused: %v", s, err)
		}
		n.allowPublic = append(n.allowPublic, p.Masked())
	}
	if err := netrange.CheckPrivate(netip.PrefixFrom(a, a.BitLen()), n.allowPublic); err != nil {
		return fmt.Errorf("address %s: %v", a, err)
	}
	n.own = []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
	for _, s := range n.Subnets {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("subnets: %q is not a CIDR prefix: %v", s, err)
		}
		if p.Bits() == 0 {
			return fmt.Errorf("subnets: %s is everything; name this node's own subnets", s)
		}
		if err := netrange.CheckPrivate(p, n.allowPublic); err != nil {
			return fmt.Errorf("subnets: %q: %v", s, err)
		}
		n.own = append(n.own, p.Masked())
	}
	if n.Endpoint != "" {
		if _, err := netip.ParseAddrPort(n.Endpoint); err != nil {
			return fmt.Errorf("endpoint %q: use ip:port: %v", n.Endpoint, err)
		}
	}
	for _, s := range n.StrictCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("strict_cidrs: %q is not a CIDR prefix: %v", s, err)
		}
		if p.Bits() == 0 {
			return fmt.Errorf("strict_cidrs: %s would send everything, the authority included, into the tunnel", s)
		}
		if err := netrange.CheckPrivate(p, n.allowPublic); err != nil {
			return fmt.Errorf("strict_cidrs: %q: %v", s, err)
		}
		n.strictCIDRs = append(n.strictCIDRs, p.Masked())
	}
	if n.Strict && len(n.strictCIDRs) == 0 {
		return errors.New("strict needs strict_cidrs: the overlay ranges that must never leave in clear (e.g. [10.250.0.0/16])")
	}
	if !n.Strict && len(n.strictCIDRs) > 0 {
		return errors.New("strict_cidrs is set but strict is false: set strict: true, or remove strict_cidrs")
	}
	for _, f := range n.Federated {
		if _, err := spiffeid.TrustDomainFromString(f); err != nil {
			return fmt.Errorf("federated: %q is not a trust domain name: %v", f, err)
		}
	}
	if n.RotationPeriod == 0 {
		n.RotationPeriod = yamlconf.Duration(24 * time.Hour)
	}
	if n.RotationOverlap == 0 {
		n.RotationOverlap = yamlconf.Duration(2 * time.Second)
	}
	if time.Duration(n.RotationPeriod) < 10*time.Second {
		return fmt.Errorf("rotation_period %s: at least 10s", time.Duration(n.RotationPeriod))
	}
	if o := time.Duration(n.RotationOverlap); o < 100*time.Millisecond || o > time.Duration(n.RotationPeriod)/2 {
		return fmt.Errorf("rotation_overlap %s: between 100ms and half of rotation_period", o)
	}
	return nil
}

// The key pair lives in data_dir/wireguard.bin, sealed like the cache
// (cache.key, AES-256-GCM): the private key never leaves the node.
const wgKeyFile = "wireguard.bin"

type wgKeys struct {
	Current []byte    `json:"current"`
	Next    []byte    `json:"next,omitempty"`
	Created time.Time `json:"created"` // when Current became current
	// Announced is when Next was registered (a rotation in progress).
	Announced time.Time `json:"announced,omitzero"`
}

func (a *Agent) loadWGKeys() (*wgKeys, error) {
	b, err := os.ReadFile(filepath.Join(a.cache.dir, wgKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		k, err := wgnet.NewPrivateKey()
		if err != nil {
			return nil, err
		}
		ks := &wgKeys{Current: k[:], Created: a.now()}
		return ks, a.saveWGKeys(ks)
	}
	if err != nil {
		return nil, err
	}
	pt, err := a.cache.open(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (remove it: the node gets a new key)", wgKeyFile, err)
	}
	var ks wgKeys
	if err := json.Unmarshal(pt, &ks); err != nil || len(ks.Current) != 32 || len(ks.Next) != 0 && len(ks.Next) != 32 {
		return nil, fmt.Errorf("%s: unreadable (remove it: the node gets a new key)", wgKeyFile)
	}
	return &ks, nil
}

func (a *Agent) saveWGKeys(ks *wgKeys) error {
	b, err := json.Marshal(ks)
	if err != nil {
		return err
	}
	sealed, err := a.cache.seal(b)
	clear(b)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(a.cache.dir, wgKeyFile), sealed, 0o600)
}

// netState is the network's state for /status and /metrics.
type netState struct {
	mu         sync.Mutex
	dev        *wgnet.Device
	registered bool
	peers      int
	lastErr    string
	rotatedAt  time.Time
	nextRotate time.Time
	rotations  uint64
	// authority is the Node API's address as this agent's peer-list
	// stream reached it (server_address may be a name): no peer's prefix
	// may cover it.
	authority netip.Addr
}

// NetworkStatus is the network section of /status: the tunnel table.
type NetworkStatus struct {
	Interface    string    `json:"interface"`
	Address      string    `json:"address"`
	PublicKey    []byte    `json:"public_key,omitempty"`
	Strict       bool      `json:"strict"`
	Registered   bool      `json:"registered"`
	KeyCreated   time.Time `json:"key_created,omitzero"`
	NextRotation time.Time `json:"next_rotation,omitzero"`
	Rotations    uint64    `json:"rotations"`
	Handshakes   uint64    `json:"handshakes"`
	LastError    string    `json:"last_error,omitempty"`
	Peers        []Tunnel  `json:"peers"`
}

// Tunnel is one row of the tunnel table.
type Tunnel struct {
	wgnet.PeerStats
	// HandshakeAgeSeconds is -1 before the first handshake.
	HandshakeAgeSeconds float64 `json:"handshake_age_seconds"`
}

func (a *Agent) networkStatus() *NetworkStatus {
	n := a.cfg.Network
	if n == nil {
		return nil
	}
	ns := &a.net
	ns.mu.Lock()
	st := &NetworkStatus{Interface: n.Interface, Address: n.Address, Strict: n.Strict, Registered: ns.registered, LastError: ns.lastErr,
		KeyCreated: ns.rotatedAt, NextRotation: ns.nextRotate, Rotations: ns.rotations, Peers: []Tunnel{}}
	dev := ns.dev
	ns.mu.Unlock()
	if dev == nil {
		return st
	}
	pk := dev.PublicKey()
	st.PublicKey = pk[:]
	stats, err := dev.Stats()
	if err != nil {
		st.LastError = err.Error()
	}
	now := a.now()
	for _, p := range stats {
		age := -1.0
		if !p.LastHandshake.IsZero() {
			age = now.Sub(p.LastHandshake).Seconds()
		}
		st.Peers = append(st.Peers, Tunnel{PeerStats: p, HandshakeAgeSeconds: age})
	}
	st.Handshakes = dev.Handshakes()
	return st
}

func (ns *netState) setErr(err error) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if err == nil {
		ns.lastErr = ""
	} else {
		ns.lastErr = err.Error()
	}
}

// runNetwork waits for an agent SVID, brings the WireGuard interface up
// and keeps it configured with the authority's peer list until ctx ends.
func (a *Agent) runNetwork(ctx context.Context) {
	n := a.cfg.Network
	for a.agentSVID.Load() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
	ks, err := a.loadWGKeys()
	if err != nil {
		a.log.Error("network: the WireGuard key is unusable; node encryption is off", "err", err)
		a.net.setErr(err)
		return
	}
	cur, _ := wgnet.KeyFrom(ks.Current)
	var dev *wgnet.Device
	for {
		dev, err = wgnet.Open(wgnet.Config{Interface: n.Interface, ListenPort: n.ListenPort, MTU: n.MTU, Address: n.addr,
			Own: n.own, Strict: n.Strict, StrictCIDRs: n.strictCIDRs, Log: a.log}, cur)
		if err == nil {
			break
		}
		a.log.Error("network: the WireGuard interface could not start; retrying in 10s (no tunnel to any peer until then)", "err", err)
		a.net.setErr(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
	defer dev.Close()
	a.net.mu.Lock()
	a.net.dev, a.net.rotatedAt = dev, ks.Created
	a.net.mu.Unlock()
	defer func() { a.net.mu.Lock(); a.net.dev = nil; a.net.mu.Unlock() }()
	a.log.Info("network: WireGuard up", "interface", n.Interface, "address", n.Address, "listen_port", n.ListenPort, "strict", n.Strict)
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		start := a.now()
		err := a.netSession(ctx, dev, ks)
		if ctx.Err() != nil {
			return
		}
		a.net.setErr(err)
		if status.Code(err) == codes.PermissionDenied {
			// Evicted or replaced: this node is no one's peer any more.
			_ = dev.SetPeers(nil)
			a.log.Error("network: the authority refused this agent; tunnels removed", "err", err)
		} else if status.Code(err) == codes.FailedPrecondition {
			// The authority's network is off (no network.overlay_cidrs):
			// nothing changes until its operator turns it on.
			a.log.Error("network: the authority does not run the WireGuard network; set network.overlay_cidrs in its server config (docs/network.md)", "err", err)
			backoff = 5 * time.Second
		} else {
			a.log.Warn("network: peer list interrupted; reconnecting", "err", err)
		}
		if a.now().Sub(start) > 10*time.Second {
			backoff = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// register sends the node's tunnel: its current key (and the next one
// during a rotation), endpoint and prefixes.
func (a *Agent) register(ctx context.Context, cl wardv1.NodeNetworkClient, ks *wgKeys) error {
	n := a.cfg.Network
	cur, _ := wgnet.KeyFrom(ks.Current)
	pub := cur.Public()
	req := &wardv1.RegisterTunnelRequest{PublicKey: pub[:], Endpoint: n.Endpoint, ListenPort: uint32(n.ListenPort)}
	if len(ks.Next) == 32 {
		nk, _ := wgnet.KeyFrom(ks.Next)
		np := nk.Public()
		req.NextPublicKey = np[:]
	}
	for _, p := range n.own {
		req.AllowedIps = append(req.AllowedIps, p.String())
	}
	rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	_, err := cl.RegisterTunnel(rctx, req)
	a.net.mu.Lock()
	a.net.registered = err == nil
	a.net.mu.Unlock()
	return err
}

// netSession registers, then follows the peer list and rotates the key
// when due, until the stream ends.
func (a *Agent) netSession(ctx context.Context, dev *wgnet.Device, ks *wgKeys) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cl := wardv1.NewNodeNetworkClient(agentConn{a})
	if err := a.register(ctx, cl, ks); err != nil {
		return fmt.Errorf("registering the tunnel: %w", err)
	}
	stream, err := cl.WatchPeers(ctx, &wardv1.WatchPeersRequest{Federated: a.cfg.Network.Federated})
	if err != nil {
		return err
	}
	if p, ok := peer.FromContext(stream.Context()); ok && p.Addr != nil {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			a.net.mu.Lock()
			a.net.authority = ap.Addr().Unmap()
			a.net.mu.Unlock()
		}
	}
	lists, errc := make(chan *wardv1.PeerList), make(chan error, 1)
	go func() {
		for {
			pl, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case lists <- pl:
			case <-ctx.Done():
				return
			}
		}
	}()
	period, overlap := time.Duration(a.cfg.Network.RotationPeriod), time.Duration(a.cfg.Network.RotationOverlap)
	for {
		due := ks.Created.Add(period)
		if len(ks.Next) == 32 {
			due = ks.Announced.Add(overlap)
		}
		a.net.mu.Lock()
		a.net.nextRotate = ks.Created.Add(period)
		a.net.mu.Unlock()
		timer := time.NewTimer(max(due.Sub(a.now()), 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case err := <-errc:
			timer.Stop()
			return err
		case pl := <-lists:
			timer.Stop()
			if err := a.applyPeers(ctx, cl, dev, ks, pl); err != nil {
				return err
			}
		case <-timer.C:
			if err := a.rotateStep(ctx, cl, dev, ks); err != nil {
				a.log.Warn("network: key rotation step failed; retrying", "err", err)
				a.net.setErr(err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}
}

// applyPeers configures the device with pl (this node left out) and
// re-registers when pl does not show this node's current registration.
func (a *Agent) applyPeers(ctx context.Context, cl wardv1.NodeNetworkClient, dev *wgnet.Device, ks *wgKeys, pl *wardv1.PeerList) error {
	self := ""
	if sv := a.agentSVID.Load(); sv != nil {
		self = sv.ID.String()
	}
	cur, _ := wgnet.KeyFrom(ks.Current)
	pub := cur.Public()
	var peers []wgnet.Peer
	seen := false
	for _, t := range pl.GetPeers() {
		if td := t.TrustDomain; td != "" && td != a.cfg.TrustDomain && !slices.Contains(a.cfg.Network.Federated, td) {
			a.log.Warn("network: skipping a peer of a trust domain not in network.federated", "agent_id", t.AgentId, "trust_domain", td)
			continue
		}
		if id, err := spiffeid.FromString(t.AgentId); err != nil || (t.TrustDomain != "" && id.TrustDomain().Name() != t.TrustDomain) {
			a.log.Warn("network: skipping a peer whose agent ID is not of its trust domain", "agent_id", t.AgentId, "trust_domain", t.TrustDomain)
			continue
		}
		if t.AgentId == self {
			seen = string(t.PublicKey) == string(pub[:])
			continue
		}
		p, err := peerFrom(t)
		if err != nil {
			a.log.Warn("network: skipping a peer", "agent_id", t.AgentId, "err", err)
			continue
		}
		peers = append(peers, p)
	}
	peers = a.routablePeers(peers)
	err := dev.SetPeers(peers)
	a.net.mu.Lock()
	a.net.peers = len(peers)
	a.net.mu.Unlock()
	a.net.setErr(err)
	if err != nil {
		a.log.Warn("network: configuring peers", "err", err)
	}
	a.log.Debug("network: peer list applied", "peers", len(peers))
	if !seen {
		return a.register(ctx, cl, ks)
	}
	return nil
}

// routablePeers drops, with a warning, the peer prefixes this node must
// never route into the tunnel, whatever the authority accepted: one
// overlapping this node's own address or subnets, one covering a peer's
// endpoint or the authority's address (the underlay WireGuard and the
// Node API need), and in strict mode one outside strict_cidrs (the
// declared overlay). A compromised peer's registration can then take
// none of this node's traffic but what is addressed to that peer's own
// overlay prefixes.
func (a *Agent) routablePeers(peers []wgnet.Peer) []wgnet.Peer {
	n := a.cfg.Network
	var under []netip.Addr
	for _, p := range peers {
		under = append(under, p.Endpoint.Addr().Unmap())
	}
	if host, _, err := net.SplitHostPort(a.cfg.ServerAddress); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil {
			under = append(under, ip.Unmap())
		}
	}
	a.net.mu.Lock()
	if a.net.authority.IsValid() {
		under = append(under, a.net.authority)
	}
	a.net.mu.Unlock()
	skip := func(p wgnet.Peer, pr netip.Prefix, why string) {
		a.log.Warn("network: not routing a peer's prefix", "agent_id", p.ID, "prefix", pr, "reason", why)
	}
	out := make([]wgnet.Peer, 0, len(peers))
	for _, p := range peers {
		var keep []netip.Prefix
		for _, pr := range p.AllowedIPs {
			pr = pr.Masked()
			why := ""
			for _, o := range n.own {
				if pr.Overlaps(o) {
					why = "overlaps this node's own " + o.String()
				}
			}
			for _, u := range under {
				if why == "" && pr.Contains(u) {
					why = "covers the underlay address " + u.String() + " (a peer's endpoint or the authority)"
				}
			}
			// Public address space only with this node's own opt-in: a
			// peer (or an authority, or a federated authority's relayed
			// tunnels) claiming 8.8.8.0/24 would take this node's traffic
			// to those internet hosts.
			if why == "" && netrange.CheckPrivate(pr, n.allowPublic) != nil {
				why = "is public address space outside " + netrange.AllowPublicSetting + " (agent.yaml)"
			}
			if why == "" && n.Strict {
				why = "is outside strict_cidrs"
				for _, c := range n.strictCIDRs {
					if c.Bits() <= pr.Bits() && c.Contains(pr.Addr()) {
						why = ""
					}
				}
			}
			if why != "" {
				skip(p, pr, why)
				continue
			}
			keep = append(keep, pr)
		}
		p.AllowedIPs = keep
		out = append(out, p)
	}
	// A prefix two peers claim (the authority checks overlaps against the
	// current agents only, so a node that comes back after its SVID
	// expired can find its subnet claimed meanwhile) goes to neither: in
	// WireGuard a prefix belongs to the peer configured last, an order an
	// attacker must not be able to arrange. Only prefixes kept so far
	// count, so one refused above takes nothing from another peer.
	owners := map[netip.Prefix][]int{}
	for i, p := range out {
		for _, pr := range p.AllowedIPs {
			owners[pr] = append(owners[pr], i)
		}
	}
	contested := map[netip.Prefix]bool{}
	for i, p := range out {
		for _, pr := range p.AllowedIPs {
			for b := 0; b <= pr.Bits(); b++ {
				q := netip.PrefixFrom(pr.Addr(), b).Masked()
				for _, j := range owners[q] {
					if j != i {
						contested[pr], contested[q] = true, true
					}
				}
			}
		}
	}
	if len(contested) > 0 {
		for i, p := range out {
			var keep []netip.Prefix
			for _, pr := range p.AllowedIPs {
				if contested[pr] {
					skip(p, pr, "overlaps another peer's prefix")
					continue
				}
				keep = append(keep, pr)
			}
			out[i].AllowedIPs = keep
		}
	}
	return out
}

func peerFrom(t *wardv1.Tunnel) (wgnet.Peer, error) {
	k, ok := wgnet.KeyFrom(t.PublicKey)
	if !ok {
		return wgnet.Peer{}, errors.New("bad public key")
	}
	p := wgnet.Peer{ID: t.AgentId, PublicKey: k}
	if len(t.NextPublicKey) > 0 {
		nk, ok := wgnet.KeyFrom(t.NextPublicKey)
		if !ok {
			return wgnet.Peer{}, errors.New("bad next public key")
		}
		p.NextKey = &nk
	}
	ep, err := netip.ParseAddrPort(t.Endpoint)
	if err != nil {
		return wgnet.Peer{}, fmt.Errorf("endpoint %q: %v", t.Endpoint, err)
	}
	p.Endpoint = ep
	for _, s := range t.AllowedIps {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			return wgnet.Peer{}, fmt.Errorf("allowed ip %q: %v", s, err)
		}
		p.AllowedIPs = append(p.AllowedIPs, pr)
	}
	return p, nil
}

// rotateStep advances a rotation: first announce a new key (peers accept
// handshakes from it, nothing routes to it yet), then, rotation_overlap
// later, register it as current and switch the device to it. Sessions in
// progress still receive on the old key, so a stream pauses for one
// handshake, not longer (docs/network.md).
func (a *Agent) rotateStep(ctx context.Context, cl wardv1.NodeNetworkClient, dev *wgnet.Device, ks *wgKeys) error {
	if len(ks.Next) != 32 {
		nk, err := wgnet.NewPrivateKey()
		if err != nil {
			return err
		}
		next := *ks
		next.Next, next.Announced = nk[:], a.now()
		if err := a.saveWGKeys(&next); err != nil {
			return err
		}
		*ks = next
		return a.register(ctx, cl, ks)
	}
	next := wgKeys{Current: ks.Next, Created: a.now()}
	if err := a.register(ctx, cl, &next); err != nil {
		return err
	}
	if err := a.saveWGKeys(&next); err != nil {
		return err
	}
	nk, _ := wgnet.KeyFrom(next.Current)
	if err := dev.SetPrivateKey(nk); err != nil {
		return err
	}
	*ks = next
	a.net.mu.Lock()
	a.net.rotatedAt = next.Created
	a.net.rotations++
	a.net.mu.Unlock()
	pub := nk.Public()
	a.log.Info("network: WireGuard key rotated", "public_key", fmt.Sprintf("%x", pub[:8]))
	return nil
}

// netCollector exports the tunnel table to Prometheus.
type netCollector struct {
	a                                        *Agent
	peers, handshakes, rx, tx, age, rotation *prometheus.Desc
}

func newNetCollector(a *Agent) *netCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("ward_agent_network_"+name, help, labels, nil)
	}
	return &netCollector{a: a,
		peers:      d("peers", "WireGuard peers configured (keys, including announced next keys)."),
		handshakes: d("handshakes_total", "WireGuard handshakes completed (seen by the agent)."),
		rx:         d("received_bytes_total", "Bytes received from a peer through the tunnel.", "peer"),
		tx:         d("sent_bytes_total", "Bytes sent to a peer through the tunnel.", "peer"),
		age:        d("last_handshake_age_seconds", "Seconds since the last handshake with a peer (-1: none yet).", "peer"),
		rotation:   d("key_rotations_total", "WireGuard key rotations of this node."),
	}
}

func (c *netCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.peers, c.handshakes, c.rx, c.tx, c.age, c.rotation} {
		ch <- d
	}
}

func (c *netCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.networkStatus()
	if st == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(len(st.Peers)))
	ch <- prometheus.MustNewConstMetric(c.handshakes, prometheus.CounterValue, float64(st.Handshakes))
	ch <- prometheus.MustNewConstMetric(c.rotation, prometheus.CounterValue, float64(st.Rotations))
	for _, p := range st.Peers {
		label := fmt.Sprintf("%s %x", p.ID, p.PublicKey[:4])
		ch <- prometheus.MustNewConstMetric(c.rx, prometheus.CounterValue, float64(p.RxBytes), label)
		ch <- prometheus.MustNewConstMetric(c.tx, prometheus.CounterValue, float64(p.TxBytes), label)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, p.HandshakeAgeSeconds, label)
	}
}
