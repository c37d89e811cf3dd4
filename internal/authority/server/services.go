package server

import (
	"context"
	"crypto"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/kms"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/policy"
)

// principalsFunc reports every registered SPIFFE ID's labels, for the
// policy versions enforcement points receive. Entries sharing one SPIFFE
// ID are merged in entry-ID order (a later entry's label wins).
func (s *Server) principalsFunc(st *unsealedState) policystore.PrincipalsFunc {
	return func(ctx context.Context) (map[string]policy.Principal, error) {
		id := st.ident.Load()
		if id == nil {
			return nil, nil
		}
		entries, err := id.reg.ListEntries(ctx, registry.ListFilter{})
		if err != nil {
			return nil, err
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
		out := map[string]policy.Principal{}
		for _, e := range entries {
			if len(e.Labels) == 0 {
				continue
			}
			p := out[e.SPIFFEID]
			if p.Labels == nil {
				p.Labels = map[string]string{}
			}
			for k, v := range e.Labels {
				p.Labels[k] = v
			}
			out[e.SPIFFEID] = p
		}
		return out, nil
	}
}

// taintedKeysFunc reports the CA's tainted key IDs, which every new policy
// version carries on its deny-list (none while identity is not running).
func (s *Server) taintedKeysFunc(st *unsealedState) func() []string {
	return func() []string {
		id := st.ident.Load()
		if id == nil || id.ca == nil {
			return nil
		}
		return id.ca.TaintedKeyIDs()
	}
}

// auditSource gives the Node API's Sync the audit log's signed head and
// consistency proofs (agents remember the newest checkpoint they verified).
type auditSource struct {
	log    *audit.Log
	prover *audit.Prover
}

func newAuditSource(l *audit.Log) auditSource { return auditSource{log: l, prover: audit.NewProver(l)} }

// LatestCheckpoint serves agents' Sync and federated witnesses: the newest
// checkpoint, which may lag by the checkpoint interval (audit.Log.Latest),
// so that callers in a loop cannot make the authority sign on demand.
func (a auditSource) LatestCheckpoint(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, crypto.PublicKey, error) {
	cp, err := a.log.Latest(ctx, atLeast)
	return cp, a.log.PublicKey(), err
}

func (a auditSource) ConsistencyProof(ctx context.Context, oldSize, newSize uint64) ([][]byte, error) {
	return a.prover.ConsistencyProof(ctx, oldSize, newSize)
}

// auditWitness lets the KMS check every key record it loads against the
// newest revision the audit log recorded for it (rollback detection).
type auditWitness struct{ idx *audit.RevisionIndex }

func (w auditWitness) Latest(ctx context.Context, name string) (kms.Mark, bool, error) {
	m, ok, err := w.idx.Latest(ctx, name)
	return kms.Mark{Revision: m.Revision, Digest: m.Digest, Seq: m.Seq, Destroyed: m.Destroyed}, ok, err
}

// Synced reads the audit log once for a listing of keys (kms.SyncedWitness).
func (w auditWitness) Synced(ctx context.Context) (kms.Witness, error) {
	lookup, err := w.idx.Synced(ctx)
	if err != nil {
		return nil, err
	}
	return syncedWitness(lookup), nil
}

// syncedWitness answers from one reading of the audit log.
type syncedWitness func(key string) (audit.Mark, bool)

func (w syncedWitness) Latest(_ context.Context, name string) (kms.Mark, bool, error) {
	m, ok := w(name)
	return kms.Mark{Revision: m.Revision, Digest: m.Digest, Seq: m.Seq, Destroyed: m.Destroyed}, ok, nil
}

// kmsWitness is the KMS option that ties key records to the audit log l.
func kmsWitness(l *audit.Log) kms.Option {
	return kms.WithWitness(auditWitness{idx: audit.NewRevisionIndex(l)})
}

// integrityCollector exports the rollbacks the authority detected since it
// was last unsealed: key records older than the audit log says, and the
// stored audit log going backwards.
type integrityCollector struct{ s *Server }

var (
	keyRollbackDesc = prometheus.NewDesc("ward_kms_key_record_rollbacks_detected_total",
		"Key records refused since unseal because they were older than (or differed from) the revision the audit log recorded.", nil, nil)
	auditRollbackDesc = prometheus.NewDesc("ward_audit_rollbacks_detected_total",
		"Times since unseal the stored audit log was found shorter than, or different from, what the authority had already seen.", nil, nil)
)

func (c *integrityCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keyRollbackDesc
	ch <- auditRollbackDesc
}

func (c *integrityCollector) Collect(ch chan<- prometheus.Metric) {
	var keys, logs float64
	if st, err := c.s.state(); err == nil {
		keys, logs = float64(st.kms.RollbacksDetected()), float64(st.audit.RollbacksDetected())
	}
	ch <- prometheus.MustNewConstMetric(keyRollbackDesc, prometheus.CounterValue, keys)
	ch <- prometheus.MustNewConstMetric(auditRollbackDesc, prometheus.CounterValue, logs)
}
