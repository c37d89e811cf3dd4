package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wardproject/ward/envelope"
	"github.com/wardproject/ward/internal/cli/filecrypt"
)

func init() {
	register(func(root *cobra.Command) { root.AddCommand(encryptCommand()) }, "encrypt")
	register(func(root *cobra.Command) { root.AddCommand(decryptCommand()) }, "decrypt")
	register(func(root *cobra.Command) { root.AddCommand(verifyCommand()) }, "verify")
	register(func(root *cobra.Command) { root.AddCommand(inspectCommand()) }, "inspect")
	register(func(root *cobra.Command) { root.AddCommand(rewrapCommand()) }, "rewrap")
	register(func(root *cobra.Command) { root.AddCommand(reencryptCommand()) }, "reencrypt")
	register(func(root *cobra.Command) { root.AddCommand(localKeyCommand()) }, "local-key")
}

// kmsFlags are shared by every file command.
type kmsFlags struct {
	localKey string
	context  []string
}

func (f *kmsFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.localKey, "local-key", "", "use the local key `FILE` instead of the authority (offline; create one with: ward local-key new)")
	cmd.Flags().StringArrayVar(&f.context, "context", nil, "encryption context k=v not stored in the file (repeatable; must match on decrypt, verify, rewrap)")
}

// runner builds a filecrypt.Runner with the selected KMS.
func (f *kmsFlags) runner(cmd *cobra.Command) (*filecrypt.Runner, *envelope.LocalKMS, func(), error) {
	encCtx, err := parseKV("context", f.context)
	if err != nil {
		return nil, nil, nil, err
	}
	r := &filecrypt.Runner{}
	if len(encCtx) > 0 {
		r.Opts = append(r.Opts, envelope.WithContext(encCtx))
	}
	if f.localKey != "" {
		l, err := envelope.LoadLocalKMS(f.localKey)
		if err != nil {
			return nil, nil, nil, err
		}
		r.KMS = l
		return r, l, func() {}, nil
	}
	kms, closeFn, err := remoteKMS(cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	r.KMS = kms
	return r, nil, closeFn, nil
}

// stderrTerminal reports whether the command's stderr is a terminal.
func stderrTerminal(cmd *cobra.Command) bool {
	f, ok := cmd.ErrOrStderr().(*os.File)
	return ok && isTerminal(f)
}

func stdoutTerminal(cmd *cobra.Command) bool {
	f, ok := cmd.OutOrStdout().(*os.File)
	return ok && isTerminal(f)
}

// parseSize accepts 65536, 64K, 64KiB, 1M, 1MiB.
func parseSize(s string) (int, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	mult := 1
	for _, suf := range []struct {
		s string
		m int
	}{{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"K", 1 << 10}, {"M", 1 << 20}} {
		if strings.HasSuffix(u, suf.s) {
			u, mult = strings.TrimSuffix(u, suf.s), suf.m
			break
		}
	}
	n, err := strconv.Atoi(u)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--segment-size %q: use a size such as 65536, 64KiB or 1MiB", s)
	}
	return n * mult, nil
}

func isStdio(p string) bool { return p == "" || p == "-" }

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// treeOp maps every file under the input directory to an output path
// under outDir and runs op on it, with a progress bar and a summary. The
// output tree is opened as an os.Root: outDir itself must not be a
// symbolic link, and a symbolic link found at any directory or file under
// it is refused, so nothing is ever written outside outDir. Symbolic
// links in the input tree are skipped (Collect) and inputs are opened
// without following links.
func treeOp(cmd *cobra.Command, verb, in, outDir string, rename func(string) string, op func(ctx context.Context, root *os.Root, name, src string) (int64, error), r *filecrypt.Runner) error {
	if isStdio(outDir) {
		return fmt.Errorf("-i %s is a directory: give an output directory with -o DIR", in)
	}
	if abs(outDir) == abs(in) || strings.HasPrefix(abs(outDir), abs(in)+string(filepath.Separator)) {
		return fmt.Errorf("output directory %s is inside the input directory %s: choose another -o", outDir, in)
	}
	root, err := openOutputRoot(outDir, r.OutputMode())
	if err != nil {
		return err
	}
	defer root.Close()
	items, skipped, err := filecrypt.Collect([]string{in})
	if err != nil {
		return err
	}
	warnSkipped(cmd, skipped)
	p := newProgress(cmd, verb, items)
	r.Progress = p
	s := filecrypt.Each(cmd.Context(), verb, items, 1, p, func(ctx context.Context, it filecrypt.Item) (filecrypt.Result, error) {
		n, err := op(ctx, root, rename(it.Rel), it.Path)
		return filecrypt.Result{Bytes: n}, err
	})
	p.Stop()
	s.Print(cmd.ErrOrStderr())
	return s.Err()
}

