package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/local"

	"github.com/wardproject/ward/internal/shared/catalog"
	"github.com/wardproject/ward/internal/shared/policy"
	"github.com/wardproject/ward/internal/shared/policystream"
	"github.com/wardproject/ward/internal/shared/reconnect"
	"github.com/wardproject/ward/internal/shared/sniname"
)

// routeTable is the routes in force, replaced as a whole.
type routeTable struct {
	bySNI map[string]*Route
	list  []*Route
}

func (g *Gateway) table() *routeTable {
	if t := g.routes.Load(); t != nil {
		return t
	}
	return &routeTable{}
}

// setRoutes puts routes in force (they were validated).
func (g *Gateway) setRoutes(routes []Route) {
	t := &routeTable{bySNI: map[string]*Route{}}
	for i := range routes {
		r := &routes[i]
		t.bySNI[r.sni] = r
		t.list = append(t.list, r)
	}
	g.routes.Store(t)
	g.m.setRoutes(t.list)
}

// catalogSource follows the node agent's policy socket for the catalog.
type catalogSource struct {
	conn     *grpc.ClientConn
	src      *policystream.Source
	received atomic.Bool
	version  atomic.Uint64
}

func newCatalogSource(socket string, log *slog.Logger) (*catalogSource, error) {
	path := strings.TrimPrefix(socket, "unix://")
	// Reconnects at most reconnect.MaxDelay apart once the agent is back.
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(local.NewCredentials()), reconnect.DialOption(0))
	if err != nil {
		return nil, fmt.Errorf("catalog_socket %s: %w", socket, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &catalogSource{conn: conn, src: policystream.NewSource(conn, log.With("component", "catalog"))}, nil
}

func lastErr(c *catalogSource) string {
	if st := c.src.Status(); !st.Connected && st.LastError != "" {
		return ": " + st.LastError
	}
	return ""
}

// followCatalog replaces the routes with this trust domain's exported
// services at every policy version, until ctx ends. Only services the
// catalog names are routable: an unexported service leaves the routes at
// the next version (open connections stay).
func (g *Gateway) followCatalog(ctx context.Context) {
	defer g.catalog.conn.Close()
	_ = g.catalog.src.Run(ctx, func(set *policy.Set) {
		if v := set.Version(); v < g.catalog.version.Load() {
			return
		}
		g.catalog.version.Store(set.Version())
		routes, skipped := catalogRoutes(set.Services(g.cfg.TrustDomain), g.cfg.TrustDomain, g.cfg.CatalogProxyProtocol)
		for _, s := range skipped {
			g.log.Warn("exported service not routed", "service", s)
		}
		g.setRoutes(routes)
		g.catalog.received.Store(true)
		var names []string
		for _, r := range routes {
			names = append(names, r.sni+" -> "+r.Forward)
		}
		g.log.Info("routes from the services catalog", "policy_version", set.Version(), "routes", names)
	})
}

// catalogRoutes turns td's exported services into routes; services
// without a usable forward address are skipped (and named).
func catalogRoutes(svcs []catalog.Service, td, pp string) (routes []Route, skipped []string) {
	for _, s := range svcs {
		sni, err := sniname.For(s.Name, td)
		if err != nil || s.Forward == "" || checkAddr(s.Forward) != nil {
			skipped = append(skipped, fmt.Sprintf("%s (forward %q)", s.Name, s.Forward))
			continue
		}
		routes = append(routes, Route{Service: s.Name, Forward: s.Forward, ProxyProtocol: pp, sni: sni})
	}
	sort.Slice(routes, func(i, j int) bool { return routes[i].Service < routes[j].Service })
	return routes, skipped
}
