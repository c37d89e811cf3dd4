package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"path"
	"strconv"
	"strings"
)

// The soft memory limit `ward server` sets when GOMEMLIMIT is unset
// (TuneGC): GCPercent lets the heap grow to five times its live size, and
// without a limit nothing stops that short of the OOM killer.
const (
	// CgroupMemoryFraction of the cgroup's memory limit (v2 memory.max,
	// v1 memory.limit_in_bytes): the share automemlimit-style tools use
	// (and deploy/authority.yaml: 1800MiB of 2Gi), leaving the rest for
	// what the Go heap does not count (stacks, the runtime, page cache of
	// the bbolt file charged to the cgroup).
	CgroupMemoryFraction = 0.9
	// HostMemoryFraction of MemTotal when no cgroup limits the process:
	// on a host the authority shares with others (etcd, the agent, the
	// workloads), it is a bound on the collector's headroom, not a claim
	// on the machine.
	HostMemoryFraction = 0.5
	// MinMemoryLimit is the floor of the chosen soft limit: below the
	// live heap of a small authority (tens of MiB) the collector would run
	// back to back (a GC storm capped at half the CPU) for no gain. A tiny
	// limit read from the cgroup tree is far more likely one that does not
	// bind the process (a cgroup v1 parent with use_hierarchy 0, a stale
	// slice setting) than a real 100 MiB box; on such a box set
	// GOMEMLIMIT.
	MinMemoryLimit = 128 << 20
)

// maxMemFile bounds what is read of one cgroup or /proc file: the real
// ones are a few KiB.
const maxMemFile = 64 << 10

// MemoryLimit is the soft limit chosen for the process.
type MemoryLimit struct {
	Bytes int64
	// Source says where it came from: "cgroup v2 /sys/fs/cgroup/.../memory.max",
	// "cgroup v1 ...", or "/proc/meminfo MemTotal".
	Source string
	// Of is the limit or total it is a fraction of.
	Of int64
}

// chooseMemoryLimit reads the process's cgroup memory limit from root (the
// file system root: os.DirFS("/")), the smallest along its cgroup path up
// to the root cgroup, and returns CgroupMemoryFraction of it; with no
// cgroup limit (or one above the machine's memory), HostMemoryFraction of
// MemTotal. ok is false when neither can be read.
func chooseMemoryLimit(root fs.FS) (MemoryLimit, bool) {
	total, totalErr := readMemTotal(root)
	if lim, src, ok := cgroupMemoryLimit(root); ok && (totalErr != nil || lim < total) {
		return floored(MemoryLimit{Bytes: int64(float64(lim) * CgroupMemoryFraction), Source: src, Of: lim}), true
	}
	if totalErr != nil {
		return MemoryLimit{}, false
	}
	return floored(MemoryLimit{Bytes: int64(float64(total) * HostMemoryFraction), Source: "/proc/meminfo MemTotal", Of: total}), true
}

// floored raises m to MinMemoryLimit, saying so in its Source.
func floored(m MemoryLimit) MemoryLimit {
	if m.Bytes < MinMemoryLimit {
		m.Bytes = MinMemoryLimit
		m.Source += fmt.Sprintf(" (of %dMiB; raised to the %dMiB floor)", m.Of>>20, MinMemoryLimit>>20)
	}
	return m
}

func readSmall(root fs.FS, name string) ([]byte, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxMemFile))
}

func readMemTotal(root fs.FS) (int64, error) {
	b, err := readSmall(root, "proc/meminfo")
	if err != nil {
		return 0, err
	}
	return parseMemTotal(b)
}

// parseMemTotal returns MemTotal of /proc/meminfo, in bytes.
func parseMemTotal(b []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("MemTotal line %q: want a number of kB", sc.Text())
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb <= 0 || kb > math.MaxInt64/1024 {
			return 0, fmt.Errorf("MemTotal %q is not a positive number of kB", f[0])
		}
		return kb * 1024, nil
	}
	return 0, errors.New("no MemTotal line in /proc/meminfo")
}

