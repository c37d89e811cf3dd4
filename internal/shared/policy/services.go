package policy

import (
	"sort"

	"github.com/wardproject/ward/internal/shared/catalog"
)

// withServices returns a copy of s with the services catalog m (by trust
// domain), each section checked (catalog.Check: a section names only
// identities of its own trust domain).
func (s *Set) withServices(m map[string][]catalog.Service) (*Set, error) {
	if len(m) == 0 {
		return s, nil
	}
	var probs []Problem
	out := make(map[string][]catalog.Service, len(m))
	for td, svcs := range m {
		got, err := catalog.Check(td, svcs)
		if err != nil {
			probs = append(probs, Problem{File: "(services of " + td + ")", Kind: "services", Message: err.Error()})
			continue
		}
		out[td] = got
	}
	if len(probs) > 0 {
		sort.Slice(probs, func(i, j int) bool { return probs[i].Message < probs[j].Message })
		return nil, &CompileError{Problems: probs}
	}
	c := *s
	c.services = out
	return &c, nil
}

// Services returns the exported services of trust domain td (nil if none).
func (s *Set) Services(td string) []catalog.Service { return s.services[td] }

// Service returns the service ref.Name exported by ref.TrustDomain.
func (s *Set) Service(ref catalog.Ref) (catalog.Service, bool) {
	return catalog.Find(s.services[ref.TrustDomain], ref.Name)
}

// AllServices returns the whole catalog by trust domain.
func (s *Set) AllServices() map[string][]catalog.Service { return s.services }
