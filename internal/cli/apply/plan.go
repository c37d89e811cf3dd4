package apply

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/yamlconf"
)

// Actions of a change.
const (
	Create = '+'
	Update = '~'
	Delete = '-'
)

// FieldChange is one field's value before and after.
type FieldChange struct {
	Field, Before, After string
}

// Change is one step of a plan.
type Change struct {
	Action byte
	Kind   string
	// Name is the key name, the entry's SPIFFE ID or the policy file.
	Name string
	// Detail says more in the plan (an entry's parent and selectors).
	Detail string
	// Doc is the document asking for it (nil for deletes).
	Doc    *Doc
	Fields []FieldChange
	// Lines is a policy file's diff.
	Lines []string

	federation *FederationSpec
	key        *KeySpec
	entry      *EntrySpec
	revision   int64
}

// Plan is what apply would change, in order: keys, entries, policy,
// posture.
type Plan struct {
	Keys, Federations, Entries, Policies, Posture []*Change
	// PostureFile is the posture to store as a new version (nil: it does
	// not change).
	PostureFile []byte
	// PolicyFiles is the policy set to store as a new version (nil: the
	// policy set does not change).
	PolicyFiles map[string][]byte
	// PolicyWarnings are the authority's federation warnings about
	// PolicyFiles (Check fills them): permits that do not constrain the
	// caller's trust domain, "file:line:column (policy "id")" each.
	PolicyWarnings []string
	// What is left alone.
	KeptEntries, KeptKeys, KeptFederations int
	KeptPolicies                           []string
	MaxBatch                               int
	Prune                                  bool
	checked                                bool // Check passed
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.Keys)+len(p.Federations)+len(p.Entries)+len(p.Policies)+len(p.Posture) == 0
}

// Counts returns how many creates, changes and deletes the plan holds.
func (p *Plan) Counts() (create, change, del int) {
	for _, cs := range [][]*Change{p.Keys, p.Federations, p.Entries, p.Policies, p.Posture} {
		for _, c := range cs {
			switch c.Action {
			case Create:
				create++
			case Update:
				change++
			case Delete:
				del++
			}
		}
	}
	return
}

