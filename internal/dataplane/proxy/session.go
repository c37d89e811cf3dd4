package proxy

import (
	"container/list"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// TLS session resumption (tls.session_resumption, on by default).
//
// A resumed TLS 1.3 handshake (PSK with (EC)DHE: Go's client offers no
// other mode and the server accepts no other) skips both certificates and
// both CertificateVerify signatures; it skips nothing of ward's own
// checks:
//
//   - VerifyConnection (verify.go) runs on every resumed handshake, on
//     both sides, on the peer chain the session carries: the chain is
//     verified against the CURRENT bundle of the peer's trust domain and
//     the current time (verifyPeer), the outbound side checks the server
//     ID and tainted CA keys, and an inbound connection gets its connect
//     decision with the deny-list (serials, IDs, tainted keys, federated
//     deny-lists) after the handshake exactly as a full one.
//   - A session never outlives the SVIDs it was made with: a ticket ends
//     at the earliest of the peer leaf's NotAfter, this proxy's own leaf's
//     NotAfter and tls.session_lifetime (default 10 min) after the full
//     handshake that made it (a ticket re-issued on a resumption keeps that
//     end). A ticket names this proxy's leaf (SHA-256) and is refused once
//     the proxy holds another SVID; the client cache is keyed by its own
//     leaf as well, so a rotated client never offers an old session.
//   - Tickets are sealed (AES-256-GCM) under ticket keys that live only in
//     memory (never on disk, in logs or metrics), rotate every
//     session_lifetime (the previous key is kept one more period), and are
//     all dropped on any Workload API update (SVID or bundle rotation, a
//     federated bundle replaced, a CA removed) and on every new policy
//     version (where taints and deny-lists arrive); the outbound session
//     cache is emptied with them; a handshake that began before a drop
//     gets no usable ticket and its session is not cached. Resumption is
//     off with an X509 source
//     that does not notify its updates (WithX509Source without an
//     Updated method).
//   - A ticket is bound to the inbound listener and SNI that issued it.
//     The outbound session cache is bounded (tls.session_cache_size,
//     least recently used out first) and keyed by outbound listener, server
//     SPIFFE ID (whose trust domain separates federated peers from local
//     ones), SNI, remote address and own leaf.
//   - No 0-RTT: Go's TLS server never accepts early data; sessions are
//     marked without it.
//
// A ticket from any other client (any Go client with a session cache) goes
// through the same UnwrapSession and the same VerifyConnection and decision.

// Defaults and bounds of the session settings.
const (
	DefaultSessionLifetime  = 10 * time.Minute
	MaxSessionLifetime      = time.Hour
	DefaultSessionCacheSize = 1024
	MaxSessionCacheSize     = 1 << 16
)

// Reasons a ticket is refused (ward_proxy_tls_session_tickets_refused_total).
const (
	ticketUnknownKey   = "unknown_key" // rotated out, dropped, or not ours
	ticketExpired      = "expired"
	ticketOtherBinding = "other_listener"
	ticketOwnRotated   = "own_svid_changed"
	ticketInvalid      = "invalid"
	ticketNotTLS13     = "not_tls13"
)

const (
	ticketFormat  = 1
	ticketIDLen   = 8
	ticketMinSize = ticketIDLen + 12 + 16
)

// ticketKey is one AES-256-GCM key tickets are sealed with.
type ticketKey struct {
	id   [ticketIDLen]byte
	aead cipher.AEAD
	born time.Time
}

// ticketKeys are the inbound side's ticket keys: the current one seals,
// the current and the previous one open.
type ticketKeys struct {
	every time.Duration // rotation period: the session lifetime

	mu        sync.Mutex
	cur, prev *ticketKey
	drops     atomic.Int64

	// keepOnChange (tests only) keeps keys and tickets across bundle and
	// policy changes, to show that the verification at the resumed
	// handshake refuses what those drops would.
	keepOnChange bool
}

func newTicketKeys(every time.Duration) *ticketKeys { return &ticketKeys{every: every} }

func newTicketKey(now time.Time) (*ticketKey, error) {
	var raw [32]byte
	k := &ticketKey{born: now}
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(k.id[:]); err != nil {
		return nil, err
	}
	b, err := aes.NewCipher(raw[:])
	if err != nil {
		return nil, err
	}
	if k.aead, err = cipher.NewGCM(b); err != nil {
		return nil, err
	}
	clear(raw[:])
	return k, nil
}

// current returns the sealing key, rotating it when it is a period old.
func (k *ticketKeys) current(now time.Time) (*ticketKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur != nil && now.Sub(k.cur.born) < k.every {
		return k.cur, nil
	}
	nk, err := newTicketKey(now)
	if err != nil {
		return nil, err
	}
	k.prev, k.cur = k.cur, nk
	if k.prev != nil && now.Sub(k.prev.born) >= 2*k.every {
		k.prev = nil
	}
	return k.cur, nil
}

// lookup returns the key of id if it is the current or the previous one
// (the previous one only within a period after it stopped sealing).
func (k *ticketKeys) lookup(id []byte, now time.Time) *ticketKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, t := range []*ticketKey{k.cur, k.prev} {
		if t != nil && subtle.ConstantTimeCompare(t.id[:], id) == 1 && now.Sub(t.born) < 2*k.every {
			return t
		}
	}
	return nil
}

