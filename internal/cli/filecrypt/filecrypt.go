// Package filecrypt applies envelope encryption to files and directory
// trees for the CLI: it expands paths, replaces files atomically (temp
// file, fsync, rename), shows progress on a terminal and summarises the
// outcome. Bad input never leaves a partial file behind. Outputs never
// follow or inherit from what is at the output path: they are new files of
// mode 0600 (or the caller's), a symbolic link at an output path or under
// an output tree is refused, and output trees are written through os.Root
// (see write.go).
package filecrypt

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"

	"github.com/wardproject/ward/envelope"
)

// Suffix is appended to encrypted file names in directory mode.
const Suffix = ".ward"

// tmpPrefix marks our temporary files; Collect skips them.
const tmpPrefix = ".ward-tmp-"

// Item is one regular file to process.
type Item struct {
	Path string // as found
	Rel  string // relative to the argument it was found under ("" for a file argument)
	Size int64
}

// Collect expands files and directories (recursively) into regular files,
// in a stable order. Symbolic links inside directories, to files or to
// directories, are skipped (never followed) and reported in skipped; our
// own temporary files are ignored. A path given as an argument is the
// caller's choice and is followed if it is a link.
func Collect(paths []string) (items []Item, skipped []string, err error) {
	seen := map[string]bool{}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p, err)
		}
		if !st.IsDir() {
			if !st.Mode().IsRegular() {
				return nil, nil, fmt.Errorf("%s is not a regular file", p)
			}
			if !seen[p] {
				seen[p] = true
				items = append(items, Item{Path: p, Size: st.Size()})
			}
			continue
		}
		err = filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			if strings.HasPrefix(d.Name(), tmpPrefix) {
				return nil
			}
			if !d.Type().IsRegular() {
				skipped = append(skipped, path)
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(p, path)
			if !seen[path] {
				seen[path] = true
				items = append(items, Item{Path: path, Rel: rel, Size: info.Size()})
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("walking %s: %w", p, err)
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].Path < items[j].Path })
	return items, skipped, nil
}

// Runner performs envelope operations on files.
type Runner struct {
	KMS      envelope.KMS
	Opts     []envelope.Option // e.g. envelope.WithContext, for every operation
	Progress *Progress         // may be nil
	// Mode is the mode of new output files (EncryptFile, DecryptFile and
	// the *In forms); 0 means DefaultMode (0600). Rewrap and Reencrypt
	// keep the mode of the file they replace.
	Mode fs.FileMode
}

// OutputMode is the mode new output files get: r.Mode or DefaultMode.
func (r *Runner) OutputMode() fs.FileMode {
	if r.Mode == 0 {
		return DefaultMode
	}
	return r.Mode
}

func (r *Runner) counted(rd io.Reader) io.Reader {
	if r.Progress == nil {
		return rd
	}
	return r.Progress.Reader(rd)
}

// regular returns src as a regular file, its size and the current
// offset, or nil.
func regular(src io.Reader) (f *os.File, size, pos int64) {
	f, ok := src.(*os.File)
	if !ok {
		return nil, 0, 0
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil, 0, 0
	}
	pos, err = f.Seek(0, io.SeekCurrent)
	if err != nil || pos > st.Size() {
		return nil, 0, 0
	}
	return f, st.Size(), pos
}

// section gives the rest of src, when it is a regular file, as an
// *io.SectionReader (its reads counted by the progress bar): the envelope
// then reads it with ReadAt from all its goroutines at once, in parallel
// with the encryption, instead of one read after the other. It is nil for
// anything else (pipes, terminals, sockets), which is read as a stream.
// The file's own offset is left where it was.
func (r *Runner) section(src io.Reader) *io.SectionReader {
	f, size, pos := regular(src)
	if f == nil {
		return nil
	}
	var ra io.ReaderAt = f
	if r.Progress != nil {
		ra = r.Progress.ReaderAt(f)
	}
	return io.NewSectionReader(ra, pos, size-pos)
}

// mapMin is the smallest input file Encrypt maps into memory instead of
// reading it; mapChunk is how much of a mapping one Write hands over (and
// is released at once after it; a variable for tests).
const mapMin = 4 << 20

var mapChunk = 64 << 20

