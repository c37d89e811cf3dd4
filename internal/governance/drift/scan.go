package drift

import (
	"github.com/wardproject/ward/internal/governance/scan"
	"github.com/wardproject/ward/internal/shared/posture"
	"github.com/wardproject/ward/internal/shared/telemetry"
)

// FromScan is what drift needs of a scan result: the versions and groups
// offered and whether a client certificate is required.
func FromScan(r scan.Result) posture.Scan {
	out := posture.Scan{Target: r.Target, Error: r.Error, ClientCertRequired: r.ClientAuth.Required}
	seen := map[string]bool{}
	for _, p := range r.Protocols {
		if !p.Offered {
			continue
		}
		out.Versions = append(out.Versions, telemetry.VersionName(uint16(p.Version)))
		for _, g := range p.Groups {
			name, ok := posture.CanonicalGroup(g.Name)
			if !ok {
				name = g.Name
			}
			if !seen[name] {
				seen[name] = true
				out.Groups = append(out.Groups, name)
			}
		}
	}
	return out
}

// Targets are the listeners the nodes report that a scan can reach from
// outside: inbound proxy listeners and gateways on TCP addresses (not unix
// sockets, not wildcard ones), with the node, listener and service they
// belong to.
func Targets(st posture.State) []posture.Scan {
	var out []posture.Scan
	seen := map[string]bool{}
	for _, n := range st.Nodes {
		for _, p := range n.Processes {
			for _, l := range p.Listeners {
				if l.Direction != "inbound" && l.Direction != "gateway" {
					continue
				}
				if !scannable(l.Address) || seen[l.Address] {
					continue
				}
				seen[l.Address] = true
				out = append(out, posture.Scan{Target: l.Address, Node: n.Node, Listener: l.Name, Service: l.Service})
			}
		}
	}
	return out
}

func scannable(addr string) bool {
	if addr == "" || len(addr) > 7 && addr[:7] == "unix://" {
		return false
	}
	for _, wild := range []string{"0.0.0.0:", "[::]:", ":"} {
		if len(addr) >= len(wild) && addr[:len(wild)] == wild {
			return false
		}
	}
	return true
}