// openOutputRoot creates outDir if needed and opens it as an os.Root,
// refusing an outDir that is a symbolic link.
func openOutputRoot(outDir string, mode os.FileMode) (*os.Root, error) {
	clean := filepath.Clean(outDir) // "link/" would make Lstat follow the link
	st, err := os.Lstat(clean)
	switch {
	case err == nil && st.Mode()&os.ModeSymlink != 0:
		return nil, fmt.Errorf("output directory %s is a symbolic link: refusing to write through it (it could lead anywhere); give the directory it points to", outDir)
	case err == nil && !st.IsDir():
		return nil, fmt.Errorf("output %s exists and is not a directory: with -i DIR, -o must be a directory", outDir)
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(clean, filecrypt.DirModeFor(mode)); err != nil {
			return nil, fmt.Errorf("creating output directory %s: %w", outDir, err)
		}
	case err != nil:
		return nil, fmt.Errorf("output directory %s: %w", outDir, err)
	}
	root, err := os.OpenRoot(clean)
	if err != nil {
		return nil, fmt.Errorf("opening output directory %s: %w", outDir, err)
	}
	return root, nil
}

// modeFlag adds --mode to a command that writes files.
func modeFlag(cmd *cobra.Command, mode *string) {
	cmd.Flags().StringVar(mode, "mode", "", "mode of output files, octal (default 0600; world-writable modes are refused); an existing file's mode is never inherited")
}

// applyMode validates --mode into r.Mode; it needs an output file or tree.
func applyMode(r *filecrypt.Runner, mode, out string) error {
	if mode == "" {
		return nil
	}
	if isStdio(out) {
		return errors.New("--mode applies to output files: give -o FILE or -o DIR")
	}
	m, err := filecrypt.ParseMode(mode)
	if err != nil {
		return err
	}
	r.Mode = m
	return nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return filepath.Clean(a)
}

func warnSkipped(cmd *cobra.Command, skipped []string) {
	for _, s := range skipped {
		fmt.Fprintf(cmd.ErrOrStderr(), "skipping %s: not a regular file (symbolic links are not followed)\n", s)
	}
}

func newProgress(cmd *cobra.Command, label string, items []filecrypt.Item) *filecrypt.Progress {
	var total int64
	for _, it := range items {
		total += it.Size
	}
	return filecrypt.NewProgress(cmd.ErrOrStderr(), stderrTerminal(cmd), label, total, len(items))
}

// singleFileProgress starts a progress bar for one input path (or stdin).
func singleFileProgress(cmd *cobra.Command, label, in string) *filecrypt.Progress {
	var size int64
	if !isStdio(in) {
		if st, err := os.Stat(in); err == nil {
			size = st.Size()
		}
	}
	return filecrypt.NewProgress(cmd.ErrOrStderr(), stderrTerminal(cmd), label, size, 1)
}

