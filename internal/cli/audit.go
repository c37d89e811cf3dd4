package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/authority/audit"
	"github.com/wardproject/ward/internal/shared/atomicfile"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(auditCommand()) }, "audit")
}

// formatEvent renders one audit record as a single human-readable line.
func formatEvent(r *wardv1.AuditRecord) string {
	if r.Error != "" {
		return fmt.Sprintf("%8d  UNREADABLE: %s", r.Seq, r.Error)
	}
	ev, err := audit.DecodeEvent(r.Leaf)
	if err != nil {
		return fmt.Sprintf("%8d  UNDECODABLE: %v", r.Seq, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%8d  %s  %-22s %-7s %s", ev.Seq, ev.Time.UTC().Format(time.RFC3339), ev.Operation, ev.Result, ev.Actor)
	if ev.Key != "" {
		fmt.Fprintf(&b, "  key=%s", ev.Key)
		if ev.KeyVersion != 0 {
			fmt.Fprintf(&b, "@%d", ev.KeyVersion)
		}
	}
	if ev.Count > 1 {
		fmt.Fprintf(&b, "  count=%d", ev.Count)
	}
	keys := make([]string, 0, len(ev.Fields))
	for k := range ev.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s=%s", k, ev.Fields[k])
	}
	if ev.Error != "" {
		fmt.Fprintf(&b, "  error=%q", ev.Error)
	}
	fmt.Fprintf(&b, "  req=%s", ev.RequestID)
	return b.String()
}

func auditCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read and verify the tamper-evident audit log"}

	var last uint64
	var follow, asJSON bool
	tail := &cobra.Command{
		Use: "tail", Short: "Print the last events (-f to keep following)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := dial(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			stream, err := c.Audit.Tail(cmd.Context(), &wardv1.TailAuditRequest{Last: last, Follow: follow})
			if err != nil {
				return client.Unwrap(err)
			}
			out := cmd.OutOrStdout()
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) || cmd.Context().Err() != nil {
					return nil
				}
				if err != nil {
					return client.Unwrap(err)
				}
				if asJSON && r.Error == "" {
					fmt.Fprintf(out, "%s\n", r.Leaf)
				} else {
					fmt.Fprintln(out, formatEvent(r))
				}
			}
		},
	}
	tail.Flags().Uint64VarP(&last, "lines", "n", 20, "how many of the newest events to print first")
	tail.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they are appended")
	tail.Flags().BoolVar(&asJSON, "json", false, "print each event's stored JSON")

	var outPath string
	checkpoint := &cobra.Command{
		Use: "checkpoint", Short: "Print the latest signed checkpoint (keep it to prove consistency later)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Audit.Checkpoint(ctx, &wardv1.CheckpointRequest{})
				if err != nil {
					return err
				}
				if outPath == "" {
					_, err = cmd.OutOrStdout().Write(append(r.Checkpoint, '\n'))
					return err
				}
				return atomicfile.Write(outPath, append(r.Checkpoint, '\n'), 0o644)
			})
		},
	}
	checkpoint.Flags().StringVarP(&outPath, "output", "o", "", "write to this file (atomically) instead of stdout")

	hash := &cobra.Command{
		Use: "hash VALUE", Short: "Print the HMAC the audit log uses for VALUE (to search for an encryption-context value)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Audit.Hash(ctx, &wardv1.HashRequest{Value: args[0]})
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), r.Hash)
				return nil
			})
		},
	}
	cmd.AddCommand(tail, checkpoint, hash, auditVerifyCommand())
	return cmd
}
