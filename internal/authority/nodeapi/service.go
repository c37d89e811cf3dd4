package nodeapi

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/authority/ca"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/authority/registry"
	"github.com/wardproject/ward/internal/shared/attest"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/errs"
	"github.com/wardproject/ward/internal/shared/x509pop"
)

type nodeService struct {
	wardv1.UnimplementedNodeServer
	s *Server
}

// parseCSR checks a PKCS#10 request (DER) and returns its public key; only
// the key is used, the subject and extensions are ignored. checkSig proves
// possession of the key: required for agent SVIDs; for workload SVIDs the
// authenticated agent is entitled to the SVID whatever key it names (an
// SVID for a key it does not hold is useless to it), so the check, which
// costs more than signing the SVID, is skipped there.
func parseCSR(der []byte, checkSig bool) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, status.Error(codes.InvalidArgument, "csr is missing: send a PKCS#10 certificate request (DER) for the SVID key")
	}
	if len(der) > maxCSR {
		return nil, status.Errorf(codes.InvalidArgument, "csr is %d bytes; at most %d are accepted", len(der), maxCSR)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr does not parse as PKCS#10 DER: %v", err)
	}
	if !checkSig {
		return csr.PublicKey, nil
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr signature does not verify (sign it with the SVID key): %v", err)
	}
	return csr.PublicKey, nil
}

func (s *Server) event(ctx context.Context, op, result, errMsg string, fields map[string]string) audit.Event {
	ev := audit.NewEvent(ctx, op, result)
	ev.Error, ev.Fields = errMsg, fields
	return ev
}

// deny audits a refused call (best effort: the refusal stands either way)
// and returns err as a status.
func (s *Server) deny(ctx context.Context, op string, fields map[string]string, err error) error {
	st := status.Convert(errs.ToStatus(err))
	result := audit.ResultError
	if st.Code() == codes.PermissionDenied || st.Code() == codes.Unauthenticated {
		result = audit.ResultDenied
	}
	if aerr := s.cfg.Audit.Record(ctx, s.event(ctx, op, result, st.Message(), fields)); aerr != nil {
		s.cfg.Log.Warn("could not audit a refused call", "operation", op, "err", aerr)
	}
	return st.Err()
}

