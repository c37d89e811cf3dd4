package config

import (
	"fmt"
	"net"
	"strconv"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// Services configures the exported services catalog (docs/gateway.md).
type Services struct {
	// Gateway is the host:port of this cluster's gateway as other clusters
	// reach it: the default gateway of every exported service (`ward
	// service export` without --gateway).
	Gateway string `yaml:"gateway"`
	// ForwardHost is the host of the inbound proxy listeners the gateway
	// forwards to, when an export gives only a port (default 127.0.0.1).
	ForwardHost string `yaml:"forward_host"`
	// Export declares exported services (changed only here; the server
	// makes the catalog match at unseal).
	Export []ExportedService `yaml:"export"`
}

// ExportedService is one service declared in the config.
type ExportedService struct {
	Name string `yaml:"name"`
	// Port of the service's inbound proxy listener on ForwardHost.
	Port int `yaml:"port"`
	// Forward overrides ForwardHost:Port (host:port or unix:///path).
	Forward string `yaml:"forward"`
	// SPIFFEID is the identity its inbound proxy presents.
	SPIFFEID string `yaml:"spiffe_id"`
	// Gateway overrides services.gateway.
	Gateway string `yaml:"gateway"`
}

// Service returns the catalog form of e in trust domain td.
func (s Services) Service(e ExportedService) catalog.Service {
	out := catalog.Service{Name: e.Name, SPIFFEID: e.SPIFFEID, Gateway: e.Gateway, Forward: e.Forward}
	if out.Gateway == "" {
		out.Gateway = s.Gateway
	}
	if out.Forward == "" && e.Port != 0 {
		out.Forward = net.JoinHostPort(s.ForwardHostOrDefault(), strconv.Itoa(e.Port))
	}
	return out
}

// ForwardHostOrDefault is ForwardHost, default 127.0.0.1.
func (s Services) ForwardHostOrDefault() string {
	if s.ForwardHost == "" {
		return "127.0.0.1"
	}
	return s.ForwardHost
}

func (s *Services) validate(td string) error {
	if s.Gateway != "" {
		if err := catalog.CheckHostPort(s.Gateway); err != nil {
			return fmt.Errorf("services.gateway: %v (the address other clusters reach this cluster's gateway at)", err)
		}
	}
	var svcs []catalog.Service
	for i, e := range s.Export {
		where := fmt.Sprintf("services.export[%d] (%s)", i, e.Name)
		if e.Port < 0 || e.Port > 65535 || (e.Port == 0) == (e.Forward == "") {
			return fmt.Errorf("%s: give port (1..65535, of the inbound proxy listener on %s) or forward", where, s.ForwardHostOrDefault())
		}
		if e.Gateway == "" && s.Gateway == "" {
			return fmt.Errorf("%s: no gateway: set services.gateway or the service's gateway (host:port other clusters reach)", where)
		}
		svc := s.Service(e)
		if err := catalog.CheckOne(td, svc); err != nil {
			return fmt.Errorf("%s: %v", where, err)
		}
		svcs = append(svcs, svc)
	}
	if _, err := catalog.Check(td, svcs); err != nil {
		return fmt.Errorf("services.export: %v", err)
	}
	return nil
}