func encryptCommand() *cobra.Command {
	var (
		kf                      kmsFlags
		key, classification, in string
		out, alg, segSize, mode string
		meta                    []string
	)
	cmd := &cobra.Command{
		Use:   "encrypt --key NAME [--classification C] [--meta k=v]... [-i IN] [-o OUT]",
		Short: "Encrypt a file, a directory tree or stdin under a fresh data key wrapped by a KMS key",
		Long: `Encrypt data of any size under a fresh data key per file, wrapped by the KMS key NAME.
Reads stdin and writes stdout by default. With -i DIR, every file under DIR is encrypted
into the directory -o OUT as <name>.ward. Output files appear only when complete, with
mode 0600 (or --mode); a symbolic link at the output path, or at a directory under -o DIR,
is refused, and an existing file's mode is never inherited.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := parseKV("meta", meta)
			if err != nil {
				return err
			}
			opts := []envelope.Option{envelope.WithClassification(classification), envelope.WithMetadata(m)}
			a, err := envelope.ParseAlg(alg)
			if err != nil {
				return err
			}
			opts = append(opts, envelope.WithAlgorithm(a))
			if segSize != "" {
				n, err := parseSize(segSize)
				if err != nil {
					return err
				}
				opts = append(opts, envelope.WithSegmentSize(n))
			}
			r, local, closeFn, err := kf.runner(cmd)
			if err != nil {
				return err
			}
			defer closeFn()
			if err := applyMode(r, mode, out); err != nil {
				return err
			}
			if key == "" {
				if local == nil {
					return errors.New("--key is required: the name of the KMS key to wrap data keys with (see `ward key list`)")
				}
				key = local.KeyName()
			}
			ctx := cmd.Context()
			if !isStdio(in) && isDir(in) {
				return treeOp(cmd, "encrypted", in, out, func(rel string) string { return rel + filecrypt.Suffix },
					func(ctx context.Context, root *os.Root, name, src string) (int64, error) {
						return r.EncryptFileIn(ctx, root, name, src, key, opts...)
					}, r)
			}
			p := singleFileProgress(cmd, "encrypting", in)
			r.Progress = p
			defer p.Stop()
			if isStdio(out) {
				if stdoutTerminal(cmd) {
					return errors.New("refusing to write ciphertext to a terminal: use -o FILE or redirect stdout")
				}
				src, closeIn, err := openInput(cmd, in)
				if err != nil {
					return err
				}
				defer closeIn()
				_, err = r.Encrypt(ctx, cmd.OutOrStdout(), src, key, opts...)
				return err
			}
			if isStdio(in) {
				return filecrypt.AtomicWrite(out, r.OutputMode(), func(f *os.File) error {
					_, err := r.Encrypt(ctx, filecrypt.WriteBehind(f), cmd.InOrStdin(), key, opts...)
					return err
				})
			}
			_, err = r.EncryptFile(ctx, out, in, key, opts...)
			return err
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "KMS key that wraps the data key (default with --local-key: the local key)")
	cmd.Flags().StringVar(&classification, "classification", "", "classification label stored in the header and bound to the key (e.g. confidential)")
	cmd.Flags().StringArrayVar(&meta, "meta", nil, "metadata k=v stored in the header, authenticated (repeatable)")
	cmd.Flags().StringVarP(&in, "in", "i", "", "input file or directory (default stdin)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "output file, or directory with -i DIR (default stdout)")
	cmd.Flags().StringVar(&alg, "alg", "aes-256-gcm", "segment cipher: aes-256-gcm or chacha20-poly1305")
	cmd.Flags().StringVar(&segSize, "segment-size", "", "plaintext bytes per segment (default 64KiB; 4KiB..16MiB)")
	modeFlag(cmd, &mode)
	kf.add(cmd)
	return cmd
}

func openInput(cmd *cobra.Command, in string) (io.Reader, func(), error) {
	if isStdio(in) {
		return cmd.InOrStdin(), func() {}, nil
	}
	f, err := os.Open(in)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

func decryptCommand() *cobra.Command {
	var (
		kf            kmsFlags
		in, out, mode string
	)
	cmd := &cobra.Command{
		Use:   "decrypt [-i IN] [-o OUT]",
		Short: "Decrypt a file, a directory tree or stdin; only authenticated plaintext is ever released",
		Long: `Decrypt ward envelope files. Reads stdin and writes stdout by default.
To a file: the plaintext goes to a temporary file renamed into place only after the last
segment verifies. To stdout: each segment is released only after it verifies, and the
command fails (non-zero exit) at the first bad segment. With -i DIR, every file under DIR
is decrypted into the directory -o OUT (a .ward suffix is removed). Plaintext files are
created with mode 0600 (or --mode, never world-writable), whatever sits at the output path:
a symbolic link there, or at a directory under -o DIR, is refused, never followed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _, closeFn, err := kf.runner(cmd)
			if err != nil {
				return err
			}
			defer closeFn()
			if err := applyMode(r, mode, out); err != nil {
				return err
			}
			ctx := cmd.Context()
			if !isStdio(in) && isDir(in) {
				return treeOp(cmd, "decrypted", in, out, func(rel string) string { return strings.TrimSuffix(rel, filecrypt.Suffix) }, r.DecryptFileIn, r)
			}
			p := singleFileProgress(cmd, "decrypting", in)
			r.Progress = p
			defer p.Stop()
			if isStdio(out) {
				src, closeIn, err := openInput(cmd, in)
				if err != nil {
					return err
				}
				defer closeIn()
				_, err = r.Decrypt(ctx, cmd.OutOrStdout(), src)
				if err != nil {
					return fmt.Errorf("decrypting %s: %w (output before this point was authenticated; nothing after it was written)", nameOf(in), err)
				}
				return nil
			}
			if isStdio(in) {
				err := filecrypt.AtomicWrite(out, r.OutputMode(), func(f *os.File) error {
					_, err := r.Decrypt(ctx, filecrypt.WriteBehind(f), cmd.InOrStdin())
					return err
				})
				if err != nil {
					return fmt.Errorf("decrypting stdin: %w (%s was not written)", err, out)
				}
				return nil
			}
			if _, err := r.DecryptFile(ctx, out, in); err != nil {
				return fmt.Errorf("decrypting %s: %w (%s was not written)", in, err, out)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&in, "in", "i", "", "input file or directory (default stdin)")
	cmd.Flags().StringVarP(&out, "out", "o", "", "output file, or directory with -i DIR (default stdout)")
	modeFlag(cmd, &mode)
	kf.add(cmd)
	return cmd
}

func nameOf(in string) string {
	if isStdio(in) {
		return "stdin"
	}
	return in
}

// manyFiles runs op over FILE... arguments (directories recursively).
func manyFiles(cmd *cobra.Command, verb, label string, args []string, jobs int, r *filecrypt.Runner, op func(ctx context.Context, it filecrypt.Item) (filecrypt.Result, error)) error {
	items, skipped, err := filecrypt.Collect(args)
	if err != nil {
		return err
	}
	warnSkipped(cmd, skipped)
	p := newProgress(cmd, label, items)
	r.Progress = p
	s := filecrypt.Each(cmd.Context(), verb, items, jobs, p, op)
	p.Stop()
	s.Print(cmd.ErrOrStderr())
	return s.Err()
}

func verifyCommand() *cobra.Command {
	var kf kmsFlags
	cmd := &cobra.Command{
		Use:   "verify FILE...",
		Short: "Authenticate encrypted files (directories recursively) without writing any plaintext",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _, closeFn, err := kf.runner(cmd)
			if err != nil {
				return err
			}
			defer closeFn()
			return manyFiles(cmd, "verified", "verifying", args, 1, r, func(ctx context.Context, it filecrypt.Item) (filecrypt.Result, error) {
				n, err := r.Verify(ctx, it.Path)
				return filecrypt.Result{Bytes: n}, err
			})
		},
	}
	kf.add(cmd)
	return cmd
}

