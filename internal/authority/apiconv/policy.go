package apiconv

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
	"github.com/wardproject/ward/internal/authority/policystore"
	"github.com/wardproject/ward/internal/shared/errs"
)

// VersionProto converts a policy version to its wire form; current is
// the store's current version number, withBundle adds the bundle's JSON.
func VersionProto(v policystore.Version, current uint64, withBundle bool) (*wardv1.PolicyVersion, error) {
	out := &wardv1.PolicyVersion{
		Version: v.Number, Created: timestamppb.New(v.Created), Actor: v.Actor, Comment: v.Comment,
		Current: v.Number == current, PolicyCount: uint32(v.PolicyCount), Digest: v.Digest(), RestoredFrom: v.RestoredFrom,
		DenyListSize: uint32(len(v.Bundle.DenyList.SPIFFEIDs) + len(v.Bundle.DenyList.Serials) + len(v.Bundle.DenyList.TaintedKeys)),
	}
	if withBundle {
		b, err := v.BundleJSON()
		if err != nil {
			return nil, err
		}
		out.BundleJson = b
	}
	return out, nil
}

// WatchPolicy serves PolicyDistribution.WatchPolicy from ps: every version
// after r.KnownVersion, with its bundle, as it lands. Both APIs serve it
// (local consumers on the admin socket, agents on the Node API).
func WatchPolicy(ps *policystore.Store, r *wardv1.WatchPolicyRequest, ss wardv1.PolicyDistribution_WatchPolicyServer) error {
	err := ps.Watch(ss.Context(), r.KnownVersion, func(v policystore.Version) error {
		pv, err := VersionProto(v, v.Number, true)
		if err != nil {
			return err
		}
		return ss.Send(pv)
	})
	if ss.Context().Err() != nil {
		return nil
	}
	return errs.ToStatus(err)
}