// drop forgets every key: no ticket issued so far opens again.
func (k *ticketKeys) drop() {
	if k == nil || k.keepOnChange {
		return
	}
	k.mu.Lock()
	k.cur, k.prev = nil, nil
	k.mu.Unlock()
	k.drops.Add(1)
}

// ticketMeta is what ward adds to a session in its ticket.
type ticketMeta struct {
	expiry   int64  // Unix milliseconds
	listener string // inbound listener that issued it
	sni      string
	ownFP    [32]byte // SHA-256 of this proxy's leaf at the full handshake
}

func (m *ticketMeta) encode(b []byte) []byte {
	b = append(b, ticketFormat)
	b = binary.BigEndian.AppendUint64(b, uint64(m.expiry))
	for _, s := range []string{m.listener, m.sni} {
		b = binary.BigEndian.AppendUint16(b, uint16(min(len(s), 0xffff)))
		b = append(b, s[:min(len(s), 0xffff)]...)
	}
	return append(b, m.ownFP[:]...)
}

// decodeTicketMeta parses what encode wrote and returns the rest (the
// session state).
func decodeTicketMeta(b []byte) (*ticketMeta, []byte, error) {
	bad := errors.New("ticket: malformed")
	if len(b) < 1+8 || b[0] != ticketFormat {
		return nil, nil, bad
	}
	m := &ticketMeta{expiry: int64(binary.BigEndian.Uint64(b[1:9]))}
	b = b[9:]
	for _, s := range []*string{&m.listener, &m.sni} {
		if len(b) < 2 {
			return nil, nil, bad
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return nil, nil, bad
		}
		*s, b = string(b[2:2+n]), b[2+n:]
	}
	if len(b) < 32 {
		return nil, nil, bad
	}
	copy(m.ownFP[:], b[:32])
	return m, b[32:], nil
}

// seal encrypts meta and the session state under the current key:
// key id, nonce, AES-256-GCM (the key id is the additional data).
func (k *ticketKeys) seal(m *ticketMeta, state []byte, now time.Time) ([]byte, error) {
	key, err := k.current(now)
	if err != nil {
		return nil, err
	}
	out := make([]byte, ticketIDLen+key.aead.NonceSize(), ticketIDLen+key.aead.NonceSize()+len(state)+128)
	copy(out, key.id[:])
	if _, err := rand.Read(out[ticketIDLen:]); err != nil {
		return nil, err
	}
	pt := m.encode(make([]byte, 0, 128+len(state)))
	pt = append(pt, state...)
	return key.aead.Seal(out, out[ticketIDLen:], pt, out[:ticketIDLen]), nil
}

// open decrypts a ticket; the reason says why it cannot be used.
func (k *ticketKeys) open(ticket []byte, now time.Time) (*ticketMeta, []byte, string) {
	if len(ticket) < ticketMinSize {
		return nil, nil, ticketUnknownKey
	}
	key := k.lookup(ticket[:ticketIDLen], now)
	if key == nil {
		return nil, nil, ticketUnknownKey
	}
	ns := key.aead.NonceSize()
	if len(ticket) < ticketIDLen+ns+key.aead.Overhead() {
		return nil, nil, ticketInvalid
	}
	pt, err := key.aead.Open(nil, ticket[ticketIDLen:ticketIDLen+ns], ticket[ticketIDLen+ns:], ticket[:ticketIDLen])
	if err != nil {
		return nil, nil, ticketInvalid
	}
	m, rest, err := decodeTicketMeta(pt)
	if err != nil {
		return nil, nil, ticketInvalid
	}
	return m, rest, ""
}

// unusableTicket is what the server sends when a session must not be
// resumable (no ticket is not an option once crypto/tls decided to send
// one): random bytes no key opens.
func unusableTicket() []byte {
	b := make([]byte, ticketMinSize)
	_, _ = rand.Read(b)
	return b
}

