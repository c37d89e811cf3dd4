package k8s

import (
	"bytes"
	"fmt"
	"strings"
)

// maxCgroupFile bounds what is read of /proc/<pid>/cgroup.
const maxCgroupFile = 64 << 10

// ParseCgroup finds the pod UID and container ID in the contents of
// /proc/<pid>/cgroup: the kubelet puts every container of a pod below a
// cgroup named for the pod's UID, with the container's own cgroup (named
// for its ID) beneath. It reads cgroup v2 lines ("0::/path") and v1 lines
// ("N:controllers:/path"), and the directory names of both cgroup drivers:
//
//	cgroupfs: /kubepods/burstable/pod<uid>/<container id>
//	systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<container id>.scope
//
// (also docker-, crio- and other runtime prefixes, and paths seen through
// a cgroup namespace, which may start with /..). The UID is a UUID (a
// static pod's is 32 hex digits) and comes back with dashes; the container
// ID is 64 lowercase hex digits, "" when the process sits in the pod's
// cgroup but in no container's. A process in no pod gives "", "", nil.
// Lines that disagree on the pod or the container are an error: no
// identity is better than a guessed one.
func ParseCgroup(data []byte) (podUID, containerID string, err error) {
	if len(data) > maxCgroupFile {
		return "", "", fmt.Errorf("cgroup file longer than %d bytes", maxCgroupFile)
	}
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		parts := bytes.SplitN(line, []byte(":"), 3)
		if len(parts) != 3 {
			return "", "", fmt.Errorf("cgroup line %.80q is not hierarchy:controllers:path", line)
		}
		p, c, err := podInPath(string(parts[2]))
		if err != nil {
			return "", "", err
		}
		if p == "" {
			continue
		}
		if podUID != "" && p != podUID {
			return "", "", fmt.Errorf("cgroup lines name two pods, %s and %s", podUID, p)
		}
		podUID = p
		if c != "" {
			if containerID != "" && c != containerID {
				return "", "", fmt.Errorf("cgroup lines name two containers of pod %s, %s and %s", p, containerID, c)
			}
			containerID = c
		}
	}
	return podUID, containerID, nil
}

// podInPath returns the pod UID and container ID in one cgroup path: the
// outermost segment that names a pod (the kubelet made it), and the
// segment right below it (the runtime's). A second segment naming a pod
// further down is an error: below its container's cgroup everything is
// the workload's to name (a container with a writable, delegated cgroup
// subtree can make ".../pod<A>/<its id>/pod<B>/<any id>" and move itself
// there), so it must never be read as the pod.
func podInPath(path string) (pod, container string, err error) {
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		uid, ok := podSegment(seg)
		if !ok {
			continue
		}
		for _, below := range segs[i+1:] {
			if other, ok := podSegment(below); ok {
				return "", "", fmt.Errorf("cgroup path names pod %s below pod %s: a cgroup made inside a pod's own subtree is not a pod", other, uid)
			}
		}
		if i+1 < len(segs) {
			container = containerSegment(segs[i+1])
		}
		return uid, container, nil
	}
	return "", "", nil
}

// podSegment parses "pod<uid>" (cgroupfs) or "<prefix>-pod<uid>.slice"
// (systemd, the UUID's dashes written as underscores).
func podSegment(seg string) (string, bool) {
	s, slice := strings.CutSuffix(seg, ".slice")
	i := strings.LastIndex(s, "pod")
	if i < 0 || i > 0 && s[i-1] != '-' || i > 0 && !slice {
		return "", false
	}
	uid := s[i+3:]
	if slice {
		uid = strings.ReplaceAll(uid, "_", "-")
	}
	if !validPodUID(uid) {
		return "", false
	}
	return uid, true
}

// validPodUID: a UUID (lowercase, dashed) or 32 hex digits (static pods).
func validPodUID(u string) bool {
	switch len(u) {
	case 32:
		return lowerHex(u)
	case 36:
		for i := 0; i < 36; i++ {
			switch i {
			case 8, 13, 18, 23:
				if u[i] != '-' {
					return false
				}
			default:
				if !lowerHex(u[i : i+1]) {
					return false
				}
			}
		}
		return true
	}
	return false
}

// containerSegment parses "<id>" (cgroupfs) or "<runtime>-<id>.scope"
// (systemd: cri-containerd-, docker-, crio-, ...); a runtime's helper
// (crio-conmon-<id>.scope) is not the container.
func containerSegment(seg string) string {
	s, scope := strings.CutSuffix(seg, ".scope")
	if scope {
		if strings.Contains(s, "conmon") {
			return ""
		}
		i := strings.LastIndexByte(s, '-')
		if i < 0 {
			return ""
		}
		s = s[i+1:]
	}
	if len(s) != 64 || !lowerHex(s) {
		return ""
	}
	return s
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return s != ""
}
