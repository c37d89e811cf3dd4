package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(operatorCommand()) }, "operator")
}

func printStatus(w io.Writer, s *wardv1.SealStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Trust domain:\t%s\n", s.TrustDomain)
	fmt.Fprintf(tw, "Initialized:\t%t\n", s.Initialized)
	fmt.Fprintf(tw, "Sealed:\t%t\n", s.Sealed)
	fmt.Fprintf(tw, "Seal type:\t%s\n", s.SealType)
	if s.SealType == "shamir" && s.Initialized {
		fmt.Fprintf(tw, "Shares / threshold:\t%d / %d\n", s.Shares, s.Threshold)
		if s.Sealed {
			fmt.Fprintf(tw, "Unseal progress:\t%d/%d\n", s.Progress, s.Threshold)
		}
	}
	if s.SealType == "pkcs11" && s.Initialized && s.Shares > 0 {
		fmt.Fprintf(tw, "Recovery shares / threshold:\t%d / %d\n", s.Shares, s.Threshold)
		if s.Sealed {
			fmt.Fprintf(tw, "Recovery progress:\t%d/%d\n", s.Progress, s.Threshold)
		}
	}
	fmt.Fprintf(tw, "Storage backend:\t%s\n", s.StorageBackend)
	if !s.Sealed {
		fmt.Fprintf(tw, "Audit log size:\t%d\n", s.AuditSize)
	}
	fmt.Fprintf(tw, "Version:\t%s\n", s.Version)
	tw.Flush()
}

func operatorCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "operator", Short: "Initialise, unseal, seal and inspect the authority"}

	var shares, threshold uint32
	var asJSON bool
	initCmd := &cobra.Command{
		Use: "init", Short: "Create the barrier key and print the unseal shares (once; they are stored nowhere)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Operator.Init(ctx, &wardv1.InitRequest{Shares: shares, Threshold: threshold})
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if asJSON {
					return json.NewEncoder(out).Encode(map[string]any{"shares": r.Shares, "threshold": threshold})
				}
				if len(r.Shares) == 0 {
					fmt.Fprintf(out, "Authority initialised with the %s seal, which unseals itself.\n", r.Status.SealType)
					return nil
				}
				if r.Status.SealType == "pkcs11" {
					for i, s := range r.Shares {
						fmt.Fprintf(out, "Recovery share %d: %s\n", i+1, s)
					}
					fmt.Fprintf(out, "\nAuthority initialised with the pkcs11 seal: it unseals itself while the HSM is reachable.\n")
					fmt.Fprintf(out, "These %d recovery shares are shown once and stored nowhere; any %d of them unseal the authority\n", len(r.Shares), threshold)
					fmt.Fprintf(out, "without the HSM (`ward operator unseal`), so they are as powerful as the HSM key: give each to a\n")
					fmt.Fprintf(out, "different person and keep them offline (docs/hsm.md).\n")
					return nil
				}
				for i, s := range r.Shares {
					fmt.Fprintf(out, "Unseal share %d: %s\n", i+1, s)
				}
				fmt.Fprintf(out, "\nAuthority initialised with %d shares and a threshold of %d.\n", len(r.Shares), threshold)
				fmt.Fprintf(out, "These shares are shown once and stored nowhere. Give each to a different person and keep them safe:\n")
				fmt.Fprintf(out, "any %d of them unseal the authority, fewer reveal nothing. Unseal now with `ward operator unseal` (%d times).\n", threshold, threshold)
				return nil
			})
		},
	}
	initCmd.Flags().Uint32Var(&shares, "shares", 5, "number of unseal shares to create (with the pkcs11 seal: recovery shares; 0 for none)")
	initCmd.Flags().Uint32Var(&threshold, "threshold", 3, "number of shares needed to unseal (0 with --shares 0)")
	initCmd.Flags().BoolVar(&asJSON, "json", false, "print the shares as JSON (for automation)")

	var reset bool
	unseal := &cobra.Command{
		Use:   "unseal [--reset]",
		Short: "Submit one unseal share, read from stdin or typed at a prompt without echo",
		Long: `Submit one unseal share. The share is read from stdin (one line) or, on a terminal,
typed at a prompt without echo. It is never accepted as an argument: any local user can read
a process's arguments (/proc/PID/cmdline, ps) and shells keep them in history.
Before the share is sent, the CLI checks who serves the admin socket (see --server-uid).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				// Never echo args: it may be a valid share.
				return errors.New("refusing an unseal share on the command line: any local user can read it (ps, /proc/PID/cmdline) and shells keep it in history; nothing was sent. Pass shares on stdin or at the prompt: ward operator unseal < share.txt (or run `ward operator unseal` and type it). Treat a share typed on a command line as exposed")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &wardv1.UnsealRequest{ResetProgress: reset}
			if !reset {
				s, err := readSecretLine(cmd, "Unseal share (input hidden): ")
				if err != nil {
					return err
				}
				req.Share = s
				if req.Share == "" {
					return fmt.Errorf("no share given: pass it on stdin (ward operator unseal < share.txt) or type it at the prompt")
				}
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				s, err := c.Operator.Unseal(ctx, req)
				if err != nil {
					return err
				}
				switch {
				case reset:
					fmt.Fprintln(cmd.OutOrStdout(), "Unseal progress reset: submitted shares were discarded.")
				case s.Sealed:
					fmt.Fprintf(cmd.OutOrStdout(), "Share accepted. Unseal progress: %d/%d.\n", s.Progress, s.Threshold)
				default:
					fmt.Fprintln(cmd.OutOrStdout(), "Authority unsealed.")
				}
				return nil
			})
		},
	}
	unseal.Flags().BoolVar(&reset, "reset", false, "discard the shares submitted so far")

	sealCmd := &cobra.Command{
		Use: "seal", Short: "Seal the authority: keys leave memory and every key operation stops until unsealed", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.Operator.Seal(ctx, &wardv1.SealRequest{}); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "Authority sealed.")
				return nil
			})
		},
	}

	statusCmd := &cobra.Command{
		Use: "status", Short: "Show seal state, unseal progress, storage backend and version (exit code 2 while sealed)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var sealed bool
			err := withClient(cmd, func(ctx context.Context, c *client.Client) error {
				s, err := c.Operator.Status(ctx, &wardv1.StatusRequest{})
				if err != nil {
					return err
				}
				sealed = s.Sealed
				if asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(s)
				}
				printStatus(cmd.OutOrStdout(), s)
				printCluster(ctx, cmd.OutOrStdout(), c) // operator_status.go
				if !s.Sealed {
					printPolicyLintStatus(ctx, cmd.OutOrStdout(), c)
				}
				return nil
			})
			if err == nil && sealed {
				return &exitError{code: 2, err: fmt.Errorf("the authority is sealed")}
			}
			return err
		},
	}
	statusCmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(initCmd, unseal, sealCmd, statusCmd)
	return cmd
}