// Encrypt encrypts src (stream) into dst under keyName. A regular file
// is encrypted as much of it as it held when Encrypt started: mapped into
// memory (Linux, from 4 MiB: the segments are sealed straight from the
// page cache by all cores, nothing is copied in), else read in parallel
// (see section). A mapped file that shrinks meanwhile fails the call
// (envelope.ErrInputFault) instead of crashing the process.
func (r *Runner) Encrypt(ctx context.Context, dst io.Writer, src io.Reader, keyName string, opts ...envelope.Option) (int64, error) {
	w, err := envelope.NewWriter(ctx, dst, r.KMS, keyName, append(append([]envelope.Option{}, r.Opts...), opts...)...)
	if err != nil {
		return 0, err
	}
	var n int64
	if f, size, pos := regular(src); f != nil && pos == 0 && size >= mapMin {
		if m, unmap, ok := mapFile(f, size); ok {
			n, err = r.writeMapped(w, m)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			unmap()
			return n, err
		}
	}
	in := r.counted(src)
	if sr := r.section(src); sr != nil {
		in = sr
	}
	n, err = w.ReadFrom(in)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// releaseMapped is release (a variable for tests).
var releaseMapped = release

// writeMapped writes the mapped file m to w in large pieces (progress
// between them). Write seals whole segments straight from m and does not
// keep it; a fault reading m (the file shrank) becomes Write's error,
// here (SetPanicOnFault) as in the envelope's goroutines. Each piece w
// is done with is released (see release) by another goroutine while the
// next ones are sealed; all of them before writeMapped returns.
func (r *Runner) writeMapped(w io.Writer, m []byte) (n int64, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	done := make(chan []byte, len(m)/mapChunk+1) // never blocks the sender
	released := make(chan struct{})
	go func() {
		for c := range done {
			releaseMapped(c)
		}
		close(released)
	}()
	defer func() {
		close(done)
		<-released
	}()
	for len(m) > 0 {
		c := m[:min(len(m), mapChunk)]
		k, err := w.Write(c)
		n += int64(k)
		if r.Progress != nil {
			r.Progress.Add(int64(k))
		}
		if err != nil {
			return n, err
		}
		done <- c
		m = m[len(c):]
	}
	return n, nil
}

// Decrypt decrypts src into dst. dst receives only authenticated
// plaintext; on error it may hold the verified part before the bad
// segment (callers writing files use DecryptFile). A regular file is
// read in parallel through envelope.ReaderAt, which authenticates its
// final segment first: a truncated or extended file fails before any
// plaintext is written.
func (r *Runner) Decrypt(ctx context.Context, dst io.Writer, src io.Reader) (int64, error) {
	if sr := r.section(src); sr != nil {
		ra, err := envelope.NewReaderAt(ctx, sr, sr.Size(), r.KMS, r.Opts...)
		if err != nil {
			return 0, err
		}
		return ra.WriteTo(dst)
	}
	rd, err := envelope.NewReader(ctx, r.counted(src), r.KMS, r.Opts...)
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	return rd.WriteTo(dst)
}

// EncryptFile encrypts src into the file dst atomically (see AtomicWrite:
// a symbolic link at dst is refused, the output has mode r.Mode).
func (r *Runner) EncryptFile(ctx context.Context, dst, src, keyName string, opts ...envelope.Option) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	var n int64
	err = AtomicWrite(dst, r.OutputMode(), func(f *os.File) error {
		n, err = r.Encrypt(ctx, WriteBehind(f), in, keyName, opts...)
		return err
	})
	return n, err
}

// DecryptFile decrypts src into dst: dst appears (by rename) only after
// the final segment has been authenticated, as a new file of mode r.Mode
// (0600 by default), never through a symbolic link.
func (r *Runner) DecryptFile(ctx context.Context, dst, src string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	var n int64
	err = AtomicWrite(dst, r.OutputMode(), func(f *os.File) error {
		n, err = r.Decrypt(ctx, WriteBehind(f), in)
		return err
	})
	return n, err
}

