// Command fetch is the Workload API client of bench/spire/run.sh: it talks
// to a ward or a SPIRE agent the same way (go-spiffe, one reused client).
//
//	fetch -socket unix:///x.sock -gid 4242 wait 1001  # until the response holds >= 1001 X509-SVIDs
//	fetch -socket unix:///x.sock lat 2000             # FetchX509SVID latency, prints p50 and p99 in µs
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	socket := flag.String("socket", "", "Workload API address, unix:///path")
	gid := flag.Int("gid", -1, "set the process group ID first (root only), so gid selectors match")
	timeout := flag.Duration("timeout", 120*time.Second, "give up after")
	flag.Parse()
	if *gid >= 0 {
		if err := syscall.Setgid(*gid); err != nil {
			fail("setgid: %v", err)
		}
	}
	if flag.NArg() != 2 {
		fail("usage: fetch -socket ADDR (wait N | lat N)")
	}
	n, err := strconv.Atoi(flag.Arg(1))
	if err != nil {
		fail("N: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	path := strings.TrimPrefix(*socket, "unix://")
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if ctx.Err() != nil {
			fail("socket %s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(*socket))
	if err != nil {
		fail("client: %v", err)
	}
	defer c.Close()
	switch flag.Arg(0) {
	case "wait":
		start := time.Now()
		for {
			svids, err := c.FetchX509SVIDs(ctx)
			if err == nil && len(svids) >= n {
				fmt.Printf("svids %d after %.3f s of polling\n", len(svids), time.Since(start).Seconds())
				return
			}
			if ctx.Err() != nil {
				fail("gave up: %d SVIDs, last error %v", len(svids), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	case "lat":
		lat := make([]time.Duration, 0, n)
		for range n {
			t := time.Now()
			if _, err := c.FetchX509SVID(ctx); err != nil {
				fail("fetch: %v", err)
			}
			lat = append(lat, time.Since(t))
		}
		slices.Sort(lat)
		fmt.Printf("p50-us %.0f p99-us %.0f\n", float64(lat[n/2].Microseconds()), float64(lat[n*99/100].Microseconds()))
	default:
		fail("unknown mode %q", flag.Arg(0))
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fetch: "+format+"\n", args...)
	os.Exit(1)
}
