package federation

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// serveCatalog answers a federated authority's long-poll for this trust
// domain's catalog. The client must present the server ID of a federated
// trust domain (spiffe://<td>/ward/server), verified with that trust
// domain's bundle and nothing else (as the revocation channel).
func (e *Endpoint) serveCatalog(w http.ResponseWriter, r *http.Request) {
	refuse := func(code int, reason, msg string) {
		if e.cfg.OnRevocationRefused != nil {
			e.cfg.OnRevocationRefused(reason)
		}
		e.cfg.Log.Warn("catalog channel: client refused", "reason", reason, "remote", r.RemoteAddr, "err", msg)
		http.Error(w, msg, code)
	}
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		refuse(http.StatusUnauthorized, "no_client_certificate", "the catalog channel needs the client's X509-SVID (spiffe://<trust domain>/ward/server)")
		return
	}
	id, _, err := x509svid.Verify(r.TLS.PeerCertificates, e.cfg.Peers)
	if err != nil {
		claimed := "an unparsable ID"
		if cid, cerr := x509svid.IDFromCert(r.TLS.PeerCertificates[0]); cerr == nil {
			claimed = cid.String()
		}
		refuse(http.StatusForbidden, "not_federated", fmt.Sprintf("client %s is not a server of a trust domain %s federates with: %v", claimed, e.cfg.CA.TrustDomain().Name(), err))
		return
	}
	if id.Path() != serverPath || id.TrustDomain() == e.cfg.CA.TrustDomain() {
		refuse(http.StatusForbidden, "not_a_server", fmt.Sprintf("client %s is not a federated authority's server ID (spiffe://<trust domain>%s)", id, serverPath))
		return
	}
	q := r.URL.Query()
	var after uint64
	if a := q.Get("after"); a != "" {
		if after, err = strconv.ParseUint(a, 10, 64); err != nil {
			http.Error(w, "after: not a sequence number", http.StatusBadRequest)
			return
		}
	}
	wait := MaxRevocationWait
	if ws := q.Get("wait"); ws != "" {
		if d, err := time.ParseDuration(ws); err == nil && d >= 0 && d < wait {
			wait = d
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	c, err := e.cfg.Catalog.WaitCatalog(ctx, after)
	if err != nil {
		http.Error(w, "catalog unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	c.TrustDomain = e.cfg.CA.TrustDomain().Name()
	c.Services = catalog.Public(c.Services)
	if c.Services == nil {
		c.Services = []catalog.Service{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(catalogHeader, "1")
	_ = json.NewEncoder(w).Encode(c)
}
