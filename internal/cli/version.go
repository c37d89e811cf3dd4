package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/internal/shared/buildinfo"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(versionCommand()) }, "version")
}

// versionCommand prints which ward this binary is (the authority's own is
// in `ward operator status`).
func versionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this ward binary's version, commit and Go toolchain (also: ward --version)",
		Long: "Print this ward binary's version, the commit it was built from (\"modified\" when the\n" +
			"checkout had uncommitted changes) and the Go toolchain. The authority's version is in\n" +
			"`ward operator status`; each HA member's in `ward operator members`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			in := buildinfo.Read()
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(in)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "ward %s\n", in.Version)
			if in.Commit != "" {
				commit := in.Commit
				if in.Modified {
					commit += " (modified)"
				}
				fmt.Fprintf(tw, "commit:\t%s\n", commit)
			}
			if in.CommitTime != "" {
				fmt.Fprintf(tw, "commit time:\t%s\n", in.CommitTime)
			}
			fmt.Fprintf(tw, "go:\t%s %s\n", in.Go, in.Platform)
			if in.FIPS != "" {
				fmt.Fprintf(tw, "fips140:\t%s\n", in.FIPS)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: version, commit, commit_time, modified, go, platform, fips140")
	return cmd
}
