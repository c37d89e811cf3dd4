package main

// The fixed-rate latency phase (issue 17, gap 3: the p99 the ward pair adds
// over a direct connection at 1,000 req/s, against what the bare Go TLS
// pair adds). One fixed-rate run per path on a shared 2-core machine cannot
// answer that: other processes' bursts land on one path and not the next.
// So the paths take turns in short slices (-lat-slice requests each, the
// order rotating every cycle) until each path has -lat-samples requests in
// the round; every path's round therefore spans the same stretch of
// machine noise. Each round gives every path's p50/p99/p99.9 and, per
// round, the differences that matter (ward p99 - go-tls p99, ...); the
// table gives the median over -lat-rounds rounds and the spread (min..max).

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	latRounds  = flag.Int("lat-rounds", 0, "fixed-rate latency phase: rounds (0: off, the per-run fixed-rate figures are used)")
	latSamples = flag.Int("lat-samples", 20000, "fixed-rate latency phase: requests per path per round")
	latSlice   = flag.Int("lat-slice", 1000, "fixed-rate latency phase: requests per turn of a path (the paths take turns within a round)")
	latPaths   = flag.String("lat-paths", "direct,go-tls,ward,haproxy", "fixed-rate latency phase: the paths (those set up)")
	latNice    = flag.Int("lat-nice", 0, "fixed-rate latency phase: nice value for every thread of this process and of the paths' processes (negative needs root): the same priority for all paths, above the shared machine's other work")
)

// renice sets the nice value of every thread of pids (nice is per thread
// on Linux; threads started later inherit their creator's). Not a
// real-time policy: SCHED_FIFO was tried and starved the kernel's
// softirq threads (loopback delivery) while Go's idle threads spun.
func renice(pids []int, nice int) error {
	for _, pid := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice); err != nil {
				return fmt.Errorf("nice %d for thread %d of %d: %w", nice, tid, pid, err)
			}
		}
	}
	return nil
}

// latConns are one path's persistent echo connections for the phase and
// its processes (proxies; none for direct).
type latConns struct {
	name string
	ecs  []*echoConn
	cmds []*exec.Cmd
}

// switches is the number of context switches (voluntary: a thread went to
// sleep waiting, e.g. in epoll or on a futex; and involuntary) of every
// thread of cmds' processes so far: a thread wake-up per switch, roughly.
func switches(cmds []*exec.Cmd) int64 {
	var n int64
	for _, c := range cmds {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", c.Process.Pid))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", c.Process.Pid, t.Name()))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
					x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					n += x
				}
			}
		}
	}
	return n
}

