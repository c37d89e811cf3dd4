// Package telemetry is the small summary proxies, gateways and agents
// report to their authority so coverage is measured, not assumed
// (docs/governance.md): listeners, TLS versions and groups negotiated,
// connections with and without mTLS, denials, SVID expiry and FIPS mode.
// A proxy or gateway sends its Report to the local agent (its policy
// socket); the agent adds its own and sends one NodeReport to the
// authority over the Node API, authenticated by its agent SVID. Reports
// are JSON, decoded strictly and bounded here (both hops decode with the
// same code).
package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Bounds of what a reporter may send.
const (
	MaxReportBytes     = 32 << 10  // one process's Report
	MaxNodeReportBytes = 256 << 10 // one node's NodeReport
	MaxProcesses       = 64        // processes per node
	MaxListeners       = 64        // listeners per process
	MaxSVIDs           = 64        // SVIDs per process
	MaxCounters        = 16        // distinct TLS versions or groups per process
	MaxString          = 512       // any string
)

// Kinds of reporting process.
const (
	KindAgent   = "agent"
	KindProxy   = "proxy"
	KindGateway = "gateway"
)

// Report is one process's summary. Counters are totals since the process
// started.
type Report struct {
	Kind string `json:"kind"`           // KindAgent, KindProxy, KindGateway
	Name string `json:"name,omitempty"` // e.g. the proxy's SPIFFE ID or config name
	// FIPS is the process's FIPS 140-3 mode (crypto/fips140.Enabled).
	FIPS      bool       `json:"fips"`
	Listeners []Listener `json:"listeners,omitempty"`
	// TLSVersions counts handshakes by negotiated version ("1.2", "1.3").
	TLSVersions map[string]uint64 `json:"tls_versions,omitempty"`
	// Groups counts handshakes by negotiated key-exchange group
	// (crypto/tls names, e.g. X25519MLKEM768).
	Groups map[string]uint64 `json:"groups,omitempty"`
	// MTLS counts connections authenticated by a client certificate, Plain
	// those that were not (a gateway's pass-through, a failed handshake).
	MTLS    uint64 `json:"mtls_connections"`
	Plain   uint64 `json:"plain_connections"`
	Denials uint64 `json:"denials"`
	SVIDs   []SVID `json:"svids,omitempty"`
	// Source is who sent the report, as the agent attested the caller on
	// its local socket (pid, uid and the SPIFFE IDs of its registration
	// entries): set by the agent, whatever the process sent.
	Source string `json:"source,omitempty"`
}

// Listener is one listening socket of a process.
type Listener struct {
	Name      string `json:"name"`
	Address   string `json:"address"`
	Direction string `json:"direction"` // inbound, outbound, gateway
	// Service is the inbound service the listener protects.
	Service string `json:"service,omitempty"`
	// SPIFFEID is the identity the listener presents.
	SPIFFEID string `json:"spiffe_id,omitempty"`
	// MTLS: the listener requires a client certificate.
	MTLS bool `json:"mtls"`
	// MinTLS is the configured floor ("1.2", "1.3"; "" when the listener
	// does not terminate TLS).
	MinTLS string `json:"min_tls,omitempty"`
}

// SVID is one X509-SVID a process holds.
type SVID struct {
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// NodeReport is what an agent sends for its node. Node is filled in by the
// authority from the caller's agent SVID; Received by the authority too.
type NodeReport struct {
	Node      string    `json:"node,omitempty"`
	Received  time.Time `json:"received,omitzero"`
	Agent     Report    `json:"agent"`
	Processes []Report  `json:"processes,omitempty"`
}

// DecodeReport reads one process's report strictly and checks its bounds.
func DecodeReport(b []byte) (Report, error) {
	var r Report
	if len(b) > MaxReportBytes {
		return r, fmt.Errorf("telemetry report is %d bytes: at most %d", len(b), MaxReportBytes)
	}
	if err := decodeStrict(b, &r); err != nil {
		return Report{}, err
	}
	return r, r.Validate()
}

// DecodeNodeReport reads a node's report strictly and checks its bounds.
func DecodeNodeReport(b []byte) (NodeReport, error) {
	var r NodeReport
	if len(b) > MaxNodeReportBytes {
		return r, fmt.Errorf("node telemetry report is %d bytes: at most %d", len(b), MaxNodeReportBytes)
	}
	if err := decodeStrict(b, &r); err != nil {
		return NodeReport{}, err
	}
	return r, r.Validate()
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("telemetry report: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("telemetry report: trailing data after the JSON object")
	}
	return nil
}

// Validate checks a node report's bounds and values.
func (n *NodeReport) Validate() error {
	if len(n.Node) > MaxString {
		return errors.New("telemetry: node name too long")
	}
	if n.Agent.Kind != KindAgent {
		return fmt.Errorf("telemetry: the node's own report has kind %q: want %q", n.Agent.Kind, KindAgent)
	}
	if err := n.Agent.Validate(); err != nil {
		return err
	}
	if len(n.Processes) > MaxProcesses {
		return fmt.Errorf("telemetry: %d processes: at most %d per node", len(n.Processes), MaxProcesses)
	}
	for i := range n.Processes {
		if n.Processes[i].Kind == KindAgent {
			return fmt.Errorf("telemetry: process %d has kind agent: only the node's own report is", i)
		}
		if err := n.Processes[i].Validate(); err != nil {
			return fmt.Errorf("process %d: %w", i, err)
		}
	}
	return nil
}

// Validate checks a report's bounds and values.
func (r *Report) Validate() error {
	if !slices.Contains([]string{KindAgent, KindProxy, KindGateway}, r.Kind) {
		return fmt.Errorf("telemetry: kind %q: want agent, proxy or gateway", r.Kind)
	}
	if len(r.Name) > MaxString {
		return errors.New("telemetry: name too long")
	}
	if len(r.Source) > 4*MaxString {
		return errors.New("telemetry: source too long")
	}
	if len(r.Listeners) > MaxListeners {
		return fmt.Errorf("telemetry: %d listeners: at most %d", len(r.Listeners), MaxListeners)
	}
	for _, l := range r.Listeners {
		for _, s := range []string{l.Name, l.Address, l.Service, l.SPIFFEID, l.MinTLS} {
			if len(s) > MaxString {
				return errors.New("telemetry: a listener field is too long")
			}
		}
		if !slices.Contains([]string{"inbound", "outbound", "gateway"}, l.Direction) {
			return fmt.Errorf("telemetry: listener %q direction %q: want inbound, outbound or gateway", l.Name, l.Direction)
		}
	}
	for _, m := range []map[string]uint64{r.TLSVersions, r.Groups} {
		if len(m) > MaxCounters {
			return fmt.Errorf("telemetry: %d counters: at most %d", len(m), MaxCounters)
		}
		for k := range m {
			if k == "" || len(k) > 64 {
				return errors.New("telemetry: a counter name is empty or too long")
			}
		}
	}
	if len(r.SVIDs) > MaxSVIDs {
		return fmt.Errorf("telemetry: %d SVIDs: at most %d", len(r.SVIDs), MaxSVIDs)
	}
	for _, s := range r.SVIDs {
		if len(s.SPIFFEID) > MaxString {
			return errors.New("telemetry: an SVID's SPIFFE ID is too long")
		}
	}
	return nil
}

// VersionName is the telemetry name of a TLS version number (tls.VersionTLS13 → "1.3").
func VersionName(v uint16) string {
	switch v {
	case 0x0300:
		return "ssl3"
	case 0x0301:
		return "1.0"
	case 0x0302:
		return "1.1"
	case 0x0303:
		return "1.2"
	case 0x0304:
		return "1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}
