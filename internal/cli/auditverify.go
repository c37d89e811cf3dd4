package cli

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/audit"
	"github.com/wardproject/ward/internal/store"
)

func auditVerifyCommand() *cobra.Command {
	var cpPath, keyPath string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Recompute the audit Merkle tree, check the signed checkpoint and (with --checkpoint) consistency with an earlier one",
		Long: `verify streams every stored audit event from the authority, recomputes the RFC 6962
Merkle tree locally and checks it against the authority's latest signed checkpoint.
Altered, deleted or reordered events are reported with their sequence numbers.
With --checkpoint FILE (saved earlier by 'ward audit checkpoint -o FILE') it also proves
that today's log extends that checkpoint: history was only appended to.
With --public-key FILE the checkpoints must be signed by that key (PEM), not just by
the key the authority presents.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var earlier *audit.Checkpoint
			if cpPath != "" {
				b, err := os.ReadFile(cpPath)
				if err != nil {
					return fmt.Errorf("reading --checkpoint: %w", err)
				}
				cp, err := audit.ParseCheckpoint(b)
				if err != nil {
					return fmt.Errorf("--checkpoint %s: %w", cpPath, err)
				}
				earlier = &cp
			}
			var trusted crypto.PublicKey
			if keyPath != "" {
				b, err := os.ReadFile(keyPath)
				if err != nil {
					return fmt.Errorf("reading --public-key: %w", err)
				}
				if trusted, err = audit.ParsePublicKeyPEM(b); err != nil {
					return fmt.Errorf("--public-key %s: %w", keyPath, err)
				}
			}
			c, err := dial(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			head, err := c.Audit.Checkpoint(ctx, &wardv1.CheckpointRequest{})
			if err != nil {
				return client.Unwrap(err)
			}
			cp, err := audit.ParseCheckpoint(head.Checkpoint)
			if err != nil {
				return fmt.Errorf("the authority's checkpoint: %w", err)
			}
			pub := trusted
			if pub == nil {
				if pub, err = audit.ParsePublicKeyPEM(head.PublicKeyPem); err != nil {
					return fmt.Errorf("the authority's public key: %w", err)
				}
			}
			v := audit.NewVerifier(audit.VerifyOptions{Head: cp, PublicKey: pub, Earlier: earlier})
			if err := streamRecords(ctx, cmd, c, cp.Size, v); err != nil {
				return err
			}
			rep := v.Finish()
			out := cmd.OutOrStdout()
			if !rep.OK() {
				for _, p := range rep.Problems {
					fmt.Fprintln(out, "PROBLEM", p.String())
				}
				if rep.Omitted > 0 {
					fmt.Fprintf(out, "... and %d more record problems\n", rep.Omitted)
				}
				return &exitError{code: 1, err: fmt.Errorf("audit log verification FAILED: %d problem(s) in %d events", len(rep.Problems)+rep.Omitted, cp.Size)}
			}
			fmt.Fprintf(out, "OK: %d events; Merkle root %x matches the checkpoint signed by key %s at %s\n",
				cp.Size, cp.RootHash, cp.KeyID, cp.Time.UTC().Format(time.RFC3339))
			if earlier != nil {
				fmt.Fprintf(out, "OK: consistent with the earlier checkpoint of %d events (%s): history was only appended to\n",
					earlier.Size, cpPath)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cpPath, "checkpoint", "", "an earlier checkpoint file to prove consistency with")
	cmd.Flags().StringVar(&keyPath, "public-key", "", "PEM public key the checkpoints must be signed with")
	return cmd
}

// streamRecords feeds records [0, size) to v, with a live count on a
// terminal.
func streamRecords(ctx context.Context, cmd *cobra.Command, c *client.Client, size uint64, v *audit.Verifier) error {
	stream, err := c.Audit.Read(ctx, &wardv1.ReadAuditRequest{Start: 0, End: size})
	if err != nil {
		return client.Unwrap(err)
	}
	progress := newCounter(cmd.ErrOrStderr(), "verifying audit events", size)
	defer progress.done()
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return client.Unwrap(err)
		}
		rec := audit.Record{Seq: r.Seq, Leaf: r.Leaf}
		if r.Error != "" {
			if r.Missing {
				rec.Err = fmt.Errorf("%w: %s", store.ErrNotFound, r.Error)
			} else {
				rec.Err = errors.New(r.Error)
			}
		}
		v.Add(rec)
		progress.add(1)
	}
}
