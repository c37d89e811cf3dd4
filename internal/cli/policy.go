package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/policy"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(policyCommand()) }, "policy")
	register(func(root *cobra.Command) { root.AddCommand(revokeCommand()) }, "revoke")
}

// readPolicyFiles reads .cedar files (directories: every *.cedar inside,
// recursively) keyed by the path as given, so errors name it.
func readPolicyFiles(paths []string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			files[p] = b
			continue
		}
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".cedar") {
				return err
			}
			b, err := os.ReadFile(path)
			files[path] = b
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no policy files found in %v: give .cedar files or directories holding them", paths)
	}
	return files, nil
}

func fetchBundle(ctx context.Context, c *client.Client, version uint64) (policy.Bundle, *wardv1.PolicyVersion, error) {
	pv, err := c.Policy.GetPolicy(ctx, &wardv1.GetPolicyRequest{Version: version})
	if err != nil {
		return policy.Bundle{}, nil, err
	}
	b, err := policy.ParseBundle(pv.BundleJson)
	return b, pv, err
}

func printVersions(cmd *cobra.Command, vs []*wardv1.PolicyVersion) error {
	t := newVersionTable(cmd.OutOrStdout(), "POLICIES", "DENY-LIST", "NOTE")
	for _, v := range vs {
		note := v.Comment
		if v.RestoredFrom != 0 {
			note = strings.TrimSpace(fmt.Sprintf("rollback to %d. %s", v.RestoredFrom, v.Comment))
		}
		t.row(v.Version, v.Current, v.Created, v.Actor, v.PolicyCount, v.DenyListSize, note)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(vs) > 0 && vs[0].Version > 1 {
		// the list is oldest first (policystore.List)
		fmt.Fprintf(cmd.OutOrStdout(), "Versions 1 to %d were pruned: the authority keeps the current version and policy.keep_versions before it (docs/policy.md).\n", vs[0].Version-1)
	}
	return nil
}

// printWarnings writes compile warnings to stderr, so stdout (and --json)
// stays what scripts parse.
func printWarnings(cmd *cobra.Command, ws []policy.Problem) {
	for _, w := range ws {
		fmt.Fprintln(cmd.ErrOrStderr(), w.String())
	}
}

func policyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Authorization policy (Cedar): apply, lint, list, show, diff, rollback, lint-mode, test"}
	var comment string
	var strict bool

	apply := &cobra.Command{
		Use: "apply FILE|DIR...", Short: "Validate the files as one policy set and store it as a new version (all or nothing)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := readPolicyFiles(args)
			if err != nil {
				return err
			}
			// Validate locally first: the same compiler the authority and
			// the proxies use, so errors come back with file:line:column.
			set, err := policy.Compile(files)
			if err != nil {
				return err
			}
			if ws := set.Warnings(); len(ws) > 0 {
				printWarnings(cmd, ws)
				if strict {
					return fmt.Errorf("policy set refused: %d warning(s) and --strict; nothing was applied", len(ws))
				}
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.Policy.ApplyPolicy(ctx, &wardv1.ApplyPolicyRequest{Files: files, Comment: comment})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Policy version %d applied: %d policies from %d file(s), digest %s.\n", v.Version, v.PolicyCount, len(files), v.Digest[:16])
				return nil
			})
		},
	}
	apply.Flags().StringVarP(&comment, "message", "m", "", "a note stored with the version")
	apply.Flags().BoolVar(&strict, "strict", false, "refuse the set (store nothing) when it has warnings")

	lint := &cobra.Command{
		Use:   "lint FILE|DIR...",
		Short: "Compile the files offline and print errors and warnings (exit 1 on errors, or on warnings with --strict)",
		Long: `lint runs the compiler ward policy apply runs, without an authority. Warnings are things that
are valid Cedar but probably wrong; today: a permit that does not constrain the caller's trust
domain, so workloads of federated trust domains with the same path or labels match it too
(fix: principal in TrustDomain::"<yours>", or @federated("allow") when it is meant to).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := readPolicyFiles(args)
			if err != nil {
				return err
			}
			set, err := policy.Compile(files)
			if err != nil {
				return err
			}
			ws := set.Warnings()
			printWarnings(cmd, ws)
			fmt.Fprintf(cmd.OutOrStdout(), "%d policies in %d file(s): %d warning(s).\n", set.Len(), len(files), len(ws))
			if strict && len(ws) > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d warning(s) and --strict", len(ws))}
			}
			return nil
		},
	}
	lint.Flags().BoolVar(&strict, "strict", false, "exit 1 when there are warnings")

	list := &cobra.Command{
		Use: "list", Short: "List policy versions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Policy.ListPolicyVersions(ctx, &wardv1.ListPolicyVersionsRequest{})
				if err != nil {
					return err
				}
				return printVersions(cmd, r.Versions)
			})
		},
	}

	var asJSON bool
	show := &cobra.Command{
		Use: "show [VERSION]", Short: "Show a policy version's files and deny-list (default: current)", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var n uint64
			if len(args) == 1 {
				var err error
				if n, err = versionArg(args[0], "ward policy list"); err != nil {
					return err
				}
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				b, pv, err := fetchBundle(ctx, c, n)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if asJSON {
					_, err := out.Write(append(pv.BundleJson, '\n'))
					return err
				}
				fmt.Fprintf(out, "# policy version %d (current: %t), %d policies, created %s by %s\n", pv.Version, pv.Current, pv.PolicyCount, pv.Created.AsTime().UTC().Format(time.RFC3339), pv.Actor)
				names := make([]string, 0, len(b.Files))
				for name := range b.Files {
					names = append(names, name)
				}
				sort.Strings(names)
				for _, name := range names {
					fmt.Fprintf(out, "\n# --- %s ---\n%s\n", name, strings.TrimRight(string(b.Files[name]), "\n"))
				}
				fmt.Fprintf(out, "\n# deny-list: %d SPIFFE IDs, %d serials\n", len(b.DenyList.SPIFFEIDs), len(b.DenyList.Serials))
				for _, id := range b.DenyList.SPIFFEIDs {
					fmt.Fprintf(out, "#   id     %s\n", id)
				}
				for _, s := range b.DenyList.Serials {
					fmt.Fprintf(out, "#   serial %s\n", s)
				}
				return nil
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print the bundle JSON")

	diff := &cobra.Command{
		Use: "diff [FROM [TO]]", Short: "What changed between two versions (default: the previous and the current)", Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			nums := make([]uint64, len(args))
			for i, a := range args {
				n, err := versionArg(a, "ward policy list")
				if err != nil {
					return err
				}
				nums[i] = n
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var to uint64
				if len(nums) == 2 {
					to = nums[1]
				}
				toB, toV, err := fetchBundle(ctx, c, to)
				if err != nil {
					return err
				}
				from := toV.Version - 1
				if len(nums) >= 1 {
					from = nums[0]
				}
				var oldSet *policy.Set
				if from > 0 {
					fromB, _, err := fetchBundle(ctx, c, from)
					if err != nil {
						return err
					}
					if oldSet, err = policy.CompileBundle(fromB); err != nil {
						return err
					}
				}
				newSet, err := policy.CompileBundle(toB)
				if err != nil {
					return err
				}
				d := policy.DiffSets(oldSet, newSet)
				fmt.Fprintf(cmd.OutOrStdout(), "# policy diff %d -> %d\n", from, toV.Version)
				if d.Empty() {
					fmt.Fprintln(cmd.OutOrStdout(), "no changes")
					return nil
				}
				fmt.Fprint(cmd.OutOrStdout(), d.String())
				return nil
			})
		},
	}

	rollback := &cobra.Command{
		Use: "rollback VERSION", Short: "Store a new version with the policies of VERSION (the deny-list is kept)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := versionArg(args[0], "ward policy list")
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.Policy.RollbackPolicy(ctx, &wardv1.RollbackPolicyRequest{Version: n, Comment: comment})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Policy version %d applied: the policies of version %d, with the current deny-list.\n", v.Version, n)
				return nil
			})
		},
	}
	rollback.Flags().StringVarP(&comment, "message", "m", "", "a note stored with the version")

	cmd.AddCommand(apply, lint, list, show, diff, rollback, policyLintModeCommand(), policyTestCommand())
	return cmd
}

// policyLintModeCommand shows or sets the cluster's stored federation lint
// mode (docs/policy.md#strict-is-cluster-wide).
func policyLintModeCommand() *cobra.Command {
	var comment string
	c := &cobra.Command{
		Use: "lint-mode [warn|strict]", Short: "Show or set the federation lint mode every authority sharing the store enforces (audited)",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var r *wardv1.PolicyLintModeResponse
				var err error
				if len(args) == 0 {
					r, err = c.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{})
				} else {
					r, err = c.Policy.SetPolicyLintMode(ctx, &wardv1.SetPolicyLintModeRequest{Mode: args[0], Comment: comment})
				}
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "Federation lint mode (cluster): %s", r.Mode)
				if r.Actor != "" {
					fmt.Fprintf(out, " (set by %s at %s)", r.Actor, r.Changed.AsTime().UTC().Format(time.RFC3339))
				}
				fmt.Fprintln(out)
				if r.LocalStrict && r.Mode != "strict" {
					fmt.Fprintln(out, "This authority's policy.federation_lint is strict: it still refuses such sets, and records strict again at its next unseal.")
				}
				printCurrentLintWarnings(out, r)
				return nil
			})
		},
	}
	c.Flags().StringVarP(&comment, "message", "m", "", "why (stored and audited)")
	return c
}

// printCurrentLintWarnings names the current version's permits the
// federation lint warns about: under strict, in force only because they
// were stored before strict or restored from a backup.
func printCurrentLintWarnings(out io.Writer, r *wardv1.PolicyLintModeResponse) {
	if len(r.CurrentWarnings) == 0 {
		return
	}
	if r.Mode == "strict" || r.LocalStrict {
		fmt.Fprintf(out, "WARNING: policy version %d, in force, has %d permit(s) strict refuses (stored before strict, or restored from a backup); "+
			"the next apply must fix each: add a trust-domain condition (`principal in TrustDomain::\"<your trust domain>\"`) or @federated(\"allow\"):\n",
			r.CurrentVersion, len(r.CurrentWarnings))
	} else {
		fmt.Fprintf(out, "Policy version %d (current) has %d permit(s) the lint warns about (strict would refuse them):\n", r.CurrentVersion, len(r.CurrentWarnings))
	}
	for _, w := range r.CurrentWarnings {
		fmt.Fprintf(out, "  %s\n", w)
	}
}

