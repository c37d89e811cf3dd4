package policy

import (
	"fmt"
	"sort"
	"strings"
)

// Remote deny-lists are what federated trust domains published about their
// own identities (cross-cluster revocation, docs/federation.md): one
// section per trust domain, each applying only to peers of that trust
// domain. A SPIFFE ID of another trust domain in a section makes the whole
// bundle invalid; a section's serials and tainted CA keys only refuse
// peers whose SPIFFE ID is in the section's trust domain (a serial or a key
// ID means nothing outside the CA that issued it), so one trust domain can
// never revoke another's identities.

// ReasonRemoteDenyListPrefix starts the reason of a decision made by a
// remote deny-list: "deny-list of a.example: SPIFFE ID", "... certificate
// serial", "... tainted CA key KEYID".
const ReasonRemoteDenyListPrefix = "deny-list of "

// prepareRemote validates and prepares the remote sections by trust domain.
func prepareRemote(m map[string]DenyList) (map[string]*denySet, []Problem) {
	if len(m) == 0 {
		return nil, nil
	}
	var probs []Problem
	out := make(map[string]*denySet, len(m))
	for td, d := range m {
		bad := func(format string, args ...any) {
			probs = append(probs, Problem{File: "(remote deny-list " + td + ")", Kind: "deny-list", Message: fmt.Sprintf(format, args...)})
		}
		if got, path, err := parseSPIFFEID("spiffe://" + td); err != nil || got != td || path != "" {
			bad("remote deny-list section %q is not a trust domain name", td)
			continue
		}
		ds, ps := d.prepare()
		for _, p := range ps {
			p.File = "(remote deny-list " + td + ")"
			probs = append(probs, p)
		}
		for id := range ds.ids {
			if idTrustDomain(id) != td {
				bad("remote deny-list of %s names %s, an identity of another trust domain (a trust domain can only revoke its own identities)", td, id)
			}
		}
		out[td] = ds
	}
	if len(probs) > 0 {
		sort.Slice(probs, func(i, j int) bool { return probs[i].Message < probs[j].Message })
		return nil, probs
	}
	return out, nil
}

// idTrustDomain returns the trust domain of a SPIFFE ID ("" if it is none).
func idTrustDomain(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return rest[:i]
	}
	return rest
}

// withRemote returns a copy of s with the remote deny-lists m.
func (s *Set) withRemote(m map[string]DenyList) (*Set, error) {
	r, probs := prepareRemote(m)
	if len(probs) > 0 {
		return nil, &CompileError{Problems: probs}
	}
	c := *s
	c.remote, c.cache = r, newDecisionCache()
	return &c, nil
}

// RemoteDenyLists returns the remote deny-lists in canonical form, by trust
// domain.
func (s *Set) RemoteDenyLists() map[string]DenyList {
	if len(s.remote) == 0 {
		return nil
	}
	out := make(map[string]DenyList, len(s.remote))
	for td, ds := range s.remote {
		out[td] = ds.canonical()
	}
	return out
}

// remoteDenied refuses a principal that the remote deny-list of its own
// trust domain names (by SPIFFE ID, certificate serial or a CA key of its
// chain).
func (s *Set) remoteDenied(req *Request) (Decision, bool) {
	if len(s.remote) == 0 {
		return Decision{}, false
	}
	td := idTrustDomain(req.Principal)
	ds := s.remote[td]
	if ds == nil {
		return Decision{}, false
	}
	d := Decision{Version: s.version, Cause: CauseDenyList}
	prefix := ReasonRemoteDenyListPrefix + td + ": "
	if _, ok := ds.ids[req.Principal]; ok {
		d.Reasons = []string{prefix + "SPIFFE ID"}
		return d, true
	}
	if req.CertSerial != "" {
		if n, err := NormalizeSerial(req.CertSerial); err == nil {
			if _, ok := ds.serials[n]; ok {
				d.Reasons = []string{prefix + "certificate serial"}
				return d, true
			}
		}
	}
	for _, k := range req.ChainKeyIDs {
		if _, ok := ds.keys[strings.ToLower(k)]; ok {
			d.Cause, d.Reasons = CauseTaintedKey, []string{prefix + "tainted CA key " + strings.ToLower(k)}
			return d, true
		}
	}
	return Decision{}, false
}

// TaintedKeyOf is TaintedKey for a peer of trust domain td: the local
// deny-list's tainted keys and those td itself published.
func (s *Set) TaintedKeyOf(td string, keyIDs []string) string {
	if k := s.TaintedKey(keyIDs); k != "" {
		return k
	}
	if ds := s.remote[td]; ds != nil {
		for _, k := range keyIDs {
			if _, ok := ds.keys[strings.ToLower(k)]; ok {
				return strings.ToLower(k)
			}
		}
	}
	return ""
}

// CredentialRevoked says whether id, the serial of a certificate or the
// jti of a JWT-SVID (hex) of an identity of trust domain td, is on the
// deny-list: this trust domain's own (which revokes what it names
// whatever its trust domain) or the one td published (RemoteDenyLists:
// each revokes only its own credentials). An eviction puts the jtis of
// the JWT-SVIDs minted through the agent among the serials, so the
// Workload API's ValidateJWTSVID asks this for a token's jti. An id that
// is not hex is never revoked.
func (s *Set) CredentialRevoked(td, id string) bool {
	n, err := NormalizeSerial(id)
	if err != nil {
		return false
	}
	if s.deny != nil {
		if _, ok := s.deny.serials[n]; ok {
			return true
		}
	}
	if ds := s.remote[td]; ds != nil {
		if _, ok := ds.serials[n]; ok {
			return true
		}
	}
	return false
}
