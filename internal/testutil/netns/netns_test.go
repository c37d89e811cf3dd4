package netns

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHelperProcess is the program the tests run inside namespaces.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv("NETNS_HELPER") {
	case "listen":
		l, err := net.Listen("tcp", os.Getenv("NETNS_ADDR"))
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Println("LISTENING")
		for i := 0; i < 10; i++ {
			c, err := l.Accept()
			if err != nil {
				os.Exit(1)
			}
			fmt.Fprintln(c, "hello from", os.Getenv("NETNS_ADDR"))
			c.Close()
		}
		os.Exit(0)
	case "dial":
		c, err := net.DialTimeout("tcp", os.Getenv("NETNS_ADDR"), 2*time.Second)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(0)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Print(line)
		os.Exit(0)
	}
}

func TestPartitionAndHeal(t *testing.T) {
	nw := New(t)
	a, b := nw.AddNode("a"), nw.AddNode("b")
	addr := a.Addr(7000)
	srv := a.Command(0, os.Args[0], "-test.run=^TestHelperProcess$")
	srv.Env = append(os.Environ(), "NETNS_HELPER=listen", "NETNS_ADDR="+addr)
	out, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); !strings.HasPrefix(line, "LISTENING") {
		t.Fatalf("listener in %s: %q", a.Name, line)
	}
	dial := func(from *Node) string {
		t.Helper()
		c := from.Command(0, os.Args[0], "-test.run=^TestHelperProcess$")
		c.Env = append(os.Environ(), "NETNS_HELPER=dial", "NETNS_ADDR="+addr)
		o, err := c.Output()
		if err != nil {
			t.Fatalf("dialer in %s: %v", from.Name, err)
		}
		return strings.TrimSpace(string(o))
	}
	if got := dial(b); !strings.HasPrefix(got, "hello from") {
		t.Fatalf("b cannot reach a: %s", got)
	}
	a.Partition()
	if got := dial(b); !strings.HasPrefix(got, "ERROR") {
		t.Fatalf("b reached a while a was partitioned: %s", got)
	}
	a.Heal()
	if got := dial(b); !strings.HasPrefix(got, "hello from") {
		t.Fatalf("b cannot reach a after healing: %s", got)
	}
	// A node as another uid.
	if o, err := b.Command(41099, "id", "-u").Output(); err != nil || strings.TrimSpace(string(o)) != "41099" {
		t.Fatalf("command as uid 41099: %q %v", o, err)
	}
}

// TestSweepStale: namespaces a killed test process left behind (its pid no
// longer runs) are removed before a process creates its first network;
// those of a live process stay.
func TestSweepStale(t *testing.T) {
	if why := Skip(); why != "" {
		t.Skip(why)
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("w%s-1hub", strconv.FormatInt(int64(dead.Process.Pid), 36))
	live := fmt.Sprintf("w%s-1hub", strconv.FormatInt(1, 36)) // pid 1 always runs
	for _, ns := range []string{stale, live} {
		if out, err := run("ip", "netns", "add", ns); err != nil {
			t.Fatalf("ip netns add %s: %v %s", ns, err, out)
		}
	}
	t.Cleanup(func() { run("ip", "netns", "del", stale); run("ip", "netns", "del", live) })
	sweepStale()
	out, _ := run("ip", "netns", "list")
	if strings.Contains(out, stale) {
		t.Errorf("the dead process's namespace %s is still there", stale)
	}
	if !strings.Contains(out, live) {
		t.Errorf("the live process's namespace %s was removed", live)
	}
}