// parseResource reads "service:NAME[:PORT]" or "key:NAME".
func parseResource(s, classification string) (policy.Resource, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return policy.Resource{}, fmt.Errorf("--resource %q: use service:NAME[:PORT] or key:NAME", s)
	}
	switch kind {
	case "service":
		r := policy.Resource{Type: policy.TypeService, Name: rest, Classification: classification}
		if name, port, ok := strings.Cut(rest, ":"); ok {
			p, err := strconv.Atoi(port)
			if err != nil || p <= 0 || p > 65535 {
				return r, fmt.Errorf("--resource %q: port %q is not 1..65535", s, port)
			}
			r.Name, r.Port = name, p
		}
		return r, nil
	case "key":
		return policy.Resource{Type: policy.TypeKey, Name: rest, Classification: classification}, nil
	}
	return policy.Resource{}, fmt.Errorf("--resource %q: type %q is unknown; use service:NAME[:PORT] or key:NAME", s, kind)
}

func policyTestCommand() *cobra.Command {
	var principal, action, resource, classification, serial, sourceTD, tlsVersion string
	var labels, groups, files []string
	var version uint64
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "test --principal SPIFFE-ID --action ACTION --resource service:NAME[:PORT]|key:NAME",
		Short: "Evaluate one request against a policy version (or local files) and explain which policies decided",
		Long: `test evaluates in the CLI, with the same engine the proxies run: the policy set comes from
the authority (current version, or --version N) or, with -f, from local files without any
authority at all. It prints the decision and every candidate policy with what it did.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if principal == "" || action == "" || resource == "" {
				return fmt.Errorf("--principal, --action and --resource are required")
			}
			res, err := parseResource(resource, classification)
			if err != nil {
				return err
			}
			lbl, err := parseKV("label", labels)
			if err != nil {
				return err
			}
			req := policy.Request{Principal: principal, Labels: lbl, Groups: groups, CertSerial: serial, Action: action, Resource: res,
				Context: policy.Context{SourceTrustDomain: sourceTD, TLSVersion: tlsVersion}}
			var set *policy.Set
			source := ""
			if len(files) > 0 {
				fs, err := readPolicyFiles(files)
				if err != nil {
					return err
				}
				if set, err = policy.Compile(fs); err != nil {
					return err
				}
				printWarnings(cmd, set.Warnings())
				source = "local files"
			} else {
				err := withClient(cmd, func(ctx context.Context, c *client.Client) error {
					b, pv, err := fetchBundle(ctx, c, version)
					if err != nil {
						return err
					}
					set, err = policy.CompileBundle(b)
					source = fmt.Sprintf("policy version %d", pv.Version)
					return err
				})
				if err != nil {
					return err
				}
			}
			x := set.Explain(req)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(x)
			}
			verdict := "DENY"
			if x.Decision.Allowed {
				verdict = "ALLOW"
			}
			fmt.Fprintf(out, "%s (%s) by %s\n", verdict, x.Decision.Cause, source)
			if len(x.Decision.Reasons) > 0 {
				fmt.Fprintf(out, "decided by: %s\n", strings.Join(x.Decision.Reasons, ", "))
			}
			if len(x.Decision.DryRunDenials) > 0 {
				fmt.Fprintf(out, "dry-run would deny: %s\n", strings.Join(x.Decision.DryRunDenials, ", "))
			}
			if len(x.Decision.DryRunPermits) > 0 {
				fmt.Fprintf(out, "dry-run would allow: %s\n", strings.Join(x.Decision.DryRunPermits, ", "))
			}
			for _, e := range x.Decision.Errors {
				fmt.Fprintf(out, "error in %s: %s\n", e.Policy, e.Message)
			}
			fmt.Fprintf(out, "\n%d of %d policies are candidates for this request:\n", len(x.Candidates), x.Total)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POLICY\tEFFECT\tWHERE\tOUTCOME")
			for _, c := range x.Candidates {
				o := c.Outcome
				if c.Error != "" {
					o += ": " + c.Error
				}
				fmt.Fprintf(tw, "%s\t%s\t%s:%d:%d\t%s\n", c.ID, c.Effect, c.File, c.Line, c.Column, o)
			}
			tw.Flush()
			if !x.Decision.Allowed {
				return &exitError{code: 3, err: fmt.Errorf("request denied")}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&principal, "principal", "", "caller SPIFFE ID")
	f.StringVar(&action, "action", "", "connect, kms:encrypt, kms:decrypt, kms:datakey, kms:rewrap")
	f.StringVar(&resource, "resource", "", "service:NAME[:PORT] or key:NAME")
	f.StringVar(&classification, "classification", "", "the resource's classification")
	f.StringArrayVar(&labels, "label", nil, "principal label k=v (repeatable)")
	f.StringArrayVar(&groups, "group", nil, "principal group (repeatable)")
	f.StringVar(&serial, "serial", "", "caller certificate serial (hex), checked against the deny-list")
	f.StringVar(&sourceTD, "source-trust-domain", "", "context: source trust domain (default: the principal's)")
	f.StringVar(&tlsVersion, "tls-version", "1.3", "context: TLS version")
	f.StringArrayVarP(&files, "file", "f", nil, "evaluate these local files instead of the authority's version (repeatable)")
	f.Uint64Var(&version, "version", 0, "policy version to test against (default: current)")
	f.BoolVar(&asJSON, "json", false, "print the explanation as JSON")
	return cmd
}

func revokeCommand() *cobra.Command {
	var ids, serials []string
	var remove bool
	var comment string
	cmd := &cobra.Command{
		Use:   "revoke --spiffe-id ID | --serial HEX",
		Short: "Deny an identity or certificate everywhere at once (pushed with the policy; existing connections are closed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(ids)+len(serials) == 0 {
				return fmt.Errorf("give --spiffe-id and/or --serial")
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				v, err := c.Policy.Revoke(ctx, &wardv1.RevokeRequest{SpiffeIds: ids, Serials: serials, Remove: remove, Comment: comment})
				if err != nil {
					return err
				}
				verb := "revoked"
				if remove {
					verb = "removed from the deny-list"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%d identities/serials %s in policy version %d (deny-list now %d entries).\n", len(ids)+len(serials), verb, v.Version, v.DenyListSize)
				return nil
			})
		},
	}
	cmd.Flags().StringArrayVar(&ids, "spiffe-id", nil, "SPIFFE ID to deny (repeatable)")
	cmd.Flags().StringArrayVar(&serials, "serial", nil, "certificate serial in hex to deny (repeatable)")
	cmd.Flags().BoolVar(&remove, "remove", false, "remove the given entries from the deny-list instead")
	cmd.Flags().StringVarP(&comment, "message", "m", "", "a note stored with the version")
	return cmd
}