// NewPlan compares the documents with the state. Problems that need the
// state (a classification that does not exist, a key whose classification
// would change, a policy set that does not compile) are returned with
// file, line and field, and the plan is nil.
func NewPlan(set *Set, st *State, prune bool) (*Plan, error) {
	p := &Plan{Prune: prune, MaxBatch: st.MaxBatch}
	var errs Errors
	errs = append(errs, p.planKeys(set, st)...)
	errs = append(errs, p.planFederations(set, st)...)
	p.planEntries(set, st)
	errs = append(errs, p.planPolicy(set, st)...)
	errs = append(errs, p.planPosture(set, st)...)
	if err := errs.orNil(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Plan) planKeys(set *Set, st *State) Errors {
	var errs Errors
	declared := map[string]bool{}
	for _, d := range set.Keys {
		k := d.Key
		declared[k.Name] = true
		cur, ok := st.Keys[k.Name]
		if !ok {
			if !slices.Contains(st.Classifications, k.Classification) {
				hint := ""
				if near := yamlconf.Nearest(k.Classification, st.Classifications); near != "" {
					hint = fmt.Sprintf(" (did you mean %s?)", near)
				}
				errs = append(errs, d.errAt("classification", "classification %q is not configured on the authority%s: use one of %s (ward key classifications)",
					k.Classification, hint, strings.Join(st.Classifications, ", ")))
				continue
			}
			if k.MinDecryptVersion > 1 {
				errs = append(errs, d.errAt("min_decrypt_version", "key %s does not exist yet, so it will have only version 1: leave min_decrypt_version out until it is rotated", k.Name))
				continue
			}
			c := &Change{Action: Create, Kind: KindKey, Name: k.Name, Doc: d, key: k, Detail: "classification " + k.Classification}
			if k.Purpose != "" {
				c.Detail += ", purpose " + quote(k.Purpose)
			}
			p.Keys = append(p.Keys, c)
			continue
		}
		if cur.Classification != k.Classification {
			errs = append(errs, d.errAt("classification", "key %s has classification %s; a key's classification never changes (it decides its algorithm and rotation): create a new key and re-encrypt with it", k.Name, cur.Classification))
			continue
		}
		if cur.Purpose != k.Purpose {
			errs = append(errs, d.errAt("purpose", "key %s has purpose %s; a key's purpose is set when it is created and cannot change", k.Name, quote(cur.Purpose)))
			continue
		}
		if k.MinDecryptVersion != 0 && k.MinDecryptVersion != cur.MinDecryptVersion {
			if latest := st.KeyLatest[k.Name]; k.MinDecryptVersion > latest {
				errs = append(errs, d.errAt("min_decrypt_version", "key %s has versions up to %d: min_decrypt_version %d would leave nothing to decrypt with", k.Name, latest, k.MinDecryptVersion))
				continue
			}
			p.Keys = append(p.Keys, &Change{Action: Update, Kind: KindKey, Name: k.Name, Doc: d, key: k,
				Fields: []FieldChange{{"min_decrypt_version", fmt.Sprint(cur.MinDecryptVersion), fmt.Sprint(k.MinDecryptVersion)}}})
		}
	}
	for n := range st.Keys {
		if !declared[n] {
			p.KeptKeys++
		}
	}
	return errs
}

func (p *Plan) planFederations(set *Set, st *State) Errors {
	var errs Errors
	declared := map[string]bool{}
	for _, d := range set.Federations {
		f := d.Federation
		declared[f.TrustDomain] = true
		if st.NoFederation != "" {
			errs = append(errs, d.errAt("kind", "the authority cannot take federation relationships: %s", st.NoFederation))
			continue
		}
		cur, ok := st.Federations[f.TrustDomain]
		if !ok {
			if f.Profile == "https_spiffe" && len(f.Bundle) == 0 {
				errs = append(errs, d.errAt("bundle", "a new https_spiffe relationship needs the foreign trust domain's bootstrap bundle: bundle: FILE (`ward ca bundle --format spiffe` on %s's authority, brought over out of band)", f.TrustDomain))
				continue
			}
			detail := "endpoint " + f.EndpointURL + ", profile " + f.Profile
			if f.EndpointSPIFFEID != "" {
				detail += ", endpoint ID " + f.EndpointSPIFFEID
			}
			if len(f.AllowedGateways) > 0 {
				detail += ", allowed gateways " + strings.Join(f.AllowedGateways, ",")
			}
			if f.Network {
				detail += ", network shared"
				if len(f.NetworkEndpoints) > 0 {
					detail += " (endpoints in " + strings.Join(f.NetworkEndpoints, ",") + ")"
				}
			}
			p.Federations = append(p.Federations, &Change{Action: Create, Kind: KindFederation, Name: f.TrustDomain, Detail: detail, Doc: d, federation: f})
			continue
		}
		var diff []string
		var changed []FieldChange
		for _, fc := range []FieldChange{{"endpoint_url", cur.EndpointURL, f.EndpointURL}, {"profile", cur.Profile, f.Profile}, {"endpoint_spiffe_id", cur.EndpointSPIFFEID, f.EndpointSPIFFEID},
			{"allowed_gateways", strings.Join(cur.AllowedGateways, ","), strings.Join(f.AllowedGateways, ",")},
			{"network", strconv.FormatBool(cur.Network), strconv.FormatBool(f.Network)},
			{"network_endpoint_cidrs", strings.Join(cur.NetworkEndpoints, ","), strings.Join(f.NetworkEndpoints, ",")}} {
			if fc.Before != fc.After {
				diff = append(diff, fmt.Sprintf("%s %s → %s", fc.Field, quote(fc.Before), quote(fc.After)))
				changed = append(changed, fc)
			}
		}
		switch {
		case len(diff) == 0:
		case cur.Source != "config" && len(changed) == 1 && changed[0].Field == "network_endpoint_cidrs":
			// The one field that changes in place (audited
			// federation.update; the peer's tunnels are checked again).
			p.Federations = append(p.Federations, &Change{Action: Update, Kind: KindFederation, Name: f.TrustDomain, Doc: d, federation: f,
				Fields: changed, Detail: "network_endpoint_cidrs " + quote(changed[0].Before) + " → " + quote(changed[0].After)})
		case cur.Source == "config":
			errs = append(errs, d.errAt("trust_domain", "the relationship with %s is declared in the server's configuration (federation:), which differs (%s): change it there, or drop this document", f.TrustDomain, strings.Join(diff, ", ")))
		default:
			errs = append(errs, d.errAt("trust_domain", "the relationship with %s differs (%s) and cannot change in place (only network_endpoint_cidrs can): `ward federation remove %s`, then apply again with its bootstrap bundle", f.TrustDomain, strings.Join(diff, ", "), f.TrustDomain))
		}
	}
	if len(set.Federations) == 0 {
		return errs // no Federation documents: relationships are not managed by this run
	}
	for _, td := range sortedNames(st.Federations) {
		cur := st.Federations[td]
		if declared[td] || cur.Source == "config" {
			continue
		}
		if p.Prune {
			p.Federations = append(p.Federations, &Change{Action: Delete, Kind: KindFederation, Name: td, Detail: "endpoint " + cur.EndpointURL, federation: &cur.FederationSpec})
		} else {
			p.KeptFederations++
		}
	}
	return errs
}

func (p *Plan) planEntries(set *Set, st *State) {
	byID := map[string]*StoredEntry{}
	byIdent := map[string]*StoredEntry{}
	for _, e := range st.Entries {
		byID[e.ID] = e
		byIdent[e.Identity()] = e
	}
	matched := map[string]bool{}
	match := make([]*StoredEntry, len(set.Entries))
	// Documents with an explicit id first, then by SPIFFE ID, parent and
	// selectors among the entries not yet claimed.
	for i, d := range set.Entries {
		if d.Entry.ID != "" {
			if cur, ok := byID[d.Entry.ID]; ok {
				match[i], matched[cur.ID] = cur, true
			}
		}
	}
	for i, d := range set.Entries {
		if d.Entry.ID == "" {
			if cur, ok := byIdent[d.Entry.Identity()]; ok && !matched[cur.ID] {
				match[i], matched[cur.ID] = cur, true
			}
		}
	}
	for i, d := range set.Entries {
		want, cur := d.Entry, match[i]
		if cur == nil {
			p.Entries = append(p.Entries, &Change{Action: Create, Kind: KindEntry, Name: want.SPIFFEID, Detail: entryDetail(want), Doc: d, entry: want,
				Fields: createdFields(want)})
			continue
		}
		fields := entryDiff(&cur.EntrySpec, want)
		if len(fields) == 0 {
			continue
		}
		upd := *want
		upd.ID = cur.ID
		p.Entries = append(p.Entries, &Change{Action: Update, Kind: KindEntry, Name: want.SPIFFEID, Detail: entryDetail(&cur.EntrySpec) + " [" + cur.ID + "]",
			Doc: d, entry: &upd, revision: cur.Revision, Fields: fields})
	}
	if len(set.Entries) == 0 {
		return // no Entry documents: entries are not managed by this run
	}
	for _, e := range st.Entries {
		if matched[e.ID] {
			continue
		}
		if p.Prune {
			p.Entries = append(p.Entries, &Change{Action: Delete, Kind: KindEntry, Name: e.SPIFFEID, Detail: entryDetail(&e.EntrySpec) + " [" + e.ID + "]", entry: &e.EntrySpec, revision: e.Revision})
		} else {
			p.KeptEntries++
		}
	}
}

func entryDetail(e *EntrySpec) string {
	sels := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = s.String()
	}
	return "parent " + e.ParentID + ", selectors " + strings.Join(sels, ",")
}

