package cli

import (
	"net"
	"strings"
)

// unixPaths returns the socket paths of the unix:// addresses in a
// (comma-separated) authority address; TCP addresses are skipped.
func unixPaths(addr string) []string {
	var out []string
	for _, a := range strings.Split(addr, ",") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(a), "unix://"); ok {
			out = append(out, p)
		}
	}
	return out
}

// forConn returns the check of the one admin socket conn is connected to
// (a failover client dials several). A connection to none of them is
// judged as the first path, whose check then refuses what it cannot prove.
func (a *adminPeer) forConn(conn net.Conn) *adminPeer {
	path := a.path
	if ra := conn.RemoteAddr(); ra != nil {
		for _, p := range a.paths {
			if ra.String() == p {
				path = p
			}
		}
	}
	return &adminPeer{path: path, self: a.self, extraUID: a.extraUID, parent: a}
}