// rateSlice sends n requests at *rate req/s in total over ecs (each
// connection on its own evenly spaced schedule, the schedules offset) and
// appends each request's round trip to lat. late counts requests that
// started over 1 ms behind schedule.
func rateSlice(ecs []*echoConn, n int, lat *[]time.Duration, late *atomic.Int64) error {
	k := len(ecs)
	interval := time.Duration(float64(time.Second) * float64(k) / float64(*rate))
	per := make([][]time.Duration, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	start := time.Now()
	for i, ec := range ecs {
		count := n / k
		if i < n%k {
			count++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			offset := interval * time.Duration(i) / time.Duration(k)
			per[i] = make([]time.Duration, 0, count)
			for j := 0; j < count; j++ {
				waitSlot(start.Add(offset+time.Duration(j)*interval), late)
				t0 := time.Now()
				if err := ec.do(); err != nil {
					errs[i] = err
					return
				}
				per[i] = append(per[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	for i := range per {
		*lat = append(*lat, per[i]...)
		if errs[i] != nil {
			return errs[i]
		}
	}
	return nil
}

type pct struct{ p50, p99, p999 time.Duration }

func percentiles(lat []time.Duration) pct {
	s := slices.Clone(lat)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(float64(len(s))*q))] }
	return pct{at(0.50), at(0.99), at(0.999)}
}

// latencyPhase runs the rounds over the paths in ready (name -> address)
// and prints per-round rows, the medians and, for the summary, lines
// starting with "lat " (path rows) and "latadd " (differences).
func latencyPhase(ready map[string]string, procs map[string][]*exec.Cmd) error {
	if *latNice != 0 {
		pids := []int{os.Getpid()}
		for _, cmds := range procs {
			for _, c := range cmds {
				pids = append(pids, c.Process.Pid)
			}
		}
		if err := renice(pids, *latNice); err != nil {
			return err
		}
	}
	var paths []latConns
	for _, name := range strings.Split(*latPaths, ",") {
		addr, ok := ready[name]
		if !ok {
			continue
		}
		lc := latConns{name: name, cmds: procs[name]}
		for range *conns {
			ec, err := dialEcho(addr)
			if err != nil {
				return fmt.Errorf("latency %s: %w", name, err)
			}
			defer ec.c.Close()
			lc.ecs = append(lc.ecs, ec)
		}
		// Warm the connections (handshakes, buffers) outside the figures.
		var warm []time.Duration
		var late atomic.Int64
		if err := rateSlice(lc.ecs, 4*len(lc.ecs), &warm, &late); err != nil {
			return fmt.Errorf("latency %s warm-up: %w", name, err)
		}
		paths = append(paths, lc)
	}
	if len(paths) == 0 {
		return nil
	}
	slice := max(*latSlice, len(paths[0].ecs))
	prio := fmt.Sprintf("nice %d", *latNice)
	fmt.Printf("\nfixed-rate latency: %d req/s over %d conns, %d rounds x %d requests per path, the paths taking turns in slices of %d (order rotating), %s; µs\n",
		*rate, *conns, *latRounds, *latSamples, slice, prio)
	fmt.Printf("%-10s %-10s %9s %9s %9s %9s %12s %10s\n", "round", "path", "p50", "p99", "p99.9", "late", "cpu µs/req", "switch/req")
	per := map[string][]pct{}          // path -> one per round
	slices99 := map[string][]float64{} // path -> p99 of each of its slices (µs), cycle by cycle
	var late atomic.Int64
	for round := 1; round <= *latRounds; round++ {
		lat := make([][]time.Duration, len(paths))
		lateAt := make([]int64, len(paths))
		cpu := make([]time.Duration, len(paths))
		sw := make([]int64, len(paths))
		for cycle := 0; ; cycle++ {
			moved := false
			for j := range paths {
				i := (j + cycle) % len(paths)
				left := *latSamples - len(lat[i])
				if left <= 0 {
					continue
				}
				moved = true
				l0, c0, s0, at := late.Load(), cpuTime(paths[i].cmds), switches(paths[i].cmds), len(lat[i])
				if err := rateSlice(paths[i].ecs, min(slice, left), &lat[i], &late); err != nil {
					return fmt.Errorf("latency %s: %w", paths[i].name, err)
				}
				slices99[paths[i].name] = append(slices99[paths[i].name], us(percentiles(lat[i][at:]).p99))
				lateAt[i] += late.Load() - l0
				cpu[i] += cpuTime(paths[i].cmds) - c0
				sw[i] += switches(paths[i].cmds) - s0
			}
			if !moved {
				break
			}
		}
		for i, p := range paths {
			q := percentiles(lat[i])
			per[p.name] = append(per[p.name], q)
			cpuReq, swReq := "-", "-"
			if len(p.cmds) > 0 {
				cpuReq = fmt.Sprintf("%.1f", us(cpu[i])/float64(len(lat[i])))
				swReq = fmt.Sprintf("%.2f", float64(sw[i])/float64(len(lat[i])))
			}
			fmt.Printf("%-10s %-10s %9.0f %9.0f %9.0f %9d %12s %10s\n", fmt.Sprint(round), p.name, us(q.p50), us(q.p99), us(q.p999), lateAt[i], cpuReq, swReq)
		}
	}
	if l := late.Load(); l > int64(*latRounds**latSamples*len(paths)/100) {
		fmt.Fprintf(os.Stderr, "warning: %d requests started over 1 ms late; the generator did not keep up, latency figures are optimistic\n", l)
	}
	med := func(v []float64) (m, lo, hi float64) {
		v = slices.Clone(v)
		sort.Float64s(v)
		m = v[len(v)/2]
		if len(v)%2 == 0 {
			m = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return m, v[0], v[len(v)-1]
	}
	field := func(name string, f func(pct) time.Duration) []float64 {
		var v []float64
		for _, q := range per[name] {
			v = append(v, us(f(q)))
		}
		return v
	}
	fmt.Printf("\nmedians of %d rounds (min..max over rounds), µs:\n", *latRounds)
	for _, p := range paths {
		m50, _, _ := med(field(p.name, func(q pct) time.Duration { return q.p50 }))
		m99, lo99, hi99 := med(field(p.name, func(q pct) time.Duration { return q.p99 }))
		m999, _, _ := med(field(p.name, func(q pct) time.Duration { return q.p999 }))
		fmt.Printf("lat %-10s p50 %6.0f  p99 %6.0f (%.0f..%.0f)  p99.9 %6.0f\n", p.name, m50, m99, lo99, hi99, m999)
	}
	// Per-round differences of p99 (and p50): a paired comparison, each
	// round's paths having shared the same stretch of noise.
	diff := func(a, b string, f func(pct) time.Duration) []float64 {
		qa, qb := per[a], per[b]
		if len(qa) == 0 || len(qb) == 0 {
			return nil
		}
		v := make([]float64, len(qa))
		for i := range qa {
			v[i] = us(f(qa[i]) - f(qb[i]))
		}
		return v
	}
	p99 := func(q pct) time.Duration { return q.p99 }
	p50 := func(q pct) time.Duration { return q.p50 }
	for _, d := range [][2]string{{"ward", "go-tls"}, {"ward", "ward-base"}, {"ward-base", "go-tls"}, {"haproxy", "go-tls"}, {"ward", "haproxy"}, {"go-tls", "direct"}, {"ward", "direct"}, {"haproxy", "direct"}} {
		v := diff(d[0], d[1], p99)
		if v == nil {
			continue
		}
		m, lo, hi := med(v)
		m50, lo50, hi50 := med(diff(d[0], d[1], p50))
		fmt.Printf("latadd %-20s p99 %+6.0f (%+.0f..%+.0f)  p50 %+5.0f (%+.0f..%+.0f)  per round: %s\n", d[0]+"-"+d[1], m, lo, hi, m50, lo50, hi50, fmtList(v))
	}
	// The same, paired cycle by cycle: within one cycle the paths' slices
	// ran back to back (about a second each), so a burst of the machine's
	// other work lands on one or two of them, not on all; the median of
	// many such paired differences is what a burst moves least. Each
	// slice's p99 is its 10th-slowest request, noisy alone.
	for _, d := range [][2]string{{"ward", "go-tls"}, {"ward", "ward-base"}, {"haproxy", "go-tls"}, {"go-tls", "direct"}, {"ward", "direct"}} {
		a, b := slices99[d[0]], slices99[d[1]]
		if len(a) == 0 || len(a) != len(b) {
			continue
		}
		v := make([]float64, len(a))
		for i := range a {
			v[i] = a[i] - b[i]
		}
		sort.Float64s(v)
		fmt.Printf("latslice %-18s p99 %+6.0f (quartiles %+.0f..%+.0f) over %d paired slices\n", d[0]+"-"+d[1], v[len(v)/2], v[len(v)/4], v[len(v)*3/4], len(v))
	}
	return nil
}

func fmtList(v []float64) string {
	var b strings.Builder
	for i, x := range v {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%+.0f", x)
	}
	return b.String()
}

// waitSlot sleeps until at, a request's slot at the fixed rate; a request
// more than 1 ms past its slot counts in late (the rate was not held).
func waitSlot(at time.Time, late *atomic.Int64) {
	if d := time.Until(at); d > 0 {
		time.Sleep(d)
	} else if -d > time.Millisecond {
		late.Add(1)
	}
}
