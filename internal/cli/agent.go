package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/internal/node/agent"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(agentCommand()) }, "agent")
}

// agentCommand is `ward agent --config agent.yaml` (run the node agent).
func agentCommand() *cobra.Command {
	var cfgPath string
	var check bool
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent (`--config agent.yaml`): attest the node, serve the SPIFFE Workload API",
		Long: "ward agent attests its node to the authority, keeps the SVIDs of the node's workloads issued and\n" +
			"rotated, caches them encrypted in data_dir and serves the SPIFFE Workload API on socket_path.\n" +
			"See docs/agent.md for the configuration.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfgPath == "" {
				return fmt.Errorf("give --config agent.yaml (see docs/agent.md)")
			}
			cfg, err := agent.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid (trust domain %s, authority %s)\n", cfgPath, cfg.TrustDomain, cfg.ServerAddress)
				return nil
			}
			a, err := agent.New(cfg, agent.WithLogger(newLogger(cmd.ErrOrStderr(), cfg.LogLevel)))
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "path to the agent configuration (YAML)")
	cmd.Flags().BoolVar(&check, "check", false, "validate the configuration (not the files it names) and exit")
	cmd.AddCommand(agentAdminCommands()...) // ward agent list, ward agent evict (identity.go)
	cmd.AddCommand(agentStatusCommand())    // ward agent status (agentstatus.go)
	return cmd
}