func entryDiff(cur, want *EntrySpec) []FieldChange {
	var out []FieldChange
	add := func(field, before, after string) {
		if before != after {
			out = append(out, FieldChange{field, before, after})
		}
	}
	add("spiffe_id", cur.SPIFFEID, want.SPIFFEID)
	add("parent_id", cur.ParentID, want.ParentID)
	add("selectors", selectorList(cur), selectorList(want))
	add("ttl", fmtTTL(cur.TTL), fmtTTL(want.TTL))
	add("dns_names", list(cur.DNSNames), list(want.DNSNames))
	add("hint", quote(cur.Hint), quote(want.Hint))
	add("federates_with", list(cur.FederatesWith), list(want.FederatesWith))
	keys := map[string]bool{}
	for k := range cur.Labels {
		keys[k] = true
	}
	for k := range want.Labels {
		keys[k] = true
	}
	for _, k := range sortedNames(keys) {
		b, bok := cur.Labels[k]
		a, aok := want.Labels[k]
		if bok != aok || a != b {
			out = append(out, FieldChange{"labels." + k, labelValue(b, bok), labelValue(a, aok)})
		}
	}
	return out
}

// createdFields are a new entry's optional fields that are set.
func createdFields(e *EntrySpec) []FieldChange {
	var out []FieldChange
	for _, f := range entryDiff(&EntrySpec{SPIFFEID: e.SPIFFEID, ParentID: e.ParentID, Selectors: e.Selectors}, e) {
		out = append(out, FieldChange{Field: f.Field, After: f.After})
	}
	return out
}

