package adminapi

import (
	"context"
	"net"
	"sort"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/apiconv"
	"github.com/wardproject/ward/internal/authority/federation"
	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/errs"
)

// --- Catalog (exported services) ---

type catalogService struct {
	wardv1.UnimplementedCatalogServer
	fed *federationService
}

func (c *catalogService) ExportService(ctx context.Context, r *wardv1.ExportServiceRequest) (*wardv1.CatalogService, error) {
	m, err := c.fed.manager()
	if err != nil {
		return nil, err
	}
	defGW, defHost := m.ServiceDefaults()
	s := catalog.Service{Name: r.Name, SPIFFEID: r.SpiffeId, Gateway: r.Gateway, Forward: r.Forward}
	if s.Gateway == "" {
		s.Gateway = defGW
	}
	if s.Gateway == "" {
		return nil, status.Error(codes.InvalidArgument, "no gateway: give --gateway host:port (where other clusters reach this cluster's gateway) or set services.gateway in the server config")
	}
	switch {
	case r.Port != 0 && r.Forward != "":
		return nil, status.Error(codes.InvalidArgument, "give the port of the inbound proxy listener or its forward address, not both")
	case r.Port < 0 || r.Port > 65535:
		return nil, status.Errorf(codes.InvalidArgument, "port %d is out of range 1..65535", r.Port)
	case r.Port != 0:
		s.Forward = net.JoinHostPort(defHost, strconv.Itoa(int(r.Port)))
	case r.Forward == "":
		return nil, status.Error(codes.InvalidArgument, "give --port (the service's inbound proxy listener) or --forward")
	}
	if err := m.ExportService(ctx, s, federation.SourceAPI); err != nil {
		return nil, errs.ToStatus(err)
	}
	_, seq := m.LocalServices()
	return &wardv1.CatalogService{Name: s.Name, TrustDomain: m.TrustDomain().Name(), SpiffeId: s.SPIFFEID, Gateway: s.Gateway,
		Forward: s.Forward, Local: true, Source: federation.SourceAPI, Sequence: seq, Health: "exported"}, nil
}

func (c *catalogService) UnexportService(ctx context.Context, r *wardv1.UnexportServiceRequest) (*wardv1.UnexportServiceResponse, error) {
	m, err := c.fed.manager()
	if err != nil {
		return nil, err
	}
	if err := m.UnexportService(ctx, r.Name, false); err != nil {
		return nil, errs.ToStatus(err)
	}
	return &wardv1.UnexportServiceResponse{}, nil
}

func (c *catalogService) ListServices(ctx context.Context, _ *wardv1.ListServicesRequest) (*wardv1.ListServicesResponse, error) {
	m, err := c.fed.manager()
	if err != nil {
		return nil, err
	}
	out := &wardv1.ListServicesResponse{}
	local, seq := m.LocalServices()
	for _, s := range local {
		out.Services = append(out.Services, &wardv1.CatalogService{Name: s.Name, TrustDomain: m.TrustDomain().Name(), SpiffeId: s.SPIFFEID,
			Gateway: s.Gateway, Forward: s.Forward, Local: true, Source: s.Source, Sequence: seq, Health: "exported"})
	}
	for _, st := range m.List() {
		cs := m.RemoteCatalog(st.TrustDomain)
		health := "ok"
		if cs.LastError != "" {
			health = "stale: " + cs.LastError
		}
		for _, s := range cs.Services {
			out.Services = append(out.Services, &wardv1.CatalogService{Name: s.Name, TrustDomain: st.TrustDomain.Name(), SpiffeId: s.SPIFFEID,
				Gateway: s.Gateway, Sequence: cs.Sequence, Received: apiconv.Timestamp(cs.ReceivedAt), Health: health})
		}
	}
	sort.SliceStable(out.Services, func(i, j int) bool {
		a, b := out.Services[i], out.Services[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Local != b.Local {
			return a.Local
		}
		return a.TrustDomain < b.TrustDomain
	})
	return out, nil
}