// procCgroup is what /proc/self/cgroup says: the v1 memory controller's
// path, if the memory controller is on a v1 hierarchy, and the v2 path.
type procCgroup struct {
	v1Memory, v2 string
	hasV1, hasV2 bool
}

// parseProcCgroup reads /proc/self/cgroup: lines "ID:CONTROLLERS:PATH";
// v2 is "0::PATH".
func parseProcCgroup(b []byte) (procCgroup, error) {
	var pc procCgroup
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		id, rest, ok1 := strings.Cut(line, ":")
		ctrls, p, ok2 := strings.Cut(rest, ":")
		if !ok1 || !ok2 || !strings.HasPrefix(p, "/") {
			return procCgroup{}, fmt.Errorf("/proc/self/cgroup line %q: want ID:CONTROLLERS:/PATH", line)
		}
		p = path.Clean(p)
		if id == "0" && ctrls == "" {
			pc.v2, pc.hasV2 = p, true
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if c == "memory" {
				pc.v1Memory, pc.hasV1 = p, true
			}
		}
	}
	return pc, nil
}

// parseCgroupLimit reads memory.max (v2: bytes or "max") or
// memory.limit_in_bytes (v1: bytes; no limit is a number near
// MaxInt64). ok is false for no limit.
func parseCgroupLimit(b []byte) (limit int64, ok bool, err error) {
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		// v1 may write the unlimited value as an unsigned number above MaxInt64.
		if u, uerr := strconv.ParseUint(s, 10, 64); uerr == nil && u > math.MaxInt64 {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("memory limit %q: want a number of bytes or max", s)
	}
	if n <= 0 {
		return 0, false, fmt.Errorf("memory limit %d: want a positive number of bytes", n)
	}
	if n >= 1<<62 { // v1's "unlimited" (page-rounded MaxInt64)
		return 0, false, nil
	}
	return n, true, nil
}

// cgroupMemoryLimit is the smallest memory limit on the process's cgroup
// path (its own cgroup, then each parent up to the root: a parent's limit
// binds its children too), with the file it came from.
func cgroupMemoryLimit(root fs.FS) (int64, string, bool) {
	b, err := readSmall(root, "proc/self/cgroup")
	if err != nil {
		return 0, "", false
	}
	pc, err := parseProcCgroup(b)
	if err != nil {
		return 0, "", false
	}
	// The memory controller is on v1 when a v1 hierarchy lists it (a
	// hybrid host also has "0::/", without controllers).
	dir, file, version := "sys/fs/cgroup", "memory.max", "cgroup v2"
	p := pc.v2
	switch {
	case pc.hasV1:
		dir, file, version, p = "sys/fs/cgroup/memory", "memory.limit_in_bytes", "cgroup v1", pc.v1Memory
	case !pc.hasV2:
		return 0, "", false
	}
	var best int64
	var src string
	own := p
	for {
		name := path.Join(dir, p, file)
		// A v1 parent without use_hierarchy does not count its children's
		// memory: its limit does not bind this process.
		binds := version != "cgroup v1" || p == own || v1Hierarchical(root, path.Join(dir, p))
		if b, err := readSmall(root, name); binds && err == nil {
			if lim, ok, err := parseCgroupLimit(b); err == nil && ok && (best == 0 || lim < best) {
				best, src = lim, version+" /"+name
			}
		}
		if p == "/" || p == "." || p == "" {
			break
		}
		p = path.Dir(p)
	}
	return best, src, best > 0
}

// v1Hierarchical reports whether the cgroup v1 memory directory dir
// charges its children's usage to its own limit (memory.use_hierarchy 1;
// when the file is unreadable, assume it does, as every kernel since
// 4.x forces).
func v1Hierarchical(root fs.FS, dir string) bool {
	b, err := readSmall(root, path.Join(dir, "memory.use_hierarchy"))
	return err != nil || strings.TrimSpace(string(b)) != "0"
}