func labelValue(v string, ok bool) string {
	if !ok {
		return "(none)"
	}
	return quote(v)
}

func selectorList(e *EntrySpec) string {
	sels := make([]string, len(e.Selectors))
	for i, s := range e.Selectors {
		sels[i] = s.String()
	}
	return list(sels)
}

func list(ss []string) string { return "[" + strings.Join(ss, ", ") + "]" }

func quote(s string) string { return fmt.Sprintf("%q", s) }

// fmtTTL writes a TTL as documents do: "0" (the CA default), or the
// largest whole unit (12h, 90m, 45s).
func fmtTTL(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}

func (p *Plan) planPolicy(set *Set, st *State) Errors {
	if len(set.Policies) == 0 {
		return nil
	}
	want := map[string][]byte{}
	docs := map[string]*Doc{}
	for _, d := range set.Policies {
		want[d.Policy.Name], docs[d.Policy.Name] = d.Policy.Source, d
	}
	next := map[string][]byte{}
	if !p.Prune {
		maps.Copy(next, st.Policy)
	}
	maps.Copy(next, want)
	for _, n := range sortedNames(mergeKeys(st.Policy, want)) {
		cur, had := st.Policy[n]
		src, wanted := want[n]
		switch {
		case wanted && !had:
			p.Policies = append(p.Policies, &Change{Action: Create, Kind: KindPolicy, Name: n, Doc: docs[n], Lines: lineDiff(nil, src)})
		case wanted && !bytes.Equal(cur, src):
			p.Policies = append(p.Policies, &Change{Action: Update, Kind: KindPolicy, Name: n, Doc: docs[n], Lines: lineDiff(cur, src)})
		case !wanted && p.Prune:
			p.Policies = append(p.Policies, &Change{Action: Delete, Kind: KindPolicy, Name: n, Lines: lineDiff(cur, nil)})
		case !wanted:
			p.KeptPolicies = append(p.KeptPolicies, n)
		}
	}
	if len(p.Policies) == 0 {
		return nil
	}
	if len(next) == 0 {
		return Errors{set.Policies[0].errAt("file", "with --prune the policy set would be empty: the authority keeps at least one policy file")}
	}
	p.PolicyFiles = next
	_, err := policy.Compile(next)
	var ce *policy.CompileError
	if err == nil {
		return nil
	}
	if !errors.As(err, &ce) {
		return Errors{set.Policies[0].errAt("cedar", "the policy set does not compile: %v", err)}
	}
	var errs Errors
	for _, pr := range ce.Problems {
		d, ok := docs[pr.File]
		msg := pr.Kind + " error"
		if pr.Policy != "" {
			msg += fmt.Sprintf(" in policy %q", pr.Policy)
		}
		msg += ": " + pr.Message
		switch {
		case !ok:
			errs = append(errs, &Error{File: "policy file " + pr.File + fmt.Sprintf(" (kept from version %d; --prune drops it)", st.PolicyVersion), Line: pr.Line, Msg: msg})
		case d.Policy.Path != "":
			errs = append(errs, &Error{File: d.Policy.SourceFile, Line: pr.Line, Field: "cedar", Msg: fmt.Sprintf("%s (column %d; named by %s)", msg, pr.Column, d.Where())})
		default:
			line := d.Policy.SourceLine + pr.Line
			if pr.Line == 0 {
				line = d.FieldLine("cedar")
			}
			errs = append(errs, &Error{File: d.File, Line: line, Field: "cedar", Msg: fmt.Sprintf("%s (policy %s, line %d column %d)", msg, pr.File, pr.Line, pr.Column)})
		}
	}
	return errs
}

