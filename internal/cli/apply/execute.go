package apply

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

// maxBatch bounds one BatchEntries call (the authority's limit permitting)
// so that a request stays well inside gRPC's message size.
const maxBatch = 1000

// Result is what Execute did.
type Result struct {
	KeysCreated, KeysChanged                      int
	FederationsAdded, FederationsRemoved          int
	FederationsChanged                            int
	EntriesCreated, EntriesChanged, EntriesDelete int
	Batches                                       int
	PolicyVersion                                 uint64
	PostureVersion                                uint64
}

func (r Result) String() string {
	s := fmt.Sprintf("Applied: %d key(s) created, %d changed; %d entry(ies) created, %d changed, %d deleted in %d batch(es)",
		r.KeysCreated, r.KeysChanged, r.EntriesCreated, r.EntriesChanged, r.EntriesDelete, r.Batches)
	if r.FederationsChanged > 0 {
		s += fmt.Sprintf("; %d federation relationship(s) changed in place", r.FederationsChanged)
	}
	if r.FederationsAdded+r.FederationsRemoved > 0 {
		s += fmt.Sprintf("; %d federation relationship(s) added, %d removed", r.FederationsAdded, r.FederationsRemoved)
	}
	if r.PolicyVersion != 0 {
		s += fmt.Sprintf("; policy version %d", r.PolicyVersion)
	}
	if r.PostureVersion != 0 {
		s += fmt.Sprintf("; posture version %d", r.PostureVersion)
	}
	return s + "."
}

// maxBatchBytes bounds the encoded entries of one batch, well inside
// gRPC's default 4 MiB message limit (entries with many labels are large).
const maxBatchBytes = 2 << 20

// batches splits the entry changes by the authority's batch limit and by
// size.
func (p *Plan) batches() [][]*Change {
	size := p.MaxBatch
	if size <= 0 || size > maxBatch {
		size = maxBatch
	}
	var out [][]*Change
	start, bytes := 0, 0
	for i, c := range p.Entries {
		n := proto.Size(entryProto(c.entry, c.revision))
		if i > start && (i-start == size || bytes+n > maxBatchBytes) {
			out = append(out, p.Entries[start:i])
			start, bytes = i, 0
		}
		bytes += n
	}
	if start < len(p.Entries) {
		out = append(out, p.Entries[start:])
	}
	return out
}

func batchRequest(cs []*Change, validateOnly bool) *wardv1.BatchEntriesRequest {
	r := &wardv1.BatchEntriesRequest{ValidateOnly: validateOnly}
	for _, c := range cs {
		switch c.Action {
		case Create:
			r.Create = append(r.Create, entryProto(c.entry, 0))
		case Update:
			r.Update = append(r.Update, entryProto(c.entry, c.revision))
		case Delete:
			r.Delete = append(r.Delete, &wardv1.EntryRef{Id: c.entry.ID, Revision: c.revision})
		}
	}
	return r
}

// Check has the authority check every entry batch of the plan against
// its rules and its stored entries, writing nothing: an entry it would
// refuse is reported (with the document's file, line and field) before
// anything changes.
func Check(ctx context.Context, c *client.Client, p *Plan) error {
	for _, b := range p.batches() {
		if _, err := c.Entries.BatchEntries(ctx, batchRequest(b, true)); err != nil {
			return batchError(b, err)
		}
	}
	// The policy set is checked by the authority too (its
	// policy.federation_lint may refuse it) before keys or entries change;
	// an older authority without CheckPolicy checks it when it is stored.
	if p.PolicyFiles != nil {
		r, err := c.Policy.CheckPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: p.PolicyFiles})
		if err != nil && status.Code(err) != codes.Unimplemented {
			return fmt.Errorf("the policy set: %w (nothing was changed)", client.Unwrap(err))
		}
		p.PolicyWarnings = r.GetFederationWarnings()
	}
	p.checked = true
	return nil
}