func rewrapCommand() *cobra.Command {
	var (
		kf   kmsFlags
		jobs int
	)
	cmd := &cobra.Command{
		Use:   "rewrap FILE...",
		Short: "Re-wrap files' data keys under the newest key version (header only, atomic; directories recursively)",
		Long: `Rewrite only the header of each file so its data key is wrapped by the newest version of
its KMS key. The data is not decrypted or re-encrypted: constant crypto work per file. Each
file is replaced atomically; files already under the newest version are left alone.
Rewrap does not authenticate the data: use ` + "`ward verify`" + ` for that.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _, closeFn, err := kf.runner(cmd)
			if err != nil {
				return err
			}
			defer closeFn()
			return manyFiles(cmd, "rewrapped", "rewrapping", args, jobs, r, func(ctx context.Context, it filecrypt.Item) (filecrypt.Result, error) {
				changed, _, err := r.Rewrap(ctx, it.Path)
				if r.Progress != nil {
					r.Progress.Add(it.Size)
				}
				return filecrypt.Result{Bytes: it.Size, Unchanged: err == nil && !changed}, err
			})
		},
	}
	cmd.Flags().IntVar(&jobs, "jobs", 8, "files rewrapped at the same time")
	kf.add(cmd)
	return cmd
}

func reencryptCommand() *cobra.Command {
	var (
		kf  kmsFlags
		key string
	)
	cmd := &cobra.Command{
		Use:   "reencrypt FILE...",
		Short: "Re-encrypt files under a fresh data key (a compromised data key; atomic; directories recursively)",
		Long: `Decrypt each file and encrypt it again under a fresh data key, keeping algorithm, segment
size, classification and metadata. --key moves the files to another KMS key. A file is
replaced atomically, and only if every segment of the old one verified.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, _, closeFn, err := kf.runner(cmd)
			if err != nil {
				return err
			}
			defer closeFn()
			return manyFiles(cmd, "re-encrypted", "re-encrypting", args, 1, r, func(ctx context.Context, it filecrypt.Item) (filecrypt.Result, error) {
				n, err := r.Reencrypt(ctx, it.Path, key)
				return filecrypt.Result{Bytes: n}, err
			})
		},
	}
	cmd.Flags().StringVar(&key, "key", "", "KMS key for the new data keys (default: each file's current key)")
	kf.add(cmd)
	return cmd
}