// serverSession is one inbound handshake's ticket state.
type serverSession struct {
	listener string
	gen      int64       // tickets.drops when the handshake began
	own      *svidCert   // the certificate this handshake presented
	resumed  *ticketMeta // the ticket accepted (at most one per handshake)
}

// sessionTicketFuncs sets WrapSession and UnwrapSession on c, a
// per-connection inbound config of listener, when resumption is on.
func (p *Proxy) sessionTicketFuncs(c *tls.Config, listener string) {
	if p.tickets == nil {
		c.SessionTicketsDisabled = true
		return
	}
	c.SessionTicketsDisabled = false
	st := &serverSession{listener: listener, gen: p.tickets.drops.Load()}
	c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		sc, err := p.certs.current(p.src)
		if err != nil {
			return nil, err
		}
		st.own = sc
		return sc.cert, nil
	}
	c.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		return p.wrapSession(st, cs, ss), nil
	}
	c.UnwrapSession = func(ticket []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, reason := p.unwrapSession(st, ticket, cs)
		if reason != "" {
			p.m.ticketsRefused.WithLabelValues(reason).Inc()
			return nil, nil
		}
		return ss, nil
	}
}

func (p *Proxy) wrapSession(st *serverSession, cs tls.ConnectionState, ss *tls.SessionState) []byte {
	now := time.Now()
	if cs.Version != tls.VersionTLS13 || len(cs.PeerCertificates) == 0 || chainSize(cs.PeerCertificates) > maxSessionChain {
		return unusableTicket()
	}
	if p.tickets.drops.Load() != st.gen {
		// The keys were dropped during this handshake (a bundle, SVID or
		// policy change): a session verified before it is not kept.
		return unusableTicket()
	}
	ss.EarlyData = false
	var m ticketMeta
	if cs.DidResume {
		// Re-issued on a resumption: the same end, leaf and trust.
		if st.resumed == nil {
			return unusableTicket()
		}
		m = *st.resumed
	} else {
		if st.own == nil {
			return unusableTicket()
		}
		peer := cs.PeerCertificates[0]
		end := now.Add(p.tickets.every)
		end = minTime(end, peer.NotAfter, st.own.svid.Certificates[0].NotAfter)
		m = ticketMeta{expiry: end.UnixMilli(), listener: st.listener, sni: cs.ServerName, ownFP: st.own.fp}
	}
	if now.UnixMilli() >= m.expiry {
		return unusableTicket()
	}
	state, err := ss.Bytes()
	if err != nil {
		return unusableTicket()
	}
	t, err := p.tickets.seal(&m, state, now)
	if err != nil {
		return unusableTicket()
	}
	return t
}

func (p *Proxy) unwrapSession(st *serverSession, ticket []byte, cs tls.ConnectionState) (*tls.SessionState, string) {
	if cs.Version != tls.VersionTLS13 {
		return nil, ticketNotTLS13
	}
	if st.resumed != nil {
		return nil, ticketInvalid // one candidate per handshake
	}
	now := time.Now()
	m, state, reason := p.tickets.open(ticket, now)
	if reason != "" {
		return nil, reason
	}
	if now.UnixMilli() >= m.expiry {
		return nil, ticketExpired
	}
	if m.listener != st.listener || m.sni != cs.ServerName {
		return nil, ticketOtherBinding
	}
	own, err := p.certs.current(p.src)
	if err != nil || own.fp != m.ownFP {
		return nil, ticketOwnRotated
	}
	ss, err := tls.ParseSessionState(state)
	if err != nil {
		return nil, ticketInvalid
	}
	ss.EarlyData = false
	st.resumed = m
	return ss, ""
}

func minTime(t time.Time, more ...time.Time) time.Time {
	for _, u := range more {
		if u.Before(t) {
			t = u
		}
	}
	return t
}

// sessionCache is the outbound side's client session cache: bounded,
// least recently used out first, each entry with the end its session may
// be offered until. Connections use it through a sessionView.
type sessionCache struct {
	max int
	gen atomic.Int64 // clears so far

	mu sync.Mutex
	ll *list.List // of *sessionEntry, most recent first
	m  map[string]*list.Element
}

type sessionEntry struct {
	key string
	cs  *tls.ClientSessionState
	end time.Time
}

func newSessionCache(max int) *sessionCache {
	return &sessionCache{max: max, ll: list.New(), m: map[string]*list.Element{}}
}