func chainDER(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

func (s *Server) bundleJSON() ([]byte, uint64, error) {
	b, err := s.cfg.CA.Bundle()
	if err != nil {
		return nil, 0, errs.ToStatus(err)
	}
	j, err := b.Marshal()
	if err != nil {
		return nil, 0, status.Errorf(codes.Internal, "encoding the trust bundle: %v", err)
	}
	seq, _ := b.SequenceNumber()
	return j, seq, nil
}

// recordIssued records the agent's own SVID under it
// (registry.RecordIssuedDisplacing: at the bound its oldest are
// deny-listed).
func (s *Server) recordIssued(ctx context.Context, id spiffeid.ID, it registry.Issued, attested bool) error {
	perItem, _, err := s.cfg.Registry.RecordIssuedDisplacing(ctx, id, []registry.Issued{it}, attested, s.displacer(id))
	if err != nil {
		return err
	}
	return perItem[0]
}

// displacer deny-lists the oldest SVIDs of an entry at its bound of
// unexpired SVIDs signed through agent (registry.IssueLimits.SVIDsPerEntry), so
// the new one can be issued: an agent crash-looping without a data
// directory, or whose responses were lost, is not refused, while the SVIDs
// out there stay bounded and eviction still revokes every one. Audited
// (policy.revoke) and counted (Config.OnSVIDsDisplaced). Without a policy
// store, or before any policy is applied, there is no deny-list to put
// them on: the signing is refused at the bound.
func (s *Server) displacer(agent spiffeid.ID) registry.Displace {
	if s.cfg.Policy == nil {
		return nil
	}
	return func(ctx context.Context, svids []registry.Issued) error {
		exp := make([]policystore.Expiring, len(svids))
		for i, sv := range svids {
			exp[i] = policystore.Expiring{Serial: sv.Serial, NotAfter: sv.NotAfter}
		}
		_, err := s.cfg.Policy.RevokeExpiring(ctx, agent.String(), exp, fmt.Sprintf("displaced: %d X509-SVIDs signed through agent %s, "+
			"whose entries held %d unexpired ones", len(svids), agent, s.cfg.Registry.Limits().SVIDsPerEntry))
		if errors.Is(err, policystore.ErrNoPolicy) {
			return errs.Errorf(errs.Precondition, "the entry already holds %d unexpired X509-SVIDs signed through agent %s and no policy "+
				"is applied to revoke the oldest: no more until one expires (apply a policy)", s.cfg.Registry.Limits().SVIDsPerEntry, agent)
		}
		if err != nil {
			return fmt.Errorf("revoking the oldest X509-SVIDs of the entry (at its bound of %d) to make room: %w", s.cfg.Registry.Limits().SVIDsPerEntry, err)
		}
		if s.cfg.OnSVIDsDisplaced != nil {
			s.cfg.OnSVIDsDisplaced(len(svids))
		}
		return nil
	}
}

// canDisplace says whether an entry at its bound could displace its
// oldest SVIDs now: a policy store with a version applied (a deny-list to
// put them on). Without, a signing at the bound is refused, and the check
// before signing must say so (or each such call would sign, then refuse).
func (s *Server) canDisplace(ctx context.Context) bool {
	if s.cfg.Policy == nil {
		return false
	}
	cur, err := s.cfg.Policy.Current(ctx)
	return err == nil && cur > 0
}

// checkRoom refuses, before anything is signed, an SVID for the agent
// itself that could not be recorded (registry.IssueRoom): an agent at its
// bounds costs no signing.
func (s *Server) checkRoom(ctx context.Context, id spiffeid.ID, attested bool) error {
	perEntry, err := s.cfg.Registry.IssueRoom(ctx, id, []string{registry.AgentSelf}, attested, s.canDisplace(ctx))
	if err != nil {
		return err
	}
	return perEntry[0]
}

// forgetWithheld drops from the agent's record the SVIDs withheld because
// the audit log was down (registry.ForgetWithheld), so the agent's
// retries do not use up its per-entry bound. Best effort: a serial left
// behind only holds a slot until it expires.
func (s *Server) forgetWithheld(ctx context.Context, agent spiffeid.ID, withheld []registry.Issued) {
	_ = s.cfg.Registry.ForgetWithheld(context.WithoutCancel(ctx), agent, withheld)
}

// signAgent signs an agent SVID for id.
func (s *Server) signAgent(ctx context.Context, id spiffeid.ID, pub crypto.PublicKey) ([]*x509.Certificate, error) {
	chain, err := s.cfg.CA.SignX509SVID(ctx, ca.SVIDRequest{ID: id, PublicKey: pub, TTL: s.cfg.AgentSVIDTTL})
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	return chain, nil
}

// recvTimeout receives one message or gives up after d.
func recvTimeout(stream wardv1.Node_AttestServer, d time.Duration) (*wardv1.AttestRequest, error) {
	type res struct {
		m   *wardv1.AttestRequest
		err error
	}
	ch := make(chan res, 1)
	go func() { m, err := stream.Recv(); ch <- res{m, err} }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, status.Errorf(codes.Canceled, "attestation: receiving: %v", r.err)
		}
		return r.m, nil
	case <-t.C:
		return nil, status.Error(codes.DeadlineExceeded, "attestation timed out waiting for the agent")
	}
}

