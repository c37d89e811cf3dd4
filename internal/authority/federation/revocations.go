package federation

// Cross-cluster revocation. SPIFFE federation exchanges bundles only; ward
// authorities also exchange, over an mTLS channel between their server IDs
// (spiffe://<td>/ward/server, each verified with the other's federated
// bundle), each trust domain's own deny-list: SPIFFE IDs, certificate
// serials and tainted CA keys, with a sequence number (the publisher's
// policy version). The channel rides on the https_spiffe bundle endpoint
// (RevocationPath): the subscriber long-polls it, so a revocation arrives
// as soon as the publisher stores it. What is received is checked (the
// publisher's own trust domain only, bounded size, sequence never
// backwards), audited, stored behind the barrier (a partitioned authority
// keeps the last revocations it received) and merged into the policy
// versions this authority pushes, as a separate section per trust domain
// (policy.Bundle.RemoteDenyLists).

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/policy"
)

const (
	// RevocationPath is where the https_spiffe bundle endpoint serves this
	// trust domain's revocations to federated authorities (mTLS).
	RevocationPath = "/ward/federation/v1/revocations"
	// MaxRevocationUpdate bounds one update (bytes of JSON).
	MaxRevocationUpdate = 1 << 20
	// MaxRevocationWait bounds a long-poll (below the endpoint's write
	// timeout).
	MaxRevocationWait = 20 * time.Second

	revocationPrefix = "federation-revocations/"
	// revocationHeader marks a ward revocation answer: an endpoint of
	// another SPIFFE implementation answering the path (with its bundle,
	// say) is not a peer sending a bad update, so it is not audited.
	revocationHeader = "Ward-Revocations"
	serverPath       = "/ward/server"
)

// Revocations is one trust domain's own deny-list at a sequence.
type Revocations struct {
	TrustDomain string          `json:"trust_domain"`
	Sequence    uint64          `json:"sequence"`
	DenyList    policy.DenyList `json:"deny_list"`
}

// RevocationSource publishes this trust domain's revocations: it returns
// them once their sequence is above after, or the current ones when ctx
// ends first.
type RevocationSource interface {
	Revocations(ctx context.Context, after uint64) (Revocations, error)
}

// OwnOnly returns d without entries of other trust domains than td (a
// publisher only ever speaks for its own identities).
func OwnOnly(td spiffeid.TrustDomain, d policy.DenyList) policy.DenyList {
	d.SPIFFEIDs = slices.DeleteFunc(slices.Clone(d.SPIFFEIDs), func(s string) bool {
		id, err := spiffeid.FromString(s)
		return err != nil || !id.MemberOf(td)
	})
	return d
}

// received is what is stored under revocationPrefix+td.
type received struct {
	Revocations
	ReceivedAt time.Time `json:"received_at"`
}

func revocationKey(td spiffeid.TrustDomain) string { return revocationPrefix + td.Name() }

// RevocationStatus is the state of the channel with one trust domain.
type RevocationStatus struct {
	Sequence   uint64
	Has        bool
	ReceivedAt time.Time
	// Entries counts SPIFFE IDs, serials and tainted keys received.
	Entries   int
	LastError string
}

// loadRevocations reads the stored revocations (after Open and Reload).
func (m *Manager) loadRevocations(ctx context.Context) error {
	kvs, err := m.opts.Store.List(ctx, revocationPrefix)
	if err != nil {
		return errs.Errorf(errs.Unavailable, "%w: listing received revocations: %v", ErrUnavailable, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, kv := range kvs {
		var r received
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			m.opts.Log.Error("skipping stored revocations", "key", kv.Key, "err", err)
			continue
		}
		td, err := spiffeid.TrustDomainFromString(r.TrustDomain)
		if err != nil || revocationKey(td) != kv.Key {
			m.opts.Log.Error("skipping stored revocations", "key", kv.Key, "trust_domain", r.TrustDomain)
			continue
		}
		if old, ok := m.remote[td]; ok && old.Sequence > r.Sequence {
			continue
		}
		m.remote[td] = r
	}
	return nil
}

// RemoteDenyLists returns the last revocations received from every
// federated trust domain (policystore.WithRemoteDenyLists).
func (m *Manager) RemoteDenyLists() map[string]policy.DenyList {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out map[string]policy.DenyList
	for td, r := range m.remote {
		if _, ok := m.entries[td]; !ok {
			continue
		}
		d := r.DenyList
		if len(d.SPIFFEIDs)+len(d.Serials)+len(d.TaintedKeys) == 0 {
			continue
		}
		if out == nil {
			out = map[string]policy.DenyList{}
		}
		out[td.Name()] = d
	}
	return out
}

// Revocation returns the channel's state with td.
func (m *Manager) Revocation(td spiffeid.TrustDomain) RevocationStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.remote[td]
	return RevocationStatus{Sequence: r.Sequence, Has: ok, ReceivedAt: r.ReceivedAt, LastError: m.revErr[td],
		Entries: len(r.DenyList.SPIFFEIDs) + len(r.DenyList.Serials) + len(r.DenyList.TaintedKeys)}
}

