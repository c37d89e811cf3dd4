package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/wardproject/ward/client"
	"github.com/wardproject/ward/internal/shared/peercred"
)

func init() {
	register(func(root *cobra.Command) {
		root.PersistentFlags().Int("server-uid", -1, "also trust an admin socket served by this uid (by default only root, yourself, or the owner of a private directory holding the socket; see docs/configuration.md)")
	})
}

// dial connects to the authority named by --address or $WARD_ADDRESS.
// On the admin socket every connection is checked before a byte of a
// request is sent (adminPeer): shares, tokens and plaintext never reach
// a listener run by an untrusted user.
func dial(cmd *cobra.Command) (*client.Client, error) {
	c, _, err := dialChecked(cmd)
	return c, err
}

func dialChecked(cmd *cobra.Command) (*client.Client, *adminPeer, error) {
	flag, _ := cmd.Flags().GetString("address")
	addr, err := client.ResolveAddress(flag)
	if err != nil {
		return nil, nil, err
	}
	var opts []client.Option
	var chk *adminPeer
	if paths := unixPaths(addr); len(paths) > 0 {
		extra := -1
		if cmd.Flags().Lookup("server-uid") != nil {
			extra, _ = cmd.Flags().GetInt("server-uid")
		}
		chk = &adminPeer{path: paths[0], paths: paths, self: uint32(os.Geteuid()), extraUID: extra}
		opts = append(opts, client.WithUnixPeerCheck(chk.check))
	}
	c, err := client.Dial(addr, opts...)
	return c, chk, err
}

// withClient runs f with a connected client and a bounded context,
// translating API errors into their messages. A refused admin-socket peer
// is reported as such (not as "cannot reach the authority").
func withClient(cmd *cobra.Command, f func(ctx context.Context, c *client.Client) error) error {
	c, chk, err := dialChecked(cmd)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
	defer cancel()
	if err := f(ctx, c); err != nil {
		if perr := chk.refused(); perr != nil {
			return perr
		}
		return client.Unwrap(err)
	}
	return nil
}

// adminPeer decides whether the process serving the admin socket may be
// sent anything. Its uid (SO_PEERCRED of the very connection the request
// will travel on) must be one of:
//   - 0 (root), or the CLI's own effective uid;
//   - the uid given with --server-uid;
//   - the owner of a private directory holding the socket: the socket
//     file and its directory are owned by that uid, the directory is not
//     group- or world-writable, and every directory above it (symbolic
//     links resolved) is owned by root and not group- or world-writable.
//     This is the layout `ward server` creates (data_dir 0700 under, say,
//     /var/lib) and one no other user can fake: in /tmp (world-writable)
//     or any directory another user can write, it does not hold.
//
// The socket file's owner alone proves nothing (whoever created the
// socket owns it), which is why the directory chain is checked.
type adminPeer struct {
	path     string
	paths    []string   // every admin socket of a failover client (remote_multi.go)
	parent   *adminPeer // the failover client's check that keeps the last refusal
	self     uint32
	extraUID int // -1: none

	mu  sync.Mutex
	err error
}

func (a *adminPeer) check(conn net.Conn) error {
	if len(a.paths) > 1 {
		return a.forConn(conn).check(conn)
	}
	caller, err := peercred.Read(conn)
	if err != nil {
		err = fmt.Errorf("admin socket %s: cannot read the credentials of the process serving it (%v): refusing to send anything to it", a.path, err)
	} else {
		if caller.PIDFD != nil {
			caller.PIDFD.Close()
		}
		err = a.trust(caller.UID, caller.PID)
	}
	a.mu.Lock()
	a.err = err
	a.mu.Unlock()
	if a.parent != nil {
		a.parent.mu.Lock()
		a.parent.err = err
		a.parent.mu.Unlock()
	}
	return err
}

// refused returns the last refusal, if the last check refused.
func (a *adminPeer) refused() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

func (a *adminPeer) trust(uid uint32, pid int32) error {
	if uid == 0 || uid == a.self || (a.extraUID >= 0 && uint32(a.extraUID) == uid) {
		return nil
	}
	why := privateDirOwnedBy(a.path, uid)
	if why == nil {
		return nil
	}
	return fmt.Errorf("admin socket %s is served by uid %d (pid %d), which is not root, not you (uid %d), and not the owner of a private directory holding the socket (%v): refusing to send anything to it (an unseal share, token or key material would go to that user). If the authority really runs as uid %d, pass --server-uid %d",
		a.path, uid, pid, a.self, why, uid, uid)
}

// privateDirOwnedBy returns nil if the socket at path and its directory
// are owned by uid, the directory is not group/world-writable, and every
// directory above it is root-owned and not group/world-writable.
func privateDirOwnedBy(path string, uid uint32) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s is not a socket", path)
	}
	if o := ownerOf(st); o != uid {
		return fmt.Errorf("the socket file is owned by uid %d", o)
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return err
	}
	dst, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if o := ownerOf(dst); o != uid || dst.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("its directory %s is owned by uid %d with mode %04o", dir, o, dst.Mode().Perm())
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		pst, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if o := ownerOf(pst); o != 0 || pst.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s above it is owned by uid %d with mode %04o: another user could have made the directory", p, o, pst.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func ownerOf(st os.FileInfo) uint32 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Uid
	}
	return ^uint32(0)
}

// parseKV parses repeated k=v flags into a map; duplicates are errors.
func parseKV(flagName string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: use key=value", flagName, p)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--%s: key %q given twice", flagName, k)
		}
		out[k] = v
	}
	return out, nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// readSecretLine reads one line from in: without echo on a terminal.
func readSecretLine(cmd *cobra.Command, prompt string) (string, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(cmd.ErrOrStderr(), prompt)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		return strings.TrimSpace(string(b)), err
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// confirm asks yes/no on a terminal; without a terminal it refuses and
// tells the user about --yes.
func confirm(cmd *cobra.Command, question string) error {
	in := cmd.InOrStdin()
	f, ok := in.(*os.File)
	if !ok || !isTerminal(f) {
		return fmt.Errorf("refusing without confirmation: no terminal to ask on; pass --yes to confirm")
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s Type 'yes' to continue: ", question)
	line, _ := bufio.NewReader(f).ReadString('\n')
	if strings.TrimSpace(line) != "yes" {
		return fmt.Errorf("aborted: nothing was changed")
	}
	return nil
}

// readInput reads all of stdin, bounded to limit bytes.
func readInput(cmd *cobra.Command, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading stdin: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("input is larger than %d bytes: the KMS is for small payloads and data keys; use `ward encrypt` for files", limit)
	}
	return b, nil
}