func (n *nodeService) Attest(stream wardv1.Node_AttestServer) error {
	s := n.s
	ctx := stream.Context()
	deadline := time.Now().Add(s.cfg.AttestTimeout)
	first, err := recvTimeout(stream, s.cfg.AttestTimeout)
	if err != nil {
		return err
	}
	fields := map[string]string{}
	pub, err := parseCSR(first.Csr, true)
	if err != nil {
		return s.deny(ctx, "agent.attest", fields, err)
	}
	var (
		id    spiffeid.ID
		typ   string
		sels  []attest.Selector
		reuse func(registry.Agent, bool) error
	)
	switch step := first.Step.(type) {
	case *wardv1.AttestRequest_JoinToken:
		typ = registry.AttestJoinToken
		fields["attestation_type"] = typ
		var tokenID string
		id, tokenID, err = s.cfg.Registry.ConsumeJoinToken(ctx, step.JoinToken.GetToken())
		if tokenID != "" {
			fields["token_id"] = tokenID
		}
		if err != nil {
			return s.deny(ctx, "agent.attest", fields, err)
		}
	case *wardv1.AttestRequest_X509Pop:
		typ = registry.AttestX509Pop
		fields["attestation_type"] = typ
		if s.cfg.X509PopRoots == nil {
			return s.deny(ctx, "agent.attest", fields, status.Error(codes.FailedPrecondition,
				"x509pop attestation is not enabled on this authority: set identity.x509pop_ca_bundle"))
		}
		leaf, ss, err := verifyX509Pop(step.X509Pop.GetChain(), s.cfg.X509PopRoots, s.cfg.Clock())
		if err != nil {
			return s.deny(ctx, "agent.attest", fields, status.Error(codes.PermissionDenied, err.Error()))
		}
		id, sels = X509PopAgentID(s.td, leaf), ss
		fields["agent_id"] = id.String()
		nonce := make([]byte, x509pop.NonceSize)
		if _, err := rand.Read(nonce); err != nil {
			return status.Errorf(codes.Internal, "x509pop: no randomness for the challenge: %v", err)
		}
		if err := stream.Send(&wardv1.AttestResponse{Step: &wardv1.AttestResponse_X509PopChallenge{X509PopChallenge: nonce}}); err != nil {
			return err
		}
		resp, err := recvTimeout(stream, time.Until(deadline))
		if err != nil {
			return s.deny(ctx, "agent.attest", fields, err)
		}
		sig, ok := resp.Step.(*wardv1.AttestRequest_X509PopChallengeSignature)
		if !ok {
			return s.deny(ctx, "agent.attest", fields, status.Error(codes.InvalidArgument, "x509pop: expected the challenge signature as the second message"))
		}
		if err := x509pop.Verify(leaf.PublicKey, nonce, sig.X509PopChallengeSignature); err != nil {
			return s.deny(ctx, "agent.attest", fields, status.Errorf(codes.PermissionDenied, "x509pop: %v", err))
		}
	case *wardv1.AttestRequest_K8SPsat:
		typ = registry.AttestK8sPSAT
		fields["attestation_type"] = typ
		fields["cluster"] = printable(step.K8SPsat.GetCluster())
		res, err := s.verifyPSAT(ctx, step.K8SPsat.GetCluster(), step.K8SPsat.GetToken())
		if err != nil {
			return s.deny(ctx, "agent.attest", fields, err)
		}
		id, sels, reuse = res.id, res.sels, psatReuse(res.podUID, s.cfg.Clock())
		fields["agent_id"], fields["pod_uid"] = id.String(), res.podUID
	case *wardv1.AttestRequest_X509PopChallengeSignature:
		return s.deny(ctx, "agent.attest", fields, status.Error(codes.InvalidArgument, "attestation must start with join_token, x509pop or k8s_psat, not a challenge signature"))
	default:
		return s.deny(ctx, "agent.attest", fields, status.Error(codes.InvalidArgument, "attestation needs join_token, x509pop or k8s_psat in the first message"))
	}
	fields["agent_id"] = id.String()
	// Refused before signing: an agent whose eviction has not revoked yet
	// (RecordAttestationIf refuses it too, in its compare-and-swap), or at
	// its bounds.
	if a, err := s.cfg.Registry.GetAgent(ctx, id); err == nil && a.EvictPending {
		return s.deny(ctx, "agent.attest", fields, errs.Errorf(errs.Precondition, "agent %s may not attest: its eviction has not "+
			"revoked the SVIDs signed through it yet: run `ward agent evict %s` again until it succeeds", id, id))
	}
	if err := s.checkRoom(ctx, id, true); err != nil {
		return s.deny(ctx, "agent.attest", fields, err)
	}
	chain, err := s.signAgent(ctx, id, pub)
	if err != nil {
		return s.deny(ctx, "agent.attest", fields, err)
	}
	leaf := chain[0]
	serial := leaf.SerialNumber.Text(16)
	if _, err := s.cfg.Registry.RecordAttestationIf(ctx, id, typ, sels, serial, leaf.NotAfter, reuse); err != nil {
		return s.deny(ctx, "agent.attest", fields, err)
	}
	self := registry.Issued{Entry: registry.AgentSelf, Serial: serial, NotAfter: leaf.NotAfter}
	if err := s.recordIssued(ctx, id, self, true); err != nil {
		return s.deny(ctx, "agent.attest", fields, err)
	}
	fields["serial"], fields["expires"] = serial, leaf.NotAfter.UTC().Format(time.RFC3339)
	// Audit before release: an SVID whose issuance is not in the log is
	// never handed out.
	if err := s.cfg.Audit.Record(ctx, s.event(ctx, "agent.attest", audit.ResultOK, "", fields)); err != nil {
		s.forgetWithheld(ctx, id, []registry.Issued{self})
		return status.Errorf(codes.Unavailable, "audit log unavailable, agent SVID for %s withheld: %v", id, err)
	}
	bj, _, err := s.bundleJSON()
	if err != nil {
		return err
	}
	return stream.Send(&wardv1.AttestResponse{Step: &wardv1.AttestResponse_Svid{Svid: &wardv1.AgentSVID{
		SpiffeId: id.String(), Chain: chainDER(chain), BundleSpiffeJson: bj}}})
}

