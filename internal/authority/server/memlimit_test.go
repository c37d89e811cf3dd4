package server

import (
	"math"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

const (
	meminfo8G = "MemTotal:        8388608 kB\nMemFree:         1000 kB\n"
	gib       = int64(1) << 30
)

// TestChooseMemoryLimit: the soft limit comes from the smallest cgroup
// limit on the process's path (v2 or v1, hybrid hosts included), else from
// MemTotal; "max", v1's unlimited and unreadable files fall through.
func TestChooseMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		want  int64
		src   string // substring of Source
		ok    bool
	}{
		{"v2 own cgroup", map[string]string{"proc/self/cgroup": "0::/system.slice/ward.service\n",
			"sys/fs/cgroup/system.slice/ward.service/memory.max": "2147483648\n", "proc/meminfo": meminfo8G},
			frac(2*gib, CgroupMemoryFraction), "cgroup v2 /sys/fs/cgroup/system.slice/ward.service/memory.max", true},
		{"v2 container root (cgroup namespace)", map[string]string{"proc/self/cgroup": "0::/\n",
			"sys/fs/cgroup/memory.max": "1073741824\n", "proc/meminfo": meminfo8G},
			frac(gib, CgroupMemoryFraction), "cgroup v2 /sys/fs/cgroup/memory.max", true},
		{"v2 parent limits, own is max", map[string]string{"proc/self/cgroup": "0::/kubepods/pod1/c1\n",
			"sys/fs/cgroup/kubepods/pod1/c1/memory.max": "max\n", "sys/fs/cgroup/kubepods/pod1/memory.max": "536870912\n",
			"sys/fs/cgroup/kubepods/memory.max": "4294967296\n", "proc/meminfo": meminfo8G},
			frac(gib/2, CgroupMemoryFraction), "kubepods/pod1/memory.max", true},
		{"v2 unlimited: MemTotal", map[string]string{"proc/self/cgroup": "0::/user.slice\n",
			"sys/fs/cgroup/user.slice/memory.max": "max\n", "proc/meminfo": meminfo8G},
			frac(8*gib, HostMemoryFraction), "/proc/meminfo MemTotal", true},
		{"v1 hybrid: memory controller on v1", map[string]string{
			"proc/self/cgroup": "9:name=systemd:/\n4:memory:/docker/abc\n1:cpu,cpuacct:/\n0::/\n",
			"sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "268435456\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes":            "9223372036854771712\n", "proc/meminfo": meminfo8G},
			frac(gib/4, CgroupMemoryFraction), "cgroup v1 /sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", true},
		{"v1 unlimited: MemTotal", map[string]string{"proc/self/cgroup": "4:memory:/x\n",
			"sys/fs/cgroup/memory/x/memory.limit_in_bytes": "9223372036854771712\n", "proc/meminfo": meminfo8G},
			frac(8*gib, HostMemoryFraction), "MemTotal", true},
		{"cgroup limit above the machine: MemTotal", map[string]string{"proc/self/cgroup": "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "17179869184\n", "proc/meminfo": meminfo8G},
			frac(8*gib, HostMemoryFraction), "MemTotal", true},
		{"garbage cgroup files: MemTotal", map[string]string{"proc/self/cgroup": "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "lots\n", "proc/meminfo": meminfo8G},
			frac(8*gib, HostMemoryFraction), "MemTotal", true},
		{"no /proc/self/cgroup: MemTotal", map[string]string{"proc/meminfo": meminfo8G},
			frac(8*gib, HostMemoryFraction), "MemTotal", true},
		{"cgroup without meminfo", map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "1073741824"},
			frac(gib, CgroupMemoryFraction), "cgroup v2", true},
		// The floor: a tiny limit (most likely one that does not bind)
		// never gives a soft limit below MinMemoryLimit.
		{"v2 tiny limit: the floor", map[string]string{"proc/self/cgroup": "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "16777216\n", "proc/meminfo": meminfo8G},
			MinMemoryLimit, "cgroup v2 /sys/fs/cgroup/a/memory.max (of 16MiB; raised to the 128MiB floor)", true},
		{"v1 hierarchical parent tiny: the floor", map[string]string{"proc/self/cgroup": "4:memory:/p/c\n",
			"sys/fs/cgroup/memory/p/c/memory.limit_in_bytes": "9223372036854771712\n",
			"sys/fs/cgroup/memory/p/memory.limit_in_bytes":   "8388608\n", "sys/fs/cgroup/memory/p/memory.use_hierarchy": "1\n",
			"proc/meminfo": meminfo8G},
			MinMemoryLimit, "floor", true},
		{"v1 parent with use_hierarchy 0 does not bind: MemTotal", map[string]string{"proc/self/cgroup": "4:memory:/p/c\n",
			"sys/fs/cgroup/memory/p/c/memory.limit_in_bytes": "9223372036854771712\n",
			"sys/fs/cgroup/memory/p/memory.limit_in_bytes":   "8388608\n", "sys/fs/cgroup/memory/p/memory.use_hierarchy": "0\n",
			"proc/meminfo": meminfo8G},
			frac(8*gib, HostMemoryFraction), "/proc/meminfo MemTotal", true},
		{"v1 own limit binds whatever use_hierarchy says", map[string]string{"proc/self/cgroup": "4:memory:/p/c\n",
			"sys/fs/cgroup/memory/p/c/memory.limit_in_bytes": "1073741824\n", "sys/fs/cgroup/memory/p/c/memory.use_hierarchy": "0\n",
			"proc/meminfo": meminfo8G},
			frac(gib, CgroupMemoryFraction), "cgroup v1 /sys/fs/cgroup/memory/p/c/memory.limit_in_bytes", true},
		{"small machine: the floor", map[string]string{"proc/meminfo": "MemTotal:        131072 kB\n"},
			MinMemoryLimit, "/proc/meminfo MemTotal (of 128MiB; raised to the 128MiB floor)", true},
		{"just above the floor: 90% as usual", map[string]string{"proc/self/cgroup": "0::/a\n",
			"sys/fs/cgroup/a/memory.max": "268435456\n", "proc/meminfo": meminfo8G},
			frac(gib/4, CgroupMemoryFraction), "cgroup v2 /sys/fs/cgroup/a/memory.max", true},
		{"nothing readable", map[string]string{"proc/meminfo": "MemFree: 1 kB\n"}, 0, "", false},
		{"meminfo in MB", map[string]string{"proc/meminfo": "MemTotal: 8 MB\n"}, 0, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for n, s := range c.files {
				fsys[n] = &fstest.MapFile{Data: []byte(s)}
			}
			m, ok := chooseMemoryLimit(fsys)
			if ok != c.ok || m.Bytes != c.want || !strings.Contains(m.Source, c.src) {
				t.Fatalf("got %+v ok=%v, want %d from %q ok=%v", m, ok, c.want, c.src, c.ok)
			}
		})
	}
}

// TestTuneGCRespectsEnvironment: GOGC and GOMEMLIMIT in the environment
// win (the documented override); otherwise the chosen limit is set.
func TestTuneGCRespectsEnvironment(t *testing.T) {
	prevGC := debug.SetGCPercent(100)
	prevLim := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(prevGC); debug.SetMemoryLimit(prevLim) })
	choose := func() (MemoryLimit, bool) { return MemoryLimit{Bytes: 3 * gib, Source: "test"}, true }
	env := func(vars ...string) func(string) (string, bool) {
		return func(k string) (string, bool) {
			for _, v := range vars {
				if v == k {
					return "x", true
				}
			}
			return "", false
		}
	}

	debug.SetMemoryLimit(math.MaxInt64)
	g := tuneGC(env(), choose)
	if g.GOGC != "400" || g.MemoryLimit != "3072MiB" || g.Source != "test" || debug.SetMemoryLimit(-1) != 3*gib || debug.SetGCPercent(-1) != GCPercent {
		t.Fatalf("no env: %+v", g)
	}
	debug.SetMemoryLimit(math.MaxInt64)
	debug.SetGCPercent(100)
	g = tuneGC(env("GOGC", "GOMEMLIMIT"), choose)
	if g.GOGC != "env" || g.MemoryLimit != "env" || debug.SetMemoryLimit(-1) != math.MaxInt64 || debug.SetGCPercent(-1) != 100 {
		t.Fatalf("env set: %+v", g)
	}
	g = tuneGC(env("GOGC"), func() (MemoryLimit, bool) { return MemoryLimit{}, false })
	if g.MemoryLimit != "none" || debug.SetMemoryLimit(-1) != math.MaxInt64 {
		t.Fatalf("nothing readable: %+v", g)
	}
}