func (c *sessionCache) get(key string, now time.Time) (*tls.ClientSessionState, time.Time, bool) {
	if c == nil {
		return nil, time.Time{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[key]
	if !ok {
		return nil, time.Time{}, false
	}
	e := el.Value.(*sessionEntry)
	if !now.Before(e.end) {
		c.ll.Remove(el)
		delete(c.m, key)
		return nil, time.Time{}, false
	}
	c.ll.MoveToFront(el)
	return e.cs, e.end, true
}

func (c *sessionCache) put(key string, cs *tls.ClientSessionState, end time.Time) {
	c.putGen(key, cs, end, -1)
}

// putGen stores unless the cache was cleared since generation gen (-1:
// any).
func (c *sessionCache) putGen(key string, cs *tls.ClientSessionState, end time.Time, gen int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs != nil && gen >= 0 && c.gen.Load() != gen {
		return // made before a clear (a bundle, SVID or policy change)
	}
	if el, ok := c.m[key]; ok {
		if cs == nil {
			c.ll.Remove(el)
			delete(c.m, key)
			return
		}
		e := el.Value.(*sessionEntry)
		e.cs, e.end = cs, end
		c.ll.MoveToFront(el)
		return
	}
	if cs == nil {
		return
	}
	c.m[key] = c.ll.PushFront(&sessionEntry{key: key, cs: cs, end: end})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*sessionEntry).key)
	}
}

// clear forgets every session.
func (c *sessionCache) clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.gen.Add(1)
	c.ll.Init()
	clear(c.m)
	c.mu.Unlock()
}

func (c *sessionCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// sessionView is one outbound connection's tls.ClientSessionCache: the
// shared cache under a prefix naming what the session is for (outbound
// listener, server SPIFFE ID, SNI, remote address, own leaf), so that a
// session is only ever offered to the server, route and identity it was
// made with. end is set by the connection's verification: a session it
// stores may be offered until then.
type sessionView struct {
	cache  *sessionCache
	gen    int64 // cache.gen when the connection began
	prefix string
	own    *svidCert // the own certificate the prefix names

	offeredEnd time.Time // the end of the session offered, if one was
	end        time.Time // set when the handshake verified the server
}

func (v *sessionView) Get(key string) (*tls.ClientSessionState, bool) {
	cs, end, ok := v.cache.get(v.prefix+key, time.Now())
	if ok {
		v.offeredEnd = end
	}
	return cs, ok
}

func (v *sessionView) Put(key string, cs *tls.ClientSessionState) {
	if cs == nil {
		v.cache.put(v.prefix+key, nil, time.Time{})
		return
	}
	if v.end.IsZero() || !time.Now().Before(v.end) {
		return
	}
	if _, s, err := cs.ResumptionState(); err == nil && s != nil && s.EarlyData {
		return // never 0-RTT
	}
	v.cache.putGen(v.prefix+key, cs, v.end, v.gen)
}

// verified records the end of a session made on this connection: the
// earliest of the server leaf's and the own leaf's NotAfter and the
// session lifetime from now, or, when the handshake resumed, the end of the
// session it resumed (a resumption never extends a session).
func (v *sessionView) verified(cs tls.ConnectionState, lifetime time.Duration) {
	if len(cs.PeerCertificates) == 0 || v.own == nil || cs.Version != tls.VersionTLS13 {
		return // TLS 1.2 sessions (a non-ward server) are never kept: their resumption has no fresh key exchange
	}
	if chainSize(cs.PeerCertificates) > maxSessionChain {
		return // a kept session would hold the server's whole Certificate message (see maxSessionChain)
	}
	end := minTime(time.Now().Add(lifetime), cs.PeerCertificates[0].NotAfter, v.own.svid.Certificates[0].NotAfter)
	if cs.DidResume {
		end = minTime(end, v.offeredEnd)
	}
	v.end = end
}

// maxSessionChain bounds the certificates (DER bytes) of a peer chain a
// session is kept or a ticket issued for. crypto/tls parses the peer's
// certificates in place: a kept session holds the peer's whole Certificate
// message (up to 256 KiB, any number of certificates the verification never
// used), and a ticket carries them all. An SVID chain is a few KiB; a peer
// sending more gets full handshakes only, so it cannot park 256 KiB in
// every slot of the session cache (the chain cache keeps its own copies,
// ownChains) nor have the server seal that much per ticket.
const maxSessionChain = 16 << 10

func chainSize(certs []*x509.Certificate) int {
	n := 0
	for _, c := range certs {
		n += len(c.Raw)
	}
	return n
}

// sessionKeyPrefix names what an outbound session is for.
func sessionKeyPrefix(listener, serverID, sni, remote string, own *svidCert) string {
	b := make([]byte, 0, 128)
	for _, s := range []string{listener, serverID, sni, remote} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s))) // the whole length: no two routes share a key
		b = append(b, s...)
	}
	b = append(b, own.fp[:]...)
	return string(b)
}
