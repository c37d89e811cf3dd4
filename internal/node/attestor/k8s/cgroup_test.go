package k8s

import (
	"strings"
	"testing"
)

const (
	uid  = "0b6a4f8e-1111-4d2c-9a3e-5c1f7d2e8a90"
	uidU = "0b6a4f8e_1111_4d2c_9a3e_5c1f7d2e8a90"
	cid  = "3f1e2d4c5b6a79880f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
	cid2 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	// A static pod's UID is a hash, not a UUID.
	staticUID = "6b4a0f3c2d1e0f9a8b7c6d5e4f3a2b1c"
)

func TestParseCgroup(t *testing.T) {
	cases := []struct {
		name, file string
		pod, cont  string
		err        string
	}{
		{"v2 systemd containerd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n", uid, cid, ""},
		{"v2 systemd guaranteed", "0::/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n", uid, cid, ""},
		{"v2 systemd crio", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + cid + ".scope\n", uid, cid, ""},
		{"v2 systemd crio conmon", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope\n", uid, "", ""},
		{"v2 systemd docker", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope\n", uid, cid, ""},
		{"v2 cgroupfs", "0::/kubepods/besteffort/pod" + uid + "/" + cid + "\n", uid, cid, ""},
		{"v2 cgroupfs guaranteed", "0::/kubepods/pod" + uid + "/" + cid + "\n", uid, cid, ""},
		{"v2 through a cgroup namespace", "0::/../../kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n", uid, cid, ""},
		{"v2 kind (nested)", "0::/system.slice/docker-" + cid2 + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n", uid, cid, ""},
		{"v2 static pod", "0::/kubepods/burstable/pod" + staticUID + "/" + cid + "\n", staticUID, cid, ""},
		{"v2 pod cgroup only", "0::/kubepods/burstable/pod" + uid + "\n", uid, "", ""},
		{"v1 cgroupfs", "12:memory:/kubepods/burstable/pod" + uid + "/" + cid + "\n11:cpu,cpuacct:/kubepods/burstable/pod" + uid + "/" + cid + "\n1:name=systemd:/kubepods/burstable/pod" + uid + "/" + cid + "\n", uid, cid, ""},
		{"v1 systemd", "10:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope\n1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope\n", uid, cid, ""},
		{"hybrid, v2 in the pod", "4:memory:/process_api/9e0e\n1:cpu:/\n0::/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n", uid, cid, ""},
		{"no pod (host process)", "0::/system.slice/sshd.service\n", "", "", ""},
		{"no pod (v1 host)", "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/9e0e7108\n0::/\n", "", "", ""},
		{"empty", "", "", "", ""},
		{"no trailing newline", "0::/kubepods/pod" + uid + "/" + cid, uid, cid, ""},
		{"two pods", "1:cpu:/kubepods/pod" + uid + "/" + cid + "\n0::/kubepods/pod7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d/" + cid + "\n", "", "", "two pods"},
		{"two containers", "1:cpu:/kubepods/pod" + uid + "/" + cid + "\n0::/kubepods/pod" + uid + "/" + cid2 + "\n", "", "", "two containers"},
		{"malformed line", "garbage\n", "", "", "hierarchy:controllers:path"},
		// The spoof: a container that can write its own cgroup subtree
		// makes a child named like another pod on the node (and a
		// container of it) and moves itself in. The outermost pod segment
		// is the kubelet's; a pod named below it is refused, never taken.
		{"pod cgroup made inside a container (systemd)", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope/kubepods-pod7e6d5c4b_3333_4a1b_8c2d_3e4f5a6b7c8d.slice/cri-containerd-" + cid2 + ".scope\n", "", "", "below pod " + uid},
		{"pod cgroup made inside a container (cgroupfs)", "0::/kubepods/besteffort/pod" + uid + "/" + cid + "/pod7e6d5c4b-3333-4a1b-8c2d-3e4f5a6b7c8d/" + cid2 + "\n", "", "", "below pod " + uid},
		{"upper-case uid is no pod", "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid + "\n", "", "", ""},
		{"short uid is no pod", "0::/kubepods/pod0b6a4f8e-1111/" + cid + "\n", "", "", ""},
		{"underscores outside a slice are no pod", "0::/kubepods/pod" + uidU + "/" + cid + "\n", "", "", ""},
		{"prefixed dir outside a slice is no pod", "0::/kubepods/xpod" + uid + "/" + cid + "\n", "", "", ""},
		{"mypod slice is no pod", "0::/kubepods.slice/kubepods-mypod" + uidU + ".slice/" + cid + "\n", "", "", ""},
		{"short container id", "0::/kubepods/pod" + uid + "/abc123\n", uid, "", ""},
		{"colon in the path", "0::/kubepods/pod" + uid + "/" + cid + ":x\n", uid, "", ""},
		{"too long", strings.Repeat("0::/x\n", maxCgroupFile/6+1), "", "", "longer than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, c, err := ParseCgroup([]byte(tc.file))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || p != tc.pod || c != tc.cont {
				t.Fatalf("got pod %q container %q err %v; want %q %q", p, c, err, tc.pod, tc.cont)
			}
		})
	}
}

// FuzzParseCgroup: never panics; whatever it returns is well-formed (a
// dashed lowercase UUID or 32 hex digits; 64 hex digits), and a container
// never comes without a pod.
func FuzzParseCgroup(f *testing.F) {
	f.Add([]byte("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n"))
	f.Add([]byte("12:memory:/kubepods/burstable/pod" + uid + "/" + cid + "\n0::/\n"))
	f.Add([]byte("0::/../pod" + staticUID + "/" + cid))
	f.Add([]byte("1:cpu:/kubepods/pod" + uid + "/" + cid + "\n0::/kubepods/pod" + uid + "/" + cid2 + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, c, err := ParseCgroup(data)
		if err != nil {
			if p != "" || c != "" {
				t.Fatalf("error %v with results %q %q", err, p, c)
			}
			return
		}
		if p != "" && !validPodUID(p) || strings.Contains(p, "_") {
			t.Fatalf("pod UID %q", p)
		}
		if c != "" && (len(c) != 64 || !lowerHex(c) || p == "") {
			t.Fatalf("container %q (pod %q)", c, p)
		}
	})
}