// FuzzMemoryFiles: the parsers of /proc/self/cgroup, memory.max /
// memory.limit_in_bytes and /proc/meminfo never panic, and what they
// accept is sane (positive limits, absolute cleaned paths).
func FuzzMemoryFiles(f *testing.F) {
	for _, s := range []string{"0::/\n", "4:memory:/docker/abc\n0::/\n", "max\n", "9223372036854771712\n", "18446744073709551615",
		meminfo8G, "MemTotal: 99999999999999999999 kB", "0::/../..\n", "1:memory,cpu:/a/./b\n", "-5", "0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if pc, err := parseProcCgroup(b); err == nil {
			for _, p := range []string{pc.v1Memory, pc.v2} {
				if p != "" && (!strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..")) {
					t.Fatalf("path %q from %q", p, b)
				}
			}
		}
		if n, ok, err := parseCgroupLimit(b); err == nil && ok && n <= 0 {
			t.Fatalf("limit %d from %q", n, b)
		}
		if n, err := parseMemTotal(b); err == nil && n <= 0 {
			t.Fatalf("MemTotal %d from %q", n, b)
		}
		fsys := fstest.MapFS{"proc/self/cgroup": {Data: b}, "proc/meminfo": {Data: b}, "sys/fs/cgroup/memory.max": {Data: b}}
		if m, ok := chooseMemoryLimit(fsys); ok && m.Bytes <= 0 {
			t.Fatalf("limit %+v from %q", m, b)
		}
	})
}

func frac(n int64, f float64) int64 { return int64(float64(n) * f) }