func (n *nodeService) RenewAgent(ctx context.Context, r *wardv1.RenewAgentRequest) (*wardv1.AgentSVID, error) {
	s := n.s
	id := agentFrom(ctx)
	fields := map[string]string{"agent_id": id.String()}
	pub, err := parseCSR(r.Csr, true)
	if err != nil {
		return nil, s.deny(ctx, "agent.renew", fields, err)
	}
	if err := s.checkRoom(ctx, id, false); err != nil {
		return nil, s.deny(ctx, "agent.renew", fields, err)
	}
	chain, err := s.signAgent(ctx, id, pub)
	if err != nil {
		return nil, s.deny(ctx, "agent.renew", fields, err)
	}
	leaf := chain[0]
	serial := leaf.SerialNumber.Text(16)
	from, _ := ctx.Value(agentSerialKey{}).(string)
	if _, err := s.cfg.Registry.RecordRenewal(ctx, id, from, serial, leaf.NotAfter); err != nil {
		return nil, s.deny(ctx, "agent.renew", fields, err)
	}
	self := registry.Issued{Entry: registry.AgentSelf, Serial: serial, NotAfter: leaf.NotAfter}
	if err := s.recordIssued(ctx, id, self, false); err != nil {
		return nil, s.deny(ctx, "agent.renew", fields, err)
	}
	fields["serial"], fields["expires"] = serial, leaf.NotAfter.UTC().Format(time.RFC3339)
	// The new serial is recorded but unseen: the agent retries with the SVID
	// it renewed with, which may renew again until the new one is presented
	// (registry.RecordRenewal). So is a response lost on the way.
	if err := s.cfg.Audit.Record(ctx, s.event(ctx, "agent.renew", audit.ResultOK, "", fields)); err != nil {
		s.forgetWithheld(ctx, id, []registry.Issued{self})
		return nil, status.Errorf(codes.Unavailable, "audit log unavailable, agent SVID for %s withheld: %v; retry RenewAgent with the same agent SVID", id, err)
	}
	bj, _, err := s.bundleJSON()
	if err != nil {
		return nil, err
	}
	return &wardv1.AgentSVID{SpiffeId: id.String(), Chain: chainDER(chain), BundleSpiffeJson: bj}, nil
}

