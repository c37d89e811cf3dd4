package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// The AdmissionReview (admission.k8s.io/v1) fields the webhook reads and
// writes, as local structs: see the package comment for why not k8s.io/api.

// Review is an admission.k8s.io/v1 AdmissionReview.
type Review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *Request  `json:"request,omitempty"`
	Response   *Response `json:"response,omitempty"`
}

// Request is the part of an AdmissionRequest the rules need.
type Request struct {
	UID       string           `json:"uid"`
	Kind      GroupVersionKind `json:"kind"`
	Namespace string           `json:"namespace,omitempty"`
	Name      string           `json:"name,omitempty"`
	Operation string           `json:"operation"`
	Object    json.RawMessage  `json:"object,omitempty"`
	// OldObject is the object before an UPDATE.
	OldObject json.RawMessage `json:"oldObject,omitempty"`
}

// GroupVersionKind names the object's type.
type GroupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

// Response is an AdmissionResponse.
type Response struct {
	UID      string   `json:"uid"`
	Allowed  bool     `json:"allowed"`
	Status   *Status  `json:"status,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// Status is the metav1.Status of a denial.
type Status struct {
	Code    int32  `json:"code,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

type namespaceObject struct {
	Metadata objectMeta `json:"metadata"`
}

type podObject struct {
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		ServiceAccountName string `json:"serviceAccountName"`
	} `json:"spec"`
}

type pvcObject struct {
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		StorageClassName *string `json:"storageClassName"`
	} `json:"spec"`
}

// ParseReview decodes an AdmissionReview request (at most MaxBody bytes,
// checked by the caller too).
func ParseReview(body []byte) (*Review, error) {
	if len(body) > MaxBody {
		return nil, fmt.Errorf("admission review of %d bytes: the limit is %d", len(body), MaxBody)
	}
	var r Review
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("admission review: %w", err)
	}
	if dec.More() {
		return nil, errors.New("admission review: data after the JSON object")
	}
	if r.APIVersion != "admission.k8s.io/v1" || r.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("admission review: apiVersion %q kind %q: want admission.k8s.io/v1 AdmissionReview", r.APIVersion, r.Kind)
	}
	if r.Request == nil || r.Request.UID == "" {
		return nil, errors.New("admission review: no request uid")
	}
	return &r, nil
}