type inspectJSON struct {
	File           string            `json:"file"`
	Format         int               `json:"format"`
	Algorithm      string            `json:"algorithm"`
	Key            string            `json:"key"`
	KeyVersion     uint32            `json:"key_version"`
	KeyAlgorithm   string            `json:"key_algorithm"`
	SegmentSize    int               `json:"segment_size"`
	HeaderSize     int               `json:"header_size"`
	FileSize       int64             `json:"file_size"`
	Segments       int64             `json:"segments"`
	PlaintextSize  int64             `json:"plaintext_size"`
	Classification string            `json:"classification,omitempty"`
	ObjectID       string            `json:"object_id"`
	Metadata       map[string]string `json:"metadata,omitempty"`
}

func inspectCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Show an encrypted file's header: key, version, algorithm, sizes, labels (never a secret; no KMS call)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			h, err := envelope.ParseHeader(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			body := st.Size() - int64(h.Len)
			cs := int64(h.SegmentSize + 16)
			nseg := (body + cs - 1) / cs
			v := inspectJSON{File: args[0], Format: int(h.Format), Algorithm: h.Alg.String(), Key: h.KeyName, KeyVersion: h.KeyVersion,
				KeyAlgorithm: h.KeyAlg, SegmentSize: h.SegmentSize, HeaderSize: h.Len, FileSize: st.Size(), Segments: nseg,
				PlaintextSize: max(0, body-16*nseg), Classification: h.Classification, ObjectID: h.ObjectID, Metadata: h.Metadata}
			w := cmd.OutOrStdout()
			if asJSON {
				e := json.NewEncoder(w)
				e.SetIndent("", "  ")
				return e.Encode(v)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "File:\t%s\n", v.File)
			fmt.Fprintf(tw, "Format:\tward envelope v%d\n", v.Format)
			fmt.Fprintf(tw, "Algorithm:\t%s\n", v.Algorithm)
			fmt.Fprintf(tw, "Key:\t%s\n", v.Key)
			fmt.Fprintf(tw, "Key version:\t%d\n", v.KeyVersion)
			fmt.Fprintf(tw, "Key algorithm:\t%s\n", v.KeyAlgorithm)
			fmt.Fprintf(tw, "Segment size:\t%d\n", v.SegmentSize)
			fmt.Fprintf(tw, "Header size:\t%d\n", v.HeaderSize)
			fmt.Fprintf(tw, "Segments:\t%d\n", v.Segments)
			fmt.Fprintf(tw, "Plaintext size:\t%d (from the file size; run `ward verify` to authenticate)\n", v.PlaintextSize)
			cl := v.Classification
			if cl == "" {
				cl = "-"
			}
			fmt.Fprintf(tw, "Classification:\t%s\n", cl)
			fmt.Fprintf(tw, "Object ID:\t%s\n", v.ObjectID)
			keys := make([]string, 0, len(v.Metadata))
			for k := range v.Metadata {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(tw, "Metadata:\t%s=%s\n", k, v.Metadata[k])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func localKeyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "local-key", Short: "Manage local key files for offline encryption (--local-key)"}
	var name string
	newCmd := &cobra.Command{
		Use:   "new FILE",
		Short: "Create a local key file (mode 0600) holding key local/NAME, version 1",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Lstat(args[0]); err == nil {
				return fmt.Errorf("%s already exists: refusing to overwrite a key file (data encrypted under it would be lost)", args[0])
			}
			l, err := envelope.NewLocalKMS(name)
			if err != nil {
				return err
			}
			if err := l.Save(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created %s: key %s version 1\n", args[0], l.KeyName())
			return nil
		},
	}
	newCmd.Flags().StringVar(&name, "name", "default", "key name (the key is called local/NAME)")
	rotate := &cobra.Command{
		Use:   "rotate FILE",
		Short: "Add a new version to a local key file (old versions stay for decryption; then `ward rewrap`)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := envelope.LoadLocalKMS(args[0])
			if err != nil {
				return err
			}
			v, err := l.Rotate()
			if err != nil {
				return err
			}
			if err := l.Save(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "key %s: version %d is now the newest\n", l.KeyName(), v)
			return nil
		},
	}
	cmd.AddCommand(newCmd, rotate)
	return cmd
}