// EncryptFileIn encrypts src (opened without following a symbolic link:
// it was found by walking a tree) into name under root (see WriteInRoot).
func (r *Runner) EncryptFileIn(ctx context.Context, root *os.Root, name, src, keyName string, opts ...envelope.Option) (int64, error) {
	in, err := OpenNoFollow(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	var n int64
	err = WriteInRoot(root, name, r.OutputMode(), func(f *os.File) error {
		n, err = r.Encrypt(ctx, WriteBehind(f), in, keyName, opts...)
		return err
	})
	return n, err
}

// DecryptFileIn decrypts src (not following a symbolic link) into name
// under root (see WriteInRoot).
func (r *Runner) DecryptFileIn(ctx context.Context, root *os.Root, name, src string) (int64, error) {
	in, err := OpenNoFollow(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	var n int64
	err = WriteInRoot(root, name, r.OutputMode(), func(f *os.File) error {
		n, err = r.Decrypt(ctx, WriteBehind(f), in)
		return err
	})
	return n, err
}

// Verify authenticates every segment of path without writing plaintext.
func (r *Runner) Verify(ctx context.Context, path string) (int64, error) {
	in, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	return r.Decrypt(ctx, io.Discard, in)
}

// Rewrap rewrites only the header of path with its data key wrapped under
// the newest key version, replacing the file atomically (keeping its
// mode; a symbolic link is refused). It reports false (and leaves the
// file alone) if the key version did not change.
func (r *Runner) Rewrap(ctx context.Context, path string) (changed bool, h *envelope.Header, err error) {
	in, err := OpenNoFollow(path)
	if err != nil {
		return false, nil, err
	}
	defer in.Close()
	old, err := envelope.ParseHeader(in)
	if err != nil {
		return false, nil, err
	}
	nh, err := envelope.Rewrap(ctx, r.KMS, old, r.Opts...)
	if err != nil {
		return false, old, err
	}
	if nh.KeyName == old.KeyName && nh.KeyVersion == old.KeyVersion {
		return false, nh, nil
	}
	err = ReplaceInPlace(path, func(f *os.File) error {
		if _, err := f.Write(nh.Encoded()); err != nil {
			return err
		}
		_, err := io.Copy(f, in) // in is positioned right after the header
		return err
	})
	return err == nil, nh, err
}

// Reencrypt decrypts path and encrypts it again under a fresh data key
// (for a compromised one), keeping algorithm, segment size,
// classification and metadata; keyName "" keeps the key. The file is
// replaced atomically (keeping its mode; a symbolic link is refused) only
// if every segment of the old one verified.
func (r *Runner) Reencrypt(ctx context.Context, path, keyName string) (int64, error) {
	in, err := OpenNoFollow(path)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	rd, err := envelope.NewReader(ctx, r.counted(in), r.KMS, r.Opts...)
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	h := rd.Header()
	if keyName == "" {
		keyName = h.KeyName
	}
	var n int64
	err = ReplaceInPlace(path, func(f *os.File) error {
		w, err := envelope.NewWriter(ctx, WriteBehind(f), r.KMS, keyName, append(append([]envelope.Option{}, r.Opts...),
			envelope.WithAlgorithm(h.Alg), envelope.WithSegmentSize(h.SegmentSize),
			envelope.WithClassification(h.Classification), envelope.WithMetadata(h.Metadata))...)
		if err != nil {
			return err
		}
		n, err = rd.WriteTo(w)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		return err
	})
	return n, err
}

// Failure is one file that failed.
type Failure struct {
	Path string
	Err  error
}

// Summary is the outcome of an operation over many files.
type Summary struct {
	Verb      string // past tense: "encrypted", "verified", ...
	Files     int    // succeeded
	Bytes     int64  // bytes processed
	Unchanged int    // succeeded without change (rewrap: already current)
	Failures  []Failure
}

// Err returns nil, or an error naming how many files failed.
func (s *Summary) Err() error {
	if len(s.Failures) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d files failed (see above); files that failed were left unchanged", len(s.Failures), len(s.Failures)+s.Files+s.Unchanged)
}

// Print writes the failures and a one-line summary.
func (s *Summary) Print(w io.Writer) {
	for _, f := range s.Failures {
		fmt.Fprintf(w, "FAILED %s: %v\n", f.Path, f.Err)
	}
	line := fmt.Sprintf("%s %d files, %s", s.Verb, s.Files, HumanBytes(s.Bytes))
	if s.Unchanged > 0 {
		line += fmt.Sprintf("; %d already current", s.Unchanged)
	}
	fmt.Fprintf(w, "%s; %d failures\n", line, len(s.Failures))
}

// Result is what one file's operation reports to Each.
type Result struct {
	Bytes     int64
	Unchanged bool
}

// Each runs fn over items with up to jobs at a time, stopping early only
// if ctx is cancelled, and returns the summary.
func Each(ctx context.Context, verb string, items []Item, jobs int, p *Progress, fn func(ctx context.Context, it Item) (Result, error)) *Summary {
	s := &Summary{Verb: verb}
	var mu sync.Mutex
	sem := make(chan struct{}, max(1, jobs))
	var wg sync.WaitGroup
	for _, it := range items {
		if ctx.Err() != nil {
			mu.Lock()
			s.Failures = append(s.Failures, Failure{it.Path, fmt.Errorf("not processed: %w", ctx.Err())})
			mu.Unlock()
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res, err := fn(ctx, it)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				s.Failures = append(s.Failures, Failure{it.Path, err})
			case res.Unchanged:
				s.Unchanged++
			default:
				s.Files++
				s.Bytes += res.Bytes
			}
			if p != nil {
				p.FileDone()
			}
		}()
	}
	wg.Wait()
	sort.Slice(s.Failures, func(i, j int) bool { return s.Failures[i].Path < s.Failures[j].Path })
	return s
}

// HumanBytes formats n as B, KiB, MiB, GiB.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
