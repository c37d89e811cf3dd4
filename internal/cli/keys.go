package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/kmsfmt"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(keyCommand()) }, "key")
	register(func(root *cobra.Command) { root.AddCommand(kmsCommand()) }, "kms")
}

func fmtTime(t interface{ AsTime() time.Time }) string {
	tt := t.AsTime()
	if tt.IsZero() || tt.Unix() == 0 {
		return "-"
	}
	return tt.UTC().Format(time.RFC3339)
}

// fmtPeriod shows whole days as "90d" and anything else in Go syntax.
func fmtPeriod(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func printKey(w io.Writer, k *wardv1.Key) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", k.Name)
	fmt.Fprintf(tw, "Classification:\t%s\n", k.Classification)
	if k.Purpose != "" {
		fmt.Fprintf(tw, "Purpose:\t%s\n", k.Purpose)
	}
	fmt.Fprintf(tw, "Algorithm (new versions):\t%s\n", k.Algorithm)
	fmt.Fprintf(tw, "Created:\t%s\n", fmtTime(k.Created))
	fmt.Fprintf(tw, "Latest version:\t%d\n", k.LatestVersion)
	fmt.Fprintf(tw, "Min decrypt version:\t%d\n", k.MinDecryptVersion)
	fmt.Fprintf(tw, "Rotation period:\t%s\n", fmtPeriod(k.RotationPeriod.AsDuration()))
	fmt.Fprintf(tw, "Next rotation:\t%s\n", fmtTime(k.NextRotation))
	keep := "all"
	if k.KeepVersions > 0 {
		keep = fmt.Sprint(k.KeepVersions)
	}
	fmt.Fprintf(tw, "Decryptable versions kept:\t%s\n", keep)
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tALGORITHM\tCREATED\tSTATE CHANGED")
	for _, v := range k.Versions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", v.Version, v.State, v.Algorithm, fmtTime(v.Created), fmtTime(v.StateChanged))
	}
	tw.Flush()
}

func keyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage KMS keys: create, list, show, rotate, configure, disable, enable, destroy"}

	var classification, purpose string
	create := &cobra.Command{
		Use: "create NAME", Short: "Create a key (its classification sets algorithm, rotation and kept versions)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if classification == "" {
				return fmt.Errorf("--classification is required: public, internal, confidential or restricted (see `ward key classifications`)")
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.Keys.CreateKey(ctx, &wardv1.CreateKeyRequest{Name: args[0], Classification: classification, Purpose: purpose})
				if err != nil {
					return err
				}
				printKey(cmd.OutOrStdout(), k)
				return nil
			})
		},
	}
	create.Flags().StringVar(&classification, "classification", "", "public, internal, confidential or restricted")
	create.Flags().StringVar(&purpose, "purpose", "", "free-text purpose, shown in key show")

	var prefix string
	var asJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List keys", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Keys.ListKeys(ctx, &wardv1.ListKeysRequest{Prefix: prefix})
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(r.Keys)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tCLASSIFICATION\tLATEST\tMIN DECRYPT\tNEXT ROTATION")
				for _, k := range r.Keys {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", k.Name, k.Classification, k.LatestVersion, k.MinDecryptVersion, fmtTime(k.NextRotation))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().StringVar(&prefix, "prefix", "", "only keys whose name starts with this")
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	show := &cobra.Command{
		Use: "show NAME", Short: "Show a key: versions, states, dates, next rotation", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.Keys.GetKey(ctx, &wardv1.GetKeyRequest{Name: args[0]})
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(k)
				}
				printKey(cmd.OutOrStdout(), k)
				return nil
			})
		},
	}
	show.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	rotate := &cobra.Command{
		Use: "rotate NAME", Short: "Add a new active version; older versions keep decrypting", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.Keys.RotateKey(ctx, &wardv1.RotateKeyRequest{Name: args[0]})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Key %s rotated: version %d is now active.\n", k.Name, k.LatestVersion)
				return nil
			})
		},
	}

	var minDecrypt uint32
	config := &cobra.Command{
		Use: "config NAME", Short: "Configure a key (min decrypt version)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				k, err := c.Keys.ConfigureKey(ctx, &wardv1.ConfigureKeyRequest{Name: args[0], MinDecryptVersion: minDecrypt})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Key %s: versions below %d no longer decrypt.\n", k.Name, k.MinDecryptVersion)
				return nil
			})
		},
	}
	config.Flags().Uint32Var(&minDecrypt, "min-decrypt-version", 0, "oldest version allowed to decrypt")

	var version uint32
	var yes bool
	stateCmd := func(use string, enabled bool) *cobra.Command {
		c := &cobra.Command{
			Use: use + " NAME --version N", Short: use + " one version of a key", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return withClient(cmd, func(ctx context.Context, c *client.Client) error {
					_, err := c.Keys.SetVersionState(ctx, &wardv1.SetVersionStateRequest{Name: args[0], Version: version, Enabled: enabled})
					if err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "Key %s version %d %sd.\n", args[0], version, use)
					return nil
				})
			},
		}
		c.Flags().Uint32Var(&version, "version", 0, "key version")
		return c
	}
	destroy := &cobra.Command{
		Use: "destroy NAME --version N", Short: "Destroy a version for good (crypto-shredding)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if version == 0 {
				return fmt.Errorf("give the version to destroy with --version N")
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Destroying key %s version %d erases its key material: everything encrypted under it becomes unreadable forever, and this cannot be undone.\n", args[0], version)
			if !yes {
				if err := confirm(cmd, "Destroy it?"); err != nil {
					return err
				}
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				if _, err := c.Keys.DestroyVersion(ctx, &wardv1.DestroyVersionRequest{Name: args[0], Version: version}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Key %s version %d destroyed: data under it is gone for good.\n", args[0], version)
				return nil
			})
		},
	}
	destroy.Flags().Uint32Var(&version, "version", 0, "key version")
	destroy.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")

	classes := &cobra.Command{
		Use: "classifications", Short: "Show the classification table", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.Keys.ListClassifications(ctx, &wardv1.ListClassificationsRequest{})
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CLASSIFICATION\tALGORITHM\tROTATION\tDECRYPTABLE VERSIONS")
				for _, x := range r.Classifications {
					keep := "all"
					if x.KeepVersions > 0 {
						keep = fmt.Sprint(x.KeepVersions)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Name, x.Algorithm, fmtPeriod(x.RotationPeriod.AsDuration()), keep)
				}
				return tw.Flush()
			})
		},
	}
	cmd.AddCommand(create, list, show, rotate, config, stateCmd("disable", false), stateCmd("enable", true), destroy, classes)
	return cmd
}

