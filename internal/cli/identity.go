package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/atomicfile"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(entryCommand()) }, "entry")
	register(func(root *cobra.Command) { root.AddCommand(tokenCommand()) }, "token")
	register(func(root *cobra.Command) { root.AddCommand(caCommand()) }, "ca")
}

// identityClients are the identity admin services on the admin socket.
type identityClients struct {
	entries wardv1.EntriesClient
	agents  wardv1.AgentsClient
	ca      wardv1.CAClient
}

// withIdentity runs f against the authority's admin socket.
func withIdentity(cmd *cobra.Command, f func(ctx context.Context, c identityClients) error) error {
	return withClient(cmd, func(ctx context.Context, c *client.Client) error {
		return f(ctx, identityClients{c.Entries, c.Agents, c.CA})
	})
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	// protojson's spacing is deliberately unstable; re-indent for a stable,
	// diffable output.
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

func selectorsString(ss []*wardv1.Selector) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Type + ":" + s.Value
	}
	return strings.Join(out, ",")
}

func printEntry(w io.Writer, e *wardv1.Entry) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Entry ID:\t%s\n", e.Id)
	fmt.Fprintf(tw, "SPIFFE ID:\t%s\n", e.SpiffeId)
	fmt.Fprintf(tw, "Parent ID:\t%s\n", e.ParentId)
	for _, s := range e.Selectors {
		fmt.Fprintf(tw, "Selector:\t%s:%s\n", s.Type, s.Value)
	}
	ttl := "CA default"
	if e.TtlSeconds > 0 {
		ttl = (time.Duration(e.TtlSeconds) * time.Second).String()
	}
	fmt.Fprintf(tw, "X509-SVID TTL:\t%s\n", ttl)
	for _, d := range e.DnsNames {
		fmt.Fprintf(tw, "DNS name:\t%s\n", d)
	}
	if e.Hint != "" {
		fmt.Fprintf(tw, "Hint:\t%s\n", e.Hint)
	}
	for _, f := range e.FederatesWith {
		fmt.Fprintf(tw, "Federates with:\t%s\n", f)
	}
	keys := make([]string, 0, len(e.Labels))
	for k := range e.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "Label:\t%s=%s\n", k, e.Labels[k])
	}
	fmt.Fprintf(tw, "Revision:\t%d\n", e.Revision)
	fmt.Fprintf(tw, "Created:\t%s\n", fmtTime(e.Created))
	fmt.Fprintf(tw, "Updated:\t%s\n", fmtTime(e.Updated))
	tw.Flush()
}

// entryFlags are the writable fields of an entry.
type entryFlags struct {
	spiffeID, parent, hint string
	selectors, dns, labels []string
	federates              []string
	ttl                    time.Duration
}

func (f *entryFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.spiffeID, "spiffe-id", "", "the workload's SPIFFE ID, spiffe://TRUST-DOMAIN/PATH")
	cmd.Flags().StringVar(&f.parent, "parent", "", "the `SPIFFE-ID` of the agent that serves it (see: ward agent list), or of a parent entry")
	cmd.Flags().StringArrayVar(&f.selectors, "selector", nil, "TYPE:VALUE the workload must match, e.g. unix:uid:1000 (repeatable; all must match)")
	cmd.Flags().DurationVar(&f.ttl, "ttl", 0, "X509-SVID lifetime, e.g. 1h (default: the CA's svid_ttl)")
	cmd.Flags().StringArrayVar(&f.dns, "dns", nil, "DNS name to put in the SVID (repeatable)")
	cmd.Flags().StringArrayVar(&f.labels, "label", nil, "key=value attribute for policy (repeatable)")
	cmd.Flags().StringVar(&f.hint, "hint", "", "hint for workloads that receive several SVIDs")
	cmd.Flags().StringArrayVar(&f.federates, "federates-with", nil, "foreign trust domain whose bundle accompanies the SVID (repeatable)")
}

func parseSelectorFlags(ss []string) ([]*wardv1.Selector, error) {
	out := make([]*wardv1.Selector, 0, len(ss))
	for _, s := range ss {
		typ, val, ok := strings.Cut(s, ":")
		if !ok || typ == "" || val == "" {
			return nil, fmt.Errorf("--selector %q: use TYPE:VALUE, e.g. unix:uid:1000 or unix:sha256:<hex>", s)
		}
		out = append(out, &wardv1.Selector{Type: typ, Value: val})
	}
	return out, nil
}

