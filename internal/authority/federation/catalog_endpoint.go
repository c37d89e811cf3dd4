package federation

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// serveCatalog answers a federated authority's long-poll for this trust
// domain's catalog. The client must present the server ID of a federated
// trust domain (spiffe://<td>/ward/server), verified with that trust
// domain's bundle and nothing else (as the revocation channel).
func (e *Endpoint) serveCatalog(w http.ResponseWriter, r *http.Request) {
	id, ok := e.peer(w, r, "catalog channel", e.cfg.OnRevocationRefused)
	if !ok {
		return
	}
	// Bounded per peer as the revocation long-polls (endpointlimits.go).
	if !e.peerSlot(w, r, id.TrustDomain(), "catalog channel", "catalog", maxLongPollsPerPeer, e.cfg.OnRevocationRefused) {
		return
	}
	defer e.slots.give(id.TrustDomain(), "catalog")
	var err error
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
	// The relationship may have been removed during the wait.
	if _, ok := e.peer(w, r, "catalog channel", e.cfg.OnRevocationRefused); !ok {
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