// readCiphertext reads a KMS ciphertext (binary or ward:v1: text) from
// stdin and parses the --context flags.
func readCiphertext(cmd *cobra.Command, ctxPairs []string) ([]byte, map[string]string, error) {
	encCtx, err := parseKV("context", ctxPairs)
	if err != nil {
		return nil, nil, err
	}
	in, err := readInput(cmd, 1<<20)
	if err != nil {
		return nil, nil, err
	}
	ct, err := kmsfmt.Dearmor(in)
	return ct, encCtx, err
}

func kmsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "kms", Short: "Envelope operations on small payloads: encrypt, decrypt, datakey, rewrap"}
	var keyName string
	var ctxPairs []string
	var binary, wrappedOnly bool

	writeCT := func(cmd *cobra.Command, ct []byte) error {
		if binary {
			_, err := cmd.OutOrStdout().Write(ct)
			return err
		}
		_, err := fmt.Fprintln(cmd.OutOrStdout(), kmsfmt.Armor(ct))
		return err
	}
	encrypt := &cobra.Command{
		Use: "encrypt --key NAME [--context k=v ...]", Short: "Encrypt stdin (at most 64 KiB) to stdout", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyName == "" {
				return fmt.Errorf("--key is required")
			}
			encCtx, err := parseKV("context", ctxPairs)
			if err != nil {
				return err
			}
			pt, err := readInput(cmd, 64<<10)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.KMS.Encrypt(ctx, &wardv1.EncryptRequest{Key: keyName, Plaintext: pt, Context: encCtx})
				if err != nil {
					return err
				}
				return writeCT(cmd, r.Ciphertext)
			})
		},
	}
	encrypt.Flags().StringVar(&keyName, "key", "", "key name")

	decrypt := &cobra.Command{
		Use: "decrypt [--context k=v ...]", Short: "Decrypt a ciphertext from stdin to stdout", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ct, encCtx, err := readCiphertext(cmd, ctxPairs)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.KMS.Decrypt(ctx, &wardv1.DecryptRequest{Ciphertext: ct, Context: encCtx})
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(r.Plaintext)
				return err
			})
		},
	}

	datakey := &cobra.Command{
		Use: "datakey --key NAME", Short: "Generate a data key: JSON with plaintext (base64) and wrapped", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyName == "" {
				return fmt.Errorf("--key is required")
			}
			encCtx, err := parseKV("context", ctxPairs)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.KMS.GenerateDataKey(ctx, &wardv1.GenerateDataKeyRequest{Key: keyName, Context: encCtx, WrappedOnly: wrappedOnly})
				if err != nil {
					return err
				}
				out := map[string]any{"key": keyName, "key_version": r.KeyVersion, "wrapped": kmsfmt.Armor(r.Wrapped)}
				if !wrappedOnly {
					out["plaintext"] = base64.StdEncoding.EncodeToString(r.Plaintext)
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			})
		},
	}
	datakey.Flags().StringVar(&keyName, "key", "", "key name")
	datakey.Flags().BoolVar(&wrappedOnly, "wrapped-only", false, "return only the wrapped key")

	rewrap := &cobra.Command{
		Use: "rewrap [--context k=v ...]", Short: "Re-wrap a ciphertext from stdin under its key's newest version (plaintext never leaves the KMS)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ct, encCtx, err := readCiphertext(cmd, ctxPairs)
			if err != nil {
				return err
			}
			return withClient(cmd, func(ctx context.Context, c *client.Client) error {
				r, err := c.KMS.Rewrap(ctx, &wardv1.RewrapRequest{Ciphertext: ct, Context: encCtx})
				if err != nil {
					return err
				}
				return writeCT(cmd, r.Ciphertext)
			})
		},
	}
	for _, c := range []*cobra.Command{encrypt, decrypt, datakey, rewrap} {
		c.Flags().StringArrayVar(&ctxPairs, "context", nil, "encryption context k=v, bound as associated data (repeatable); must match on decrypt")
	}
	for _, c := range []*cobra.Command{encrypt, rewrap} {
		c.Flags().BoolVar(&binary, "binary", false, "write the binary ciphertext instead of the ward:v1: text form")
	}
	cmd.AddCommand(encrypt, decrypt, datakey, rewrap)
	return cmd
}