// apply sets the fields whose flags were given on e.
func (f *entryFlags) apply(cmd *cobra.Command, e *wardv1.Entry) error {
	ch := cmd.Flags().Changed
	if ch("spiffe-id") {
		e.SpiffeId = f.spiffeID
	}
	if ch("parent") {
		e.ParentId = f.parent
	}
	if ch("selector") {
		s, err := parseSelectorFlags(f.selectors)
		if err != nil {
			return err
		}
		e.Selectors = s
	}
	if ch("ttl") {
		if f.ttl < 0 || f.ttl%time.Second != 0 {
			return fmt.Errorf("--ttl %s: use whole seconds, e.g. 30m or 1h (0 = the CA default)", f.ttl)
		}
		e.TtlSeconds = int64(f.ttl / time.Second)
	}
	if ch("dns") {
		e.DnsNames = f.dns
	}
	if ch("label") {
		l, err := parseKV("label", f.labels)
		if err != nil {
			return err
		}
		e.Labels = l
	}
	if ch("hint") {
		e.Hint = f.hint
	}
	if ch("federates-with") {
		e.FederatesWith = f.federates
	}
	return nil
}

func entryCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "entry", Short: "Manage registration entries: which workloads, under which agent, get which SPIFFE ID"}

	var cf entryFlags
	var asJSON bool
	create := &cobra.Command{
		Use:   "create --spiffe-id spiffe://TD/PATH --parent AGENT-ID --selector TYPE:VALUE...",
		Short: "Register a workload identity",
		Example: "  ward entry create --spiffe-id spiffe://prod.example.org/payments \\\n" +
			"    --parent spiffe://prod.example.org/ward/agent/join_token/1a2b3c4d5e6f7a8b \\\n" +
			"    --selector unix:uid:1000 --selector unix:path:/usr/bin/payments --ttl 1h --dns payments.internal",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case cf.spiffeID == "":
				return fmt.Errorf("--spiffe-id is required, e.g. spiffe://TRUST-DOMAIN/payments")
			case cf.parent == "":
				return fmt.Errorf("--parent is required: the agent's SPIFFE ID (see `ward agent list`)")
			case len(cf.selectors) == 0:
				return fmt.Errorf("give at least one --selector, e.g. unix:uid:1000")
			}
			e := &wardv1.Entry{}
			if err := cf.apply(cmd, e); err != nil {
				return err
			}
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				out, err := c.entries.CreateEntry(ctx, &wardv1.CreateEntryRequest{Entry: e})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), out)
				}
				printEntry(cmd.OutOrStdout(), out)
				return nil
			})
		},
	}
	cf.add(create)
	create.Flags().BoolVar(&asJSON, "json", false, "print the entry as JSON")

	var parent, prefix string
	list := &cobra.Command{
		Use: "list", Short: "List entries", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				r, err := c.entries.ListEntries(ctx, &wardv1.ListEntriesRequest{ParentId: parent, SpiffeIdPrefix: prefix})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), r)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ENTRY ID\tSPIFFE ID\tPARENT\tSELECTORS\tTTL")
				for _, e := range r.Entries {
					ttl := "-"
					if e.TtlSeconds > 0 {
						ttl = (time.Duration(e.TtlSeconds) * time.Second).String()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Id, e.SpiffeId, e.ParentId, selectorsString(e.Selectors), ttl)
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&parent, "parent", "", "only entries under this agent")
	list.Flags().StringVar(&prefix, "spiffe-id-prefix", "", "only entries whose SPIFFE ID starts with this")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	show := &cobra.Command{
		Use: "show ENTRY-ID", Short: "Show one entry", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				e, err := c.entries.GetEntry(ctx, &wardv1.GetEntryRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), e)
				}
				printEntry(cmd.OutOrStdout(), e)
				return nil
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var uf entryFlags
	update := &cobra.Command{
		Use: "update ENTRY-ID [flags]", Short: "Change an entry: the flags you give replace those fields, the rest stay",
		Example: "  ward entry update 0f3c... --ttl 30m --selector unix:uid:1000 --selector unix:gid:50",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				cur, err := c.entries.GetEntry(ctx, &wardv1.GetEntryRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if err := uf.apply(cmd, cur); err != nil {
					return err
				}
				// Read-modify-write at the revision read: a concurrent change
				// makes this fail instead of being overwritten.
				out, err := c.entries.UpdateEntry(ctx, &wardv1.UpdateEntryRequest{Entry: cur, ExpectRevision: cur.Revision})
				if err != nil {
					return err
				}
				printEntry(cmd.OutOrStdout(), out)
				return nil
			})
		},
	}
	uf.add(update)

	del := &cobra.Command{
		Use: "delete ENTRY-ID", Short: "Delete an entry (workloads stop receiving new SVIDs for it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				if _, err := c.entries.DeleteEntry(ctx, &wardv1.DeleteEntryRequest{Id: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Entry %s deleted.\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(create, list, show, update, del)
	return cmd
}

func tokenCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Create single-use join tokens for node attestation"}
	var ttl time.Duration
	var agentPath string
	var quiet bool
	create := &cobra.Command{
		Use: "create", Short: "Create a join token (shown once; single use)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl <= 0 || ttl%time.Second != 0 {
				return fmt.Errorf("--ttl %s: use a positive number of whole seconds, e.g. 10m", ttl)
			}
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				t, err := c.agents.CreateJoinToken(ctx, &wardv1.CreateJoinTokenRequest{TtlSeconds: int64(ttl / time.Second), AgentPath: agentPath})
				if err != nil {
					return err
				}
				if quiet {
					_, err := fmt.Fprintln(cmd.OutOrStdout(), t.Token)
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "Token:\t%s\n", t.Token)
				fmt.Fprintf(tw, "Agent ID:\t%s\n", t.AgentId)
				fmt.Fprintf(tw, "Expires:\t%s\n", fmtTime(t.Expires))
				tw.Flush()
				fmt.Fprintln(cmd.ErrOrStderr(), "\nThe token is shown only now and works once: put it in the agent's join_token (or join_token_file).")
				return nil
			})
		},
	}
	create.Flags().DurationVar(&ttl, "ttl", 10*time.Minute, "how long the token stays valid")
	create.Flags().StringVar(&agentPath, "agent-path", "", "agent ID path: spiffe://TD/ward/agent/<PATH> (default join_token/<token id>)")
	create.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the token (for scripts)")
	cmd.AddCommand(create)
	return cmd
}

// agentAdminCommands are `ward agent list` and `ward agent evict`, added
// under the `ward agent` run command (agent.go).
func agentAdminCommands() []*cobra.Command {
	var asJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List attested agents", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				r, err := c.agents.ListAgents(ctx, &wardv1.ListAgentsRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), r)
				}
				return printAgents(cmd.OutOrStdout(), r.Agents)
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	evict := &cobra.Command{
		Use: "evict AGENT-ID", Short: "Evict an agent: it can no longer renew, sync or sign and must attest again; the SVIDs signed through it are revoked", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				a, err := c.agents.EvictAgent(ctx, &wardv1.EvictAgentRequest{SpiffeId: args[0]})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Agent %s evicted: it must attest again (new join token or x509pop) to get SVIDs.\n", a.SpiffeId)
				fmt.Fprintf(cmd.OutOrStdout(), "Revoked %d X509-SVIDs still valid that were signed through it (its workloads' and its own): "+
					"proxies, the Node API and federated peers refuse them now (deny-list, until each one expires).\n", a.RevokedSvids)
				if a.RevokedJwtSvids == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "No JWT-SVID minted through it was still unexpired.")
					return nil
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Revoked %d JWT-SVIDs not yet expired that were minted through it: every ward agent's "+
					"Workload API (ValidateJWTSVID), here and at federated peers, refuses them now; relying parties that validate "+
					"offline against the bundle still accept them until they expire.\n", a.RevokedJwtSvids)
				return nil
			})
		},
	}
	return []*cobra.Command{list, evict}
}

// agentState is an agent's STATE in `ward agent list`: "evict pending"
// when an eviction marked it but has not revoked the SVIDs signed through
// it yet (run `ward agent evict` again until it succeeds).
func agentState(a *wardv1.Agent) string {
	switch {
	case a.EvictPending:
		return "evict pending"
	case a.Evicted:
		return "evicted"
	}
	return "active"
}

// printAgents is `ward agent list`'s table.
func printAgents(w io.Writer, agents []*wardv1.Agent) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SPIFFE ID\tATTESTATION\tSTATE\tSVID SERIAL\tSVID EXPIRES\tLAST SEEN")
	pending := 0
	for _, a := range agents {
		if a.EvictPending {
			pending++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.SpiffeId, a.AttestationType, agentState(a), a.Serial, fmtTime(a.Expires), fmtTime(a.LastSeen))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if pending > 0 {
		_, err := fmt.Fprintf(w, "\n%d agent(s) evict pending: the eviction has not revoked the SVIDs signed through them yet; "+
			"run `ward agent evict AGENT-ID` again until it succeeds (until then they may not attest again).\n", pending)
		return err
	}
	return nil
}