// canonical checks that d only names identities of td and returns it
// normalized and sorted.
func canonical(td spiffeid.TrustDomain, d policy.DenyList) (policy.DenyList, error) {
	var out policy.DenyList
	for _, s := range d.SPIFFEIDs {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return out, fmt.Errorf("SPIFFE ID %q: %v", s, err)
		}
		if !id.MemberOf(td) {
			return out, fmt.Errorf("entry %s is an identity of trust domain %s, not of %s: a trust domain can only revoke its own identities", id, id.TrustDomain().Name(), td.Name())
		}
		out.SPIFFEIDs = append(out.SPIFFEIDs, id.String())
	}
	for _, s := range d.Serials {
		n, err := policy.NormalizeSerial(s)
		if err != nil {
			return out, err
		}
		out.Serials = append(out.Serials, n)
	}
	for _, k := range d.TaintedKeys {
		n, err := policy.NormalizeKeyID(k)
		if err != nil {
			return out, err
		}
		out.TaintedKeys = append(out.TaintedKeys, n)
	}
	for _, l := range []*[]string{&out.SPIFFEIDs, &out.Serials, &out.TaintedKeys} {
		sort.Strings(*l)
		*l = slices.Compact(*l)
	}
	return out, nil
}

func sameDeny(a, b policy.DenyList) bool {
	return slices.Equal(a.SPIFFEIDs, b.SPIFFEIDs) && slices.Equal(a.Serials, b.Serials) && slices.Equal(a.TaintedKeys, b.TaintedKeys)
}

// AcceptRevocations checks an update received from td's authority, audits
// it (accepted or refused: an update whose audit event cannot be written
// is not installed), stores it and, when the deny-list changed, calls
// Options.OnRevocations (acceptDoc). Refused: an update over
// MaxRevocationUpdate, one that does not parse, one for another trust
// domain or naming another trust domain's identities, a sequence older
// than the last accepted one (a replay, or a peer rolled back), the same
// sequence with other content.
func (m *Manager) AcceptRevocations(ctx context.Context, td spiffeid.TrustDomain, body []byte) error {
	return acceptDoc(ctx, m, td, body, acceptSpec[Revocations]{
		event: "federation.revocations", noun: "revocations", own: "identities", max: MaxRevocationUpdate, key: revocationKey(td),
		refusedLog: "refused revocations from a federated authority", acceptedLog: "revocations received from a federated authority",
		allowed: func() string {
			if _, ok := m.get(td); !ok {
				return "no federation relationship with " + td.Name()
			}
			return ""
		},
		prev: func() (Revocations, bool) {
			m.mu.Lock()
			defer m.mu.Unlock()
			r, ok := m.remote[td]
			return r.Revocations, ok
		},
		check: func(u *Revocations, fields map[string]string) error {
			d, err := canonical(td, u.DenyList)
			if err != nil {
				return err
			}
			u.DenyList = d
			fields["spiffe_ids"] = fmt.Sprint(d.SPIFFEIDs)
			fields["serials"] = fmt.Sprint(d.Serials)
			fields["tainted_keys"] = fmt.Sprint(d.TaintedKeys)
			return nil
		},
		same:   func(a, b Revocations) bool { return sameDeny(a.DenyList, b.DenyList) },
		setErr: func(e string) { m.setRevErr(td, e) },
		stored: func(u Revocations, at time.Time) (any, func()) {
			r := received{Revocations: Revocations{TrustDomain: td.Name(), Sequence: u.Sequence, DenyList: u.DenyList}, ReceivedAt: at}
			return r, keepIn(&m.mu, m.remote, td, r)
		},
		done: func(ctx context.Context, u Revocations, changed bool, fields map[string]string) []any {
			if changed && m.opts.OnRevocations != nil {
				m.opts.OnRevocations(ctx, td, fields)
			}
			d := u.DenyList
			return []any{"spiffe_ids", len(d.SPIFFEIDs), "serials", len(d.Serials), "tainted_keys", len(d.TaintedKeys)}
		},
	})
}

