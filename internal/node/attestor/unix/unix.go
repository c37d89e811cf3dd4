// Package unix is the unix workload attestor: from a caller's peer
// credentials and /proc it reports the selectors unix:uid:N, unix:gid:N,
// unix:supplementary_gid:N, unix:path:/abs (the binary) and unix:sha256:HEX
// (the binary's digest).
//
// The agent and the workload must share a PID namespace. A pidfd of the
// caller (from the connection via SO_PEERPIDFD, or opened at attestation
// time on older kernels) is checked after /proc is read: the facts belong to
// a process that was still alive, so a PID reused in between is detected.
//
// unix:path and unix:sha256 are reported only for the program the caller
// ran when its connection was accepted (attest.Caller.Image, recorded by
// peercred.Read): if the process has exec'd since, attestation
// fails, and without a recorded image no binary selector is reported.
// Entries must pair them with unix:uid or unix:gid
// (attest.CheckEntrySelectors); docs/identity.md says what each proves.
package unix

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/wardproject/ward/internal/shared/attest"
)

// Type is the selector type this attestor emits.
const Type = "unix"

// Attestor implements attest.Attestor for local processes.
type Attestor struct {
	procRoot string

	mu    sync.Mutex
	cache map[fileKey]string // binary identity -> sha256 hex
}

type fileKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

const maxCache = 4096

// Option configures an Attestor.
type Option func(*Attestor)

// WithProcRoot reads process information below root instead of /proc.
func WithProcRoot(root string) Option { return func(a *Attestor) { a.procRoot = root } }

// New returns a unix attestor.
func New(opts ...Option) *Attestor {
	a := &Attestor{procRoot: "/proc", cache: map[fileKey]string{}}
	for _, o := range opts {
		o(a)
	}
	return a
}

// Attest implements attest.Attestor.
func (a *Attestor) Attest(ctx context.Context, c attest.Caller) ([]attest.Selector, error) {
	if c.PID <= 0 {
		return nil, fmt.Errorf("unix attestor: caller has no PID (peer in another PID namespace?)")
	}
	// The pidfd pins the process: if it is still alive after /proc was
	// read, what was read belongs to it. The connection's own pidfd (from
	// SO_PEERPIDFD) also covers a PID reused before this call; without it,
	// open one now.
	alive := func() error { return nil } // no pidfd support (kernel < 5.3)
	if c.PIDFD != nil {
		rc, err := c.PIDFD.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("unix attestor: pidfd of pid %d: %w", c.PID, err)
		}
		alive = func() error {
			var sigErr error
			if err := rc.Control(func(fd uintptr) { sigErr = unix.PidfdSendSignal(int(fd), 0, nil, 0) }); err != nil {
				return err
			}
			return sigErr
		}
	} else {
		fd, err := unix.PidfdOpen(int(c.PID), 0)
		if err != nil && !errors.Is(err, unix.ENOSYS) {
			return nil, fmt.Errorf("unix attestor: open pidfd of pid %d: %w", c.PID, err)
		}
		if err == nil {
			defer unix.Close(fd)
			alive = func() error { return unix.PidfdSendSignal(fd, 0, nil, 0) }
		}
	}
	if err := alive(); err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d has exited", c.PID)
	}
	sel := []attest.Selector{
		{Type: Type, Value: "uid:" + strconv.FormatUint(uint64(c.UID), 10)},
		{Type: Type, Value: "gid:" + strconv.FormatUint(uint64(c.GID), 10)},
	}
	procDir := filepath.Join(a.procRoot, strconv.Itoa(int(c.PID)))
	groups, err := readGroups(filepath.Join(procDir, "status"))
	if err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d: %w", c.PID, err)
	}
	for _, g := range groups {
		sel = append(sel, attest.Selector{Type: Type, Value: "supplementary_gid:" + g})
	}
	// Binary selectors only for the program the caller ran when it
	// connected: a process that connects and then execs keeps its PID and
	// uid, and /proc would show the new binary while the socket is spoken
	// on by whoever the first program handed it to.
	if c.Image.IsZero() {
		// Nothing recorded at connect time (unreadable /proc, or a caller
		// not built by peercred.Read): no facts about the binary.
		if err := alive(); err != nil {
			return nil, fmt.Errorf("unix attestor: pid %d exited during attestation", c.PID)
		}
		return attest.Normalize(sel), nil
	}
	if err := attest.CheckImage(a.procRoot, c.PID, c.Image); err != nil {
		return nil, fmt.Errorf("unix attestor: %w", err)
	}
	bin, err := a.binary(ctx, filepath.Join(procDir, "exe"), c.Image)
	if err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d: %w", c.PID, err)
	}
	if bin.path != "" {
		sel = append(sel, attest.Selector{Type: Type, Value: "path:" + bin.path})
	}
	sel = append(sel, attest.Selector{Type: Type, Value: "sha256:" + bin.sum})
	// The process must still be the one we asked about, running the same
	// program.
	if err := alive(); err != nil {
		return nil, fmt.Errorf("unix attestor: pid %d exited during attestation", c.PID)
	}
	if err := attest.CheckImage(a.procRoot, c.PID, c.Image); err != nil {
		return nil, fmt.Errorf("unix attestor: %w", err)
	}
	return attest.Normalize(sel), nil
}

// readGroups returns the supplementary group IDs from a /proc status file.
func readGroups(statusPath string) ([]string, error) {
	f, err := os.Open(statusPath)
	if err != nil {
		return nil, fmt.Errorf("read process status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []string
		for _, g := range strings.Fields(rest) {
			if _, err := strconv.ParseUint(g, 10, 32); err != nil {
				return nil, fmt.Errorf("process status: bad group %q", g)
			}
			out = append(out, g)
		}
		return out, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read process status: %w", err)
	}
	return nil, errors.New("process status has no Groups line")
}

type binaryFacts struct {
	path string // "" if the binary has no absolute, undeleted path
	sum  string // SHA-256, hex
}

// binary opens the caller's executable once and reports its path and
// digest from that one open file, after checking it is the file of the
// recorded image (so both facts describe the program that connected).
// Digests are cached by file identity (device, inode, size, mtime, ctime),
// so a binary is hashed once per change.
func (a *Attestor) binary(ctx context.Context, exe string, img attest.Image) (binaryFacts, error) {
	f, err := os.Open(exe)
	if err != nil {
		return binaryFacts{}, fmt.Errorf("open binary: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return binaryFacts{}, fmt.Errorf("stat binary: %w", err)
	}
	if uint64(st.Dev) != img.Dev || st.Ino != img.Ino {
		return binaryFacts{}, fmt.Errorf("%w: the binary now open is %d:%d, not the %s it connected with", attest.ErrImageChanged, st.Dev, st.Ino, img)
	}
	var out binaryFacts
	// The path of the file we hold, not of whatever /proc/PID/exe names by now.
	if p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd()))); err == nil && filepath.IsAbs(p) && !strings.HasSuffix(p, " (deleted)") {
		out.path = filepath.Clean(p)
	}
	key := fileKey{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
	a.mu.Lock()
	sum, ok := a.cache[key]
	a.mu.Unlock()
	if ok {
		out.sum = sum
		return out, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, &ctxReader{ctx: ctx, r: f}); err != nil {
		return binaryFacts{}, fmt.Errorf("digest of binary: %w", err)
	}
	out.sum = hex.EncodeToString(h.Sum(nil))
	a.mu.Lock()
	if len(a.cache) >= maxCache {
		clear(a.cache)
	}
	a.cache[key] = out.sum
	a.mu.Unlock()
	return out, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