func (n *nodeService) Sync(ctx context.Context, r *wardv1.SyncRequest) (*wardv1.SyncResponse, error) {
	s := n.s
	id := agentFrom(ctx)
	entries, err := s.cfg.Registry.ListEntries(ctx, registry.ListFilter{ParentID: id.String()})
	if err != nil {
		return nil, errs.ToStatus(err)
	}
	bj, seq, err := s.bundleJSON()
	if err != nil {
		return nil, err
	}
	out := &wardv1.SyncResponse{BundleSpiffeJson: bj, BundleSequence: seq, Entries: make([]*wardv1.Entry, len(entries)),
		TaintedKeyIds: s.cfg.CA.TaintedKeyIDs()}
	var feds []string
	for i, e := range entries {
		out.Entries[i] = apiconv.EntryProto(e)
		feds = append(feds, out.Entries[i].GetFederatesWith()...)
	}
	if s.cfg.FederatedBundles != nil && len(feds) > 0 {
		slices.Sort(feds)
		out.FederatedBundles = s.cfg.FederatedBundles(slices.Compact(feds))
	}
	s.auditCheckpoint(ctx, id, r.GetAuditTreeSize(), out)
	return out, nil
}

// auditCheckpoint adds the latest signed audit checkpoint and the proof
// that it extends the agent's known size. Best effort: without them the
// agent keeps what it has (and learns the entries and bundle it needs).
func (s *Server) auditCheckpoint(ctx context.Context, agent spiffeid.ID, known uint64, out *wardv1.SyncResponse) {
	if s.cfg.AuditLog == nil {
		return
	}
	cp, pub, err := s.cfg.AuditLog.LatestCheckpoint(ctx, known)
	if err != nil {
		s.cfg.Log.Warn("Sync: no audit checkpoint for the agent", "agent_id", agent.String(), "err", err)
		return
	}
	var proof [][]byte
	if known > 0 && known < cp.Size {
		if proof, err = s.cfg.AuditLog.ConsistencyProof(ctx, known, cp.Size); err != nil {
			s.cfg.Log.Warn("Sync: no audit consistency proof for the agent", "agent_id", agent.String(), "from", known, "to", cp.Size, "err", err)
			return
		}
	}
	cj, err := checkpoint.Encode(cp)
	if err != nil {
		s.cfg.Log.Warn("Sync: encoding the audit checkpoint", "err", err)
		return
	}
	pem, err := checkpoint.MarshalPublicKeyPEM(pub)
	if err != nil {
		s.cfg.Log.Warn("Sync: encoding the audit key", "err", err)
		return
	}
	out.AuditCheckpoint, out.AuditPublicKeyPem, out.AuditConsistencyProof = cj, pem, proof
}

// entryFor loads entry id and checks that agent owns it.
func (s *Server) entryFor(ctx context.Context, agent spiffeid.ID, id string) (registry.Entry, error) {
	e, err := s.cfg.Registry.GetEntry(ctx, id)
	if errs.KindOf(err) == errs.NotFound || err == nil && e.ParentID != agent.String() {
		// Same answer for "missing" and "someone else's": an agent learns
		// nothing about entries it does not serve.
		return registry.Entry{}, status.Errorf(codes.PermissionDenied, "entry %s is not registered under agent %s: sync and use one of its entries", id, agent)
	}
	if err != nil {
		return registry.Entry{}, errs.ToStatus(err)
	}
	return e, nil
}

type signed struct {
	entry  registry.Entry
	chain  []*x509.Certificate
	err    error
	result *wardv1.X509SVIDResult
}

