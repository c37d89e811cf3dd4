package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

func init() {
	register(func(root *cobra.Command) {
		for _, c := range root.Commands() {
			if c.Name() == "operator" {
				c.AddCommand(membersCommand())
			}
		}
	}, "operator")
}

// printCluster adds the authority's place among those sharing its store
// to `ward operator status`: which authority answered, the elected leader
// and the members (docs/ha.md). An authority too old to answer is skipped.
func printCluster(ctx context.Context, w io.Writer, c *client.Client) {
	st, err := c.Cluster.Status(ctx, &wardv1.ClusterStatusRequest{})
	if err != nil {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Authority:\t%s\n", st.GetSelf().GetName())
	switch st.Mode {
	case "sealed", "starting":
		fmt.Fprintf(tw, "HA:\t%s (not a member until unsealed)\n", st.Mode)
	case "single":
		fmt.Fprintf(tw, "HA:\tsingle authority (always the leader)\n")
	default:
		leader := "(none elected now)"
		if l := st.GetLeader(); l != nil {
			leader = l.Name
			if st.IsLeader {
				leader += " (this authority)"
			}
		}
		fmt.Fprintf(tw, "HA:\tetcd election, lease %ds, term %d\n", st.LeaseTtlSeconds, st.Term)
		fmt.Fprintf(tw, "Leader:\t%s\n", leader)
		fmt.Fprintf(tw, "Members:\t%d\n", len(st.Members))
		for _, m := range st.Members {
			since := ""
			if m.Since != nil {
				since = "since " + m.Since.AsTime().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", m.Name, orDash(m.Address), m.Version, since)
		}
	}
	tw.Flush()
}

// printPolicyLintStatus adds to `ward operator status` a current policy
// version in force under strict with permits strict refuses (stored
// before strict, or restored from a backup). Nothing when there is none,
// or the authority cannot say.
func printPolicyLintStatus(ctx context.Context, w io.Writer, c *client.Client) {
	r, err := c.Policy.PolicyLintMode(ctx, &wardv1.PolicyLintModeRequest{})
	if err != nil || len(r.CurrentWarnings) == 0 || (r.Mode != "strict" && !r.LocalStrict) {
		return
	}
	fmt.Fprintf(w, "Policy lint:      strict; WARNING: version %d, in force, has %d permit(s) strict refuses: `ward policy lint-mode` names them\n",
		r.CurrentVersion, len(r.CurrentWarnings))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func membersCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use: "members", Short: "Show the authorities sharing this one's store and the elected leader (docs/ha.md)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Cluster.Status(ctx, &wardv1.ClusterStatusRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(st)
				}
				printCluster(ctx, cmd.OutOrStdout(), c)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