func mergeKeys(a, b map[string][]byte) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// lineDiff is a line diff of two texts (longest common subsequence),
// lines prefixed "+ ", "- " or "  "; unchanged runs longer than three
// lines are shortened.
func lineDiff(a, b []byte) []string {
	split := func(x []byte) []string {
		if len(x) == 0 {
			return nil
		}
		return strings.Split(strings.TrimSuffix(string(x), "\n"), "\n")
	}
	as, bs := split(a), split(b)
	if len(as)*len(bs) > 4_000_000 {
		return []string{fmt.Sprintf("(%d lines → %d lines)", len(as), len(bs))}
	}
	lcs := make([][]int, len(as)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(bs)+1)
	}
	for i := len(as) - 1; i >= 0; i-- {
		for j := len(bs) - 1; j >= 0; j-- {
			if as[i] == bs[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	var same []string
	flush := func() {
		if len(same) > 3 {
			same = append(same[:1], fmt.Sprintf("  ... (%d unchanged lines)", len(same)-2), same[len(same)-1])
		}
		out = append(out, same...)
		same = nil
	}
	i, j := 0, 0
	for i < len(as) || j < len(bs) {
		switch {
		case i < len(as) && j < len(bs) && as[i] == bs[j]:
			same = append(same, "  "+as[i])
			i, j = i+1, j+1
		case i < len(as) && (j == len(bs) || lcs[i+1][j] >= lcs[i][j+1]):
			flush()
			out = append(out, "- "+as[i])
			i++
		default:
			flush()
			out = append(out, "+ "+bs[j])
			j++
		}
	}
	flush()
	return out
}

// planPosture stores the document's posture as a new version when it
// differs from the current one (checked against the authority's
// classifications). Without a Posture document the posture is left alone,
// also with --prune: a declared posture is replaced, never removed.
func (p *Plan) planPosture(set *Set, st *State) Errors {
	d := set.Posture
	if d == nil || d.Posture.Source == nil {
		return nil
	}
	src := d.Posture.Source
	if _, err := posture.Parse(src, st.Classifications); err != nil {
		field := "posture"
		if d.Posture.Path != "" {
			field = "file"
		}
		return Errors{d.errAt(field, "%v", err)}
	}
	if bytes.Equal(src, st.Posture) {
		return nil
	}
	action := byte(Update)
	if st.Posture == nil {
		action = Create
	}
	p.Posture = append(p.Posture, &Change{Action: action, Kind: KindPosture, Name: "file", Doc: d, Lines: lineDiff(st.Posture, src)})
	p.PostureFile = src
	return nil
}

// Render writes the plan as a readable diff. With brief, creates are
// counted instead of listed one by one when there are more than 20.
func (p *Plan) Render(w io.Writer, brief bool) {
	if p.Empty() {
		fmt.Fprintln(w, "No changes: the authority already matches the documents.")
	}
	for _, group := range [][]*Change{p.Keys, p.Federations, p.Entries, p.Policies, p.Posture} {
		creates := 0
		for _, c := range group {
			if c.Action == Create {
				creates++
			}
		}
		for _, c := range group {
			if brief && creates > 20 && c.Action == Create {
				continue
			}
			p.renderChange(w, c)
		}
		if brief && creates > 20 {
			fmt.Fprintf(w, "+ %d %s documents to create (--dry-run lists them)\n", creates, strings.ToLower(group[0].Kind))
		}
	}
	create, change, del := p.Counts()
	if !p.Empty() {
		fmt.Fprintf(w, "\nPlan: %d to create, %d to change, %d to delete.\n", create, change, del)
	}
	var kept []string
	if p.KeptKeys > 0 {
		kept = append(kept, fmt.Sprintf("%d key(s) not in the documents are kept (ward apply never destroys keys)", p.KeptKeys))
	}
	if p.KeptEntries > 0 {
		kept = append(kept, fmt.Sprintf("%d entry(ies) not in the documents are kept (--prune deletes them)", p.KeptEntries))
	}
	if p.KeptFederations > 0 {
		kept = append(kept, fmt.Sprintf("%d federation relationship(s) not in the documents are kept (--prune removes them)", p.KeptFederations))
	}
	if len(p.KeptPolicies) > 0 {
		kept = append(kept, fmt.Sprintf("policy file(s) %s not in the documents stay in the set (--prune drops them)", strings.Join(p.KeptPolicies, ", ")))
	}
	for _, k := range kept {
		fmt.Fprintln(w, "Note: "+k+".")
	}
}

func (p *Plan) renderChange(w io.Writer, c *Change) {
	where := ""
	if c.Doc != nil {
		where = "  (" + c.Doc.Where() + ")"
	}
	kind := strings.ToLower(c.Kind)
	if c.Kind == KindPolicy {
		kind = "policy file"
	}
	fmt.Fprintf(w, "%c %s %s", c.Action, kind, c.Name)
	if c.Detail != "" {
		fmt.Fprintf(w, "  %s", c.Detail)
	}
	fmt.Fprintln(w, where)
	for _, f := range c.Fields {
		if c.Action == Create {
			fmt.Fprintf(w, "    %s: %s\n", f.Field, f.After)
			continue
		}
		fmt.Fprintf(w, "    %s: %s → %s\n", f.Field, f.Before, f.After)
	}
	for _, l := range c.Lines {
		fmt.Fprintf(w, "    %s\n", l)
	}
}