func (n *nodeService) SignX509SVIDs(ctx context.Context, r *wardv1.SignX509SVIDsRequest) (*wardv1.SignX509SVIDsResponse, error) {
	s := n.s
	agent := agentFrom(ctx)
	if len(r.Params) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no params: send one {entry_id, csr} per SVID")
	}
	if len(r.Params) > MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "%d SVIDs requested in one call; at most %d: split the batch", len(r.Params), MaxBatch)
	}
	items := make([]signed, len(r.Params))
	pubs := make([]crypto.PublicKey, len(items))
	ids := make([]spiffeid.ID, len(items))
	// Checked first, signed after: what could not be recorded (the agent
	// evicted, an entry at its bounds) is refused before it costs a
	// signature, so an agent looping at its bound spends no signing.
	parallel(len(items), func(i int) {
		p := r.Params[i]
		it := &items[i]
		it.result = &wardv1.X509SVIDResult{EntryId: p.GetEntryId()}
		e, err := s.entryFor(ctx, agent, p.GetEntryId())
		if err != nil {
			it.err = err
			return
		}
		it.entry = e
		if pubs[i], err = parseCSR(p.GetCsr(), false); err != nil {
			it.err = err
			return
		}
		if ids[i], err = spiffeid.FromString(e.SPIFFEID); err != nil {
			it.err = status.Errorf(codes.Internal, "entry %s has a bad SPIFFE ID: %v", e.ID, err)
		}
	})
	var want []string
	var at []int
	for i := range items {
		if items[i].err == nil {
			want, at = append(want, items[i].entry.ID), append(at, i)
		}
	}
	if len(want) > 0 {
		perEntry, err := s.cfg.Registry.IssueRoom(ctx, agent, want, false, s.canDisplace(ctx))
		for j, i := range at {
			if err != nil {
				items[i].err = err
			} else if perEntry[j] != nil {
				items[i].err = perEntry[j]
			}
		}
	}
	parallel(len(items), func(i int) {
		if it := &items[i]; it.err == nil {
			it.chain, it.err = s.cfg.CA.SignX509SVID(ctx, ca.SVIDRequest{ID: ids[i], PublicKey: pubs[i], TTL: it.entry.TTL, DNSNames: it.entry.DNSNames})
		}
	})
	// Every SVID is recorded under the agent before it is released, so
	// evicting the agent revokes it (registry.RecordIssuedDisplacing:
	// bounded per entry, the oldest displaced to the deny-list at the
	// bound, refused once the agent is evicted).
	var issued []registry.Issued
	at = at[:0]
	for i := range items {
		if it := &items[i]; it.err == nil {
			issued = append(issued, registry.Issued{Entry: it.entry.ID, Serial: it.chain[0].SerialNumber.Text(16), NotAfter: it.chain[0].NotAfter})
			at = append(at, i)
		}
	}
	var displaced []registry.Issued
	if len(issued) > 0 {
		var perItem []error
		var err error
		perItem, displaced, err = s.cfg.Registry.RecordIssuedDisplacing(ctx, agent, issued, false, s.displacer(agent))
		for j, i := range at {
			if err != nil {
				items[i].err = err
			} else if perItem[j] != nil {
				items[i].err = perItem[j]
			}
		}
	}
	var ok, failed []string
	var serials, expiries, spiffeIDs []string
	var released []registry.Issued
	out := &wardv1.SignX509SVIDsResponse{Results: make([]*wardv1.X509SVIDResult, len(items))}
	for i := range items {
		it := &items[i]
		if it.err != nil {
			st := status.Convert(errs.ToStatus(it.err))
			it.result.Error = &wardv1.ItemError{Code: st.Code().String(), Message: st.Message()}
			failed = append(failed, it.result.EntryId+": "+st.Message())
		} else {
			leaf := it.chain[0]
			it.result.Chain = chainDER(it.chain)
			it.result.Expires = timestamppb.New(leaf.NotAfter)
			ok = append(ok, it.entry.ID)
			spiffeIDs = append(spiffeIDs, it.entry.SPIFFEID)
			serials = append(serials, leaf.SerialNumber.Text(16))
			released = append(released, registry.Issued{Entry: it.entry.ID, Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter})
			expiries = append(expiries, leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		out.Results[i] = it.result
	}
	fields := map[string]string{"agent_id": agent.String(), "requested": strconv.Itoa(len(items))}
	result := audit.ResultOK
	if len(ok) > 0 {
		fields["entries"], fields["spiffe_ids"] = strings.Join(ok, ","), strings.Join(spiffeIDs, ",")
		fields["serials"], fields["expires"] = strings.Join(serials, ","), strings.Join(expiries, ",")
	}
	if len(displaced) > 0 {
		d := make([]string, len(displaced))
		for i, sv := range displaced {
			d[i] = sv.Entry + ":" + sv.Serial
		}
		fields["displaced"] = strings.Join(d, ",")
	}
	if len(failed) > 0 {
		fields["failed"] = strings.Join(failed, "; ")
		if len(ok) == 0 {
			result = audit.ResultDenied
		}
	}
	ev := s.event(ctx, "svid.x509.sign", result, "", fields)
	ev.Count = len(ok)
	if err := s.cfg.Audit.Record(ctx, ev); err != nil {
		s.forgetWithheld(ctx, agent, released)
		return nil, status.Errorf(codes.Unavailable, "audit log unavailable, %d SVIDs for agent %s withheld: %v", len(ok), agent, err)
	}
	return out, nil
}

func (n *nodeService) SignJWTSVID(ctx context.Context, r *wardv1.SignJWTSVIDRequest) (*wardv1.SignJWTSVIDResponse, error) {
	s := n.s
	agent := agentFrom(ctx)
	fields := map[string]string{"agent_id": agent.String(), "entry": r.EntryId, "audience": strings.Join(r.Audience, ",")}
	e, err := s.entryFor(ctx, agent, r.EntryId)
	if err != nil {
		return nil, s.deny(ctx, "svid.jwt.sign", fields, err)
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "entry %s has a bad SPIFFE ID: %v", e.ID, err)
	}
	if r.TtlSeconds < 0 || r.TtlSeconds > int64(24*time.Hour/time.Second) {
		return nil, s.deny(ctx, "svid.jwt.sign", fields, status.Errorf(codes.InvalidArgument, "ttl_seconds %d is out of range: use 0 (the default) up to 86400", r.TtlSeconds))
	}
	// Refused before signing when it could not be recorded (the entry at
	// its bound of unexpired JWT-SVIDs): a loop costs no signature.
	if err := s.cfg.Registry.JWTRoom(ctx, agent, e.ID); err != nil {
		return nil, s.deny(ctx, "svid.jwt.sign", fields, err)
	}
	j, err := s.cfg.CA.SignJWTSVID(ctx, id, r.Audience, time.Duration(r.TtlSeconds)*time.Second)
	if err != nil {
		return nil, s.deny(ctx, "svid.jwt.sign", fields, err)
	}
	fields["spiffe_id"], fields["key_id"], fields["expires"] = id.String(), j.KeyID, j.Expiry.UTC().Format(time.RFC3339)
	fields["jti"] = j.JTI
	// Recorded under the agent before it is released, so evicting the
	// agent revokes it (its jti on the deny-list until its exp): refused
	// for an agent evicted meanwhile, or an entry or the agent at its
	// bound of unexpired JWT-SVIDs (registry.IssueLimits.JWTsPerEntry,
	// JWTsPerAgent).
	if err := s.cfg.Registry.RecordJWT(ctx, agent, e.ID, j.JTI, j.Expiry); err != nil {
		return nil, s.deny(ctx, "svid.jwt.sign", fields, err)
	}
	if err := s.cfg.Audit.Record(ctx, s.event(ctx, "svid.jwt.sign", audit.ResultOK, "", fields)); err != nil {
		// Never released: it needs no revocation, and kept it would hold
		// the entry's bound.
		_ = s.cfg.Registry.ForgetWithheld(context.WithoutCancel(ctx), agent, []registry.Issued{{Entry: e.ID, Serial: j.JTI, NotAfter: j.Expiry, JWT: true}})
		return nil, status.Errorf(codes.Unavailable, "audit log unavailable, JWT-SVID for %s withheld: %v", id, err)
	}
	return &wardv1.SignJWTSVIDResponse{Token: j.Token, Expires: timestamppb.New(j.Expiry)}, nil
}

// parallel runs f(0..n-1) on up to GOMAXPROCS goroutines.
func parallel(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
