package cli

import (
	"bytes"
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/cli/apply"
	"github.com/wardproject/ward/internal/shared/atomicfile"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(applyCommand()) }, "apply")
	register(func(root *cobra.Command) { root.AddCommand(exportCommand()) }, "export")
}

func applyCommand() *cobra.Command {
	var (
		files               []string
		dryRun, prune, full bool
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR...",
		Short: "Make the authority match YAML documents of keys, entries and policies (plan, then apply; docs/apply.md)",
		Long: `Reads every document (kind: Key, Entry or Policy) of the files and directories
given with -f, checks them as a whole (every problem with file, line and field;
nothing changes while any remains), compares them with the authority and prints
the plan: + create, ~ change (field by field), - delete (only with --prune).
Without --dry-run the plan is then applied: keys, entries in atomic batches,
the policy set as one new version. A second run prints "No changes".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("give the documents with -f FILE or -f DIR (docs/apply.md)")
			}
			set, err := apply.Load(files)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := apply.Fetch(ctx, c)
				if err != nil {
					return err
				}
				plan, err := apply.NewPlan(set, st, prune)
				if err != nil {
					return err
				}
				if err := apply.Check(ctx, c, plan); err != nil {
					return err
				}
				for _, w := range plan.PolicyWarnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "policy warning: %s: this permit does not constrain the caller's trust domain (docs/policy.md#federated-callers-and-ward-policy-lint)\n", w)
				}
				out := cmd.OutOrStdout()
				plan.Render(out, !dryRun && !full)
				if dryRun || plan.Empty() {
					return nil
				}
				res, err := apply.Execute(ctx, c, plan, cmd.ErrOrStderr())
				if err != nil {
					return err
				}
				fmt.Fprintln(out, res)
				return nil
			})
		},
	}
	cmd.Flags().StringArrayVarP(&files, "file", "f", nil, "a YAML file or a directory of them (repeatable)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().BoolVar(&prune, "prune", false, "also delete entries and drop policy files the documents do not declare (keys are never destroyed)")
	cmd.Flags().BoolVar(&full, "full", false, "list every change when applying (by default more than 20 creates of one kind are counted; --dry-run always lists)")
	return cmd
}

func exportCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "export [-o FILE]",
		Short: "Write the authority's keys, entries and policy set as `ward apply` documents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := apply.Fetch(ctx, c)
				if err != nil {
					return err
				}
				var buf bytes.Buffer
				if err := apply.Export(&buf, st); err != nil {
					return err
				}
				if output == "" || output == "-" {
					_, err := cmd.OutOrStdout().Write(buf.Bytes())
					return err
				}
				if err := atomicfile.Write(output, buf.Bytes(), 0o600); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "Exported %d key(s), %d entry(ies) and %d policy file(s) to %s.\n", len(st.Keys), len(st.Entries), len(st.Policy), output)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to FILE (replaced atomically) instead of standard output")
	return cmd
}