// Execute applies the plan (after Check, which it runs if the caller did
// not): keys are created or configured, federation relationships added,
// entry batches applied (each one atomic write), relationships removed
// (--prune), and the policy set stored as one new version.
// progress (may be nil) hears of each step.
func Execute(ctx context.Context, c *client.Client, p *Plan, progress io.Writer) (Result, error) {
	var res Result
	if progress == nil {
		progress = io.Discard
	}
	if !p.checked {
		if err := Check(ctx, c, p); err != nil {
			return res, err
		}
	}
	batches := p.batches()
	for _, ch := range p.Keys {
		switch ch.Action {
		case Create:
			if _, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: ch.key.Name, Classification: ch.key.Classification, Purpose: ch.key.Purpose}); err != nil {
				return res, fmt.Errorf("%s: creating key %s: %w", ch.Doc.Where(), ch.Name, client.Unwrap(err))
			}
			res.KeysCreated++
		case Update:
			if _, err := c.Keys.ConfigureKey(ctx, &wardv1.ConfigureKeyRequest{Name: ch.key.Name, MinDecryptVersion: ch.key.MinDecryptVersion}); err != nil {
				return res, fmt.Errorf("%s: configuring key %s: %w", ch.Doc.Where(), ch.Name, client.Unwrap(err))
			}
			res.KeysChanged++
		}
	}
	for _, ch := range p.Federations {
		switch ch.Action {
		case Create:
			_, err := c.Federation.AddFederation(ctx, addFederationRequest(ch.federation))
			if err != nil {
				return res, fmt.Errorf("%s: adding the federation relationship with %s: %w", ch.Doc.Where(), ch.Name, client.Unwrap(err))
			}
			res.FederationsAdded++
		case Update:
			// In place (network_endpoint_cidrs only): the same relationship
			// without a bootstrap bundle changes it (federation.update).
			req := addFederationRequest(ch.federation)
			req.BundleSpiffeJson = nil
			if _, err := c.Federation.AddFederation(ctx, req); err != nil {
				return res, fmt.Errorf("%s: changing network_endpoint_cidrs of the federation relationship with %s: %w", ch.Doc.Where(), ch.Name, client.Unwrap(err))
			}
			res.FederationsChanged++
		}
	}
	for i, b := range batches {
		r, err := c.Entries.BatchEntries(ctx, batchRequest(b, false))
		if err != nil {
			err = batchError(b, err)
			if i > 0 {
				err = fmt.Errorf("%w (the %d batch(es) before it were applied; run ward apply again once the cause is fixed)", err, i)
			}
			return res, err
		}
		res.Batches++
		res.EntriesCreated += len(r.Created)
		res.EntriesChanged += len(r.Updated)
		res.EntriesDelete += len(r.Deleted)
		fmt.Fprintf(progress, "entries: batch %d of %d applied (%d changes)\n", i+1, len(batches), len(b))
	}
	for _, ch := range p.Federations {
		if ch.Action != Delete {
			continue
		}
		if _, err := c.Federation.RemoveFederation(ctx, &wardv1.RemoveFederationRequest{TrustDomain: ch.Name}); err != nil {
			return res, fmt.Errorf("removing the federation relationship with %s: %w", ch.Name, client.Unwrap(err))
		}
		res.FederationsRemoved++
	}
	if p.PolicyFiles != nil {
		v, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: p.PolicyFiles, Comment: "ward apply"})
		if err != nil {
			return res, fmt.Errorf("storing the policy set: %w", client.Unwrap(err))
		}
		res.PolicyVersion = v.Version
	}
	if p.PostureFile != nil {
		v, err := c.Posture.SetPosture(ctx, &wardv1.SetPostureRequest{File: p.PostureFile, Comment: "ward apply"})
		if err != nil {
			return res, fmt.Errorf("storing the posture: %w", client.Unwrap(err))
		}
		res.PostureVersion = v.Number
	}
	return res, nil
}

var batchIndex = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^(create|update|delete)\[(\d+)\]`) })

// entryFields are the document fields an authority message may name.
var entryFields = []string{"spiffe_id", "parent_id", "selector", "ttl", "dns_names", "DNS name", "hint", "federates_with", "federated", "label"}

// batchError names the document of the change the authority refused.
func batchError(b []*Change, err error) error {
	msg := status.Convert(err).Message()
	if _, ok := status.FromError(err); !ok {
		msg = err.Error()
	}
	var ch *Change
	if m := batchIndex().FindStringSubmatch(msg); m != nil {
		i, _ := strconv.Atoi(m[2])
		want := map[string]byte{"create": Create, "update": Update, "delete": Delete}[m[1]]
		for _, c := range b {
			if c.Action != want {
				continue
			}
			if i == 0 {
				ch = c
				break
			}
			i--
		}
	} else {
		for _, c := range b {
			if c.Doc != nil && strings.Contains(msg, c.Name) && strings.Contains(msg, c.entry.ParentID) {
				ch = c
				break
			}
		}
	}
	if ch == nil || ch.Doc == nil {
		return fmt.Errorf("the authority refused the entries (nothing was changed): %w", client.Unwrap(err))
	}
	// The field the message names first (after the batch index).
	field, at := "", len(msg)
	for _, f := range entryFields {
		if i := strings.Index(msg, f); i >= 0 && i < at {
			field, at = f, i
		}
	}
	if f, ok := map[string]string{"selector": "selectors", "DNS name": "dns_names", "federated": "federates_with", "label": "labels"}[field]; ok {
		field = f
	}
	line := ch.Doc.Line
	if field != "" {
		line = ch.Doc.FieldLine(field)
	}
	return Errors{{File: ch.Doc.File, Line: line, Field: field, Msg: "the authority refused this entry: " + msg}}
}

// addFederationRequest is the admin API's request creating relationship f.
func addFederationRequest(f *FederationSpec) *wardv1.AddFederationRequest {
	return &wardv1.AddFederationRequest{TrustDomain: f.TrustDomain, EndpointUrl: f.EndpointURL,
		Profile: f.Profile, EndpointSpiffeId: f.EndpointSPIFFEID, BundleSpiffeJson: f.Bundle, AllowedGateways: f.AllowedGateways,
		Network: f.Network, NetworkEndpointCidrs: f.NetworkEndpoints}
}