func printCA(w io.Writer, s *wardv1.CAStatus) {
	fmt.Fprintf(w, "Trust domain:     %s\n", s.TrustDomain)
	fmt.Fprintf(w, "Bundle sequence:  %d\n", s.BundleSequence)
	fmt.Fprintf(w, "Refresh hint:     %s\n\n", time.Duration(s.RefreshHintSeconds)*time.Second)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ID\tKIND\tSTATE\tNOT BEFORE\tNOT AFTER\tACTIVATED")
	for _, k := range s.Keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.Id, k.Kind, k.State, fmtTime(k.NotBefore), fmtTime(k.NotAfter), fmtTime(k.Activated))
	}
	tw.Flush()
}

func caCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Inspect and rotate the trust domain's CA: show, rotate, taint, bundle"}
	var asJSON bool
	show := &cobra.Command{
		Use: "show", Short: "Show the CA keys (root, intermediates, JWT keys) and their states", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				s, err := c.ca.ShowCA(ctx, &wardv1.ShowCARequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(cmd.OutOrStdout(), s)
				}
				printCA(cmd.OutOrStdout(), s)
				return nil
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON (includes certificates as PEM)")

	var root, prepare bool
	rotate := &cobra.Command{
		Use:   "rotate [--root [--prepare]]",
		Short: "Prepare and activate a new intermediate and JWT key now (--root: a new root)",
		Long: "Without --root, a new intermediate and JWT key sign from now on; the old ones retire and stay\n" +
			"trusted until what they signed has expired. With --root, a new root (and intermediate under it)\n" +
			"becomes active at once: agents pick it up from the bundle; SVIDs chained to the old root stay\n" +
			"valid while the old root remains in the bundle. With --root --prepare, the new root is only\n" +
			"published in the bundle; a later --root activates it. Federated trust domains fetch bundles on\n" +
			"their refresh hint: wait several hints between the two.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				s, err := c.ca.RotateCA(ctx, &wardv1.RotateCARequest{Root: root, Prepare: prepare})
				if err != nil {
					return err
				}
				printCA(cmd.OutOrStdout(), s)
				return nil
			})
		},
	}
	rotate.Flags().BoolVar(&root, "root", false, "rotate the root instead of the intermediate")
	rotate.Flags().BoolVar(&prepare, "prepare", false, "with --root: publish a new root without activating it")

	var yes bool
	taint := &cobra.Command{
		Use:   "taint KEY-ID",
		Short: "Distrust a compromised CA key everywhere now (its SVIDs must be re-issued)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				if err := confirm(cmd, fmt.Sprintf("Taint CA key %s? Everything it signed stops being trusted and must be re-issued.", args[0])); err != nil {
					return err
				}
			}
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				s, err := c.ca.TaintCAKey(ctx, &wardv1.TaintCAKeyRequest{KeyId: args[0]})
				if err != nil {
					return err
				}
				printCA(cmd.OutOrStdout(), s)
				return nil
			})
		},
	}
	taint.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")

	var format, out string
	bundle := &cobra.Command{
		Use:   "bundle [--format pem|spiffe] [-o FILE]",
		Short: "Print the trust bundle: PEM roots (default) or the SPIFFE bundle JSON (JWKS)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "pem" && format != "spiffe" {
				return fmt.Errorf("--format %q: use pem or spiffe", format)
			}
			return withIdentity(cmd, func(ctx context.Context, c identityClients) error {
				b, err := c.ca.GetBundle(ctx, &wardv1.GetBundleRequest{})
				if err != nil {
					return err
				}
				data := b.X509Pem
				if format == "spiffe" {
					data = append(append([]byte(nil), b.SpiffeJson...), '\n')
				}
				if out == "" || out == "-" {
					_, err := cmd.OutOrStdout().Write(data)
					return err
				}
				return atomicfile.Write(out, data, 0o644)
			})
		},
	}
	bundle.Flags().StringVar(&format, "format", "pem", "pem or spiffe")
	bundle.Flags().StringVarP(&out, "output", "o", "", "write to FILE (atomically) instead of stdout")

	cmd.AddCommand(show, rotate, taint, bundle)
	return cmd
}