func (m *Manager) setRevErr(td spiffeid.TrustDomain, e string) {
	setChannelErr(&m.mu, m.revErr, td, e)
}

// RevocationClient is how this authority authenticates on the channel.
type RevocationClient struct {
	// SVID returns this authority's server X509-SVID
	// (spiffe://<td>/ward/server). Required.
	SVID func() (*x509svid.SVID, error)
	// Wait is the long-poll's wait (default and at most MaxRevocationWait).
	Wait time.Duration

	sleep func(context.Context, time.Duration) // tests: replaces pause's timer
}

// RunRevocations follows the revocations of every federated trust domain
// whose relationship uses https_spiffe, over its bundle endpoint, until ctx
// ends.
func (m *Manager) RunRevocations(ctx context.Context, c RevocationClient) {
	m.runFollowers(ctx, c, nil, m.followRevocations)
}

// runFollowers runs follow for every https_spiffe relationship (that want
// accepts, when given), restarting it when the relationship changes and
// stopping it when it is removed, until ctx ends (the revocation, catalog
// and network channels).
func (m *Manager) runFollowers(ctx context.Context, c RevocationClient, want func(Relationship) bool, follow func(context.Context, Relationship, RevocationClient)) {
	if c.Wait <= 0 || c.Wait > MaxRevocationWait {
		c.Wait = MaxRevocationWait
	}
	type poller struct {
		rel    Relationship
		cancel context.CancelFunc
	}
	running := map[spiffeid.TrustDomain]*poller{}
	var wg sync.WaitGroup
	defer func() {
		for _, p := range running {
			p.cancel()
		}
		wg.Wait()
	}()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		wanted := map[spiffeid.TrustDomain]Relationship{}
		for _, st := range m.List() {
			if st.Profile == ProfileSPIFFE && (want == nil || want(st.Relationship)) {
				wanted[st.TrustDomain] = st.Relationship
			}
		}
		for td, p := range running {
			if r, ok := wanted[td]; !ok || !r.Equal(p.rel) {
				p.cancel()
				delete(running, td)
			}
		}
		for td, r := range wanted {
			if running[td] != nil {
				continue
			}
			pctx, cancel := context.WithCancel(ctx)
			running[td] = &poller{rel: r, cancel: cancel}
			wg.Add(1)
			go func() { defer wg.Done(); follow(pctx, r, c) }()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// revocationChannel is the revocation channel's long-poll (longpoll.go).
func (m *Manager) revocationChannel() channel {
	return channel{name: "revocation channel", what: "revocations", path: RevocationPath, header: revocationHeader,
		max: MaxRevocationUpdate, accept: m.AcceptRevocations, setErr: m.setRevErr,
		after: func(td spiffeid.TrustDomain) (uint64, bool) {
			st := m.Revocation(td)
			return st.Sequence, st.Has
		},
		notWard: "serves no ward revocation channel (not a ward authority?); its revocations cannot be followed"}
}

// followRevocations long-polls one trust domain's revocations.
func (m *Manager) followRevocations(ctx context.Context, rel Relationship, c RevocationClient) {
	m.follow(ctx, rel, c, m.revocationChannel())
}

// pollRevocations asks rel's endpoint once for revocations newer than the
// last received.
func (m *Manager) pollRevocations(ctx context.Context, rel Relationship, c RevocationClient) ([]byte, error) {
	return m.poll(ctx, rel, c, m.revocationChannel())
}

type svidFunc func() (*x509svid.SVID, error)

func (f svidFunc) GetX509SVID() (*x509svid.SVID, error) { return f() }
