package webhook

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Violation is one broken rule: which, and how to comply.
type Violation struct {
	Rule    string
	Message string
}

func (v Violation) String() string { return v.Message }

// Rules decides admission requests from a Config.
type Rules struct {
	cfg *Config
}

// NewRules returns the rules of cfg.
func NewRules(cfg *Config) *Rules { return &Rules{cfg: cfg} }

// Namespaces checks a Namespace (the webhook's /validate path): it must
// carry the classification label with a known classification.
func (r *Rules) Namespaces(req *Request) ([]Violation, error) {
	if req.Kind.Kind != "Namespace" || req.Operation == "DELETE" || req.Operation == "CONNECT" {
		return nil, nil
	}
	var ns namespaceObject
	if err := json.Unmarshal(req.Object, &ns); err != nil {
		return nil, fmt.Errorf("namespace object: %w", err)
	}
	name := ns.Metadata.Name
	if name == "" {
		name = req.Name
	}
	if slices.Contains(r.cfg.ExemptNamespaces, name) {
		return nil, nil
	}
	label := r.cfg.ClassificationLabel
	known := strings.Join(r.cfg.classificationNames(), ", ")
	v, ok := ns.Metadata.Labels[label]
	if !ok {
		return []Violation{{RuleClassified, fmt.Sprintf(
			"rule %s: namespace %q has no %s label. To comply: label it with its data classification, one of %s (kubectl label namespace %s %s=<classification>)",
			RuleClassified, name, label, known, name, label)}}, nil
	}
	if _, ok := r.cfg.Classifications[v]; !ok {
		return []Violation{{RuleClassified, fmt.Sprintf(
			"rule %s: namespace %q: %s=%q is not a classification. To comply: use one of %s",
			RuleClassified, name, label, v, known)}}, nil
	}
	// A relabel would move a namespace's pods and claims out of the rules
	// of its classification (restricted to public, say): the classification
	// of a namespace is set when it is created.
	if req.Operation == "UPDATE" && len(req.OldObject) > 0 {
		var old namespaceObject
		if err := json.Unmarshal(req.OldObject, &old); err != nil {
			return nil, fmt.Errorf("namespace oldObject: %w", err)
		}
		if was, had := old.Metadata.Labels[label]; had && was != v {
			return []Violation{{RuleClassified, fmt.Sprintf(
				"rule %s: namespace %q: %s may not change from %q to %q (it would move the namespace's workloads and volumes out of the rules of %s). To comply: keep %s=%s, or create a new namespace with the new classification and move the workloads",
				RuleClassified, name, label, was, v, was, label, was)}}, nil
		}
	}
	return nil, nil
}

// Classified checks a Pod or PersistentVolumeClaim in a namespace of
// classification class (the webhook's /validate/<class> path, which the
// ValidatingWebhookConfiguration selects by the namespace's label).
func (r *Rules) Classified(class string, req *Request) ([]Violation, error) {
	rules, ok := r.cfg.Classifications[class]
	if !ok {
		return nil, fmt.Errorf("classification %q (from the webhook path) is not in the rules file: the ValidatingWebhookConfiguration and the rules file disagree", class)
	}
	if req.Operation != "CREATE" {
		return nil, nil
	}
	var out []Violation
	switch req.Kind.Kind {
	case "Pod":
		var pod podObject
		if err := json.Unmarshal(req.Object, &pod); err != nil {
			return nil, fmt.Errorf("pod object: %w", err)
		}
		ns := firstNonEmpty(req.Namespace, pod.Metadata.Namespace)
		what := fmt.Sprintf("pod %q in namespace %q (classification %s)", firstNonEmpty(pod.Metadata.Name, req.Name, "(generated name)"), ns, class)
		if slices.Contains(rules, RuleIdentity) {
			sa := firstNonEmpty(pod.Spec.ServiceAccountName, "default")
			if !r.hasIdentity(ns, sa) {
				listed := r.serviceAccounts(ns)
				how := "add an identities entry for it to the webhook's rules (namespace, service_account, spiffe_id) and a ward entry for that SPIFFE ID"
				if len(listed) > 0 {
					how = fmt.Sprintf("run it as one of the service accounts with a ward identity here (%s), or %s", strings.Join(listed, ", "), how)
				}
				out = append(out, Violation{RuleIdentity, fmt.Sprintf(
					"rule %s: %s runs as service account %q, which maps to no ward identity. To comply: %s",
					RuleIdentity, what, sa, how)})
			}
		}
		if slices.Contains(rules, RuleProxy) {
			if v := pod.Metadata.Annotations[r.cfg.ProxyAnnotation]; v == "disabled" {
				out = append(out, Violation{RuleProxy, fmt.Sprintf(
					"rule %s: %s opts out of ward's proxy (annotation %s=%s). To comply: remove the annotation; its traffic must go through the proxy",
					RuleProxy, what, r.cfg.ProxyAnnotation, v)})
			}
		}
	case "PersistentVolumeClaim":
		if !slices.Contains(rules, RuleEncryptedStorage) {
			return nil, nil
		}
		var pvc pvcObject
		if err := json.Unmarshal(req.Object, &pvc); err != nil {
			return nil, fmt.Errorf("persistentvolumeclaim object: %w", err)
		}
		ns := firstNonEmpty(req.Namespace, pvc.Metadata.Namespace)
		what := fmt.Sprintf("persistentvolumeclaim %q in namespace %q (classification %s)", firstNonEmpty(pvc.Metadata.Name, req.Name), ns, class)
		classes := strings.Join(r.cfg.EncryptedStorageClasses, ", ")
		if classes == "" {
			classes = "(none is declared: add one to encrypted_storage_classes)"
		}
		switch {
		case pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName == "":
			out = append(out, Violation{RuleEncryptedStorage, fmt.Sprintf(
				"rule %s: %s names no StorageClass (the cluster default is not declared encrypted). To comply: set spec.storageClassName to an encrypted class: %s",
				RuleEncryptedStorage, what, classes)})
		case !slices.Contains(r.cfg.EncryptedStorageClasses, *pvc.Spec.StorageClassName):
			out = append(out, Violation{RuleEncryptedStorage, fmt.Sprintf(
				"rule %s: %s uses StorageClass %q, which is not declared encrypted. To comply: set spec.storageClassName to an encrypted class: %s",
				RuleEncryptedStorage, what, *pvc.Spec.StorageClassName, classes)})
		}
	}
	return out, nil
}

func (r *Rules) hasIdentity(ns, sa string) bool {
	for _, id := range r.cfg.Identities {
		if id.Namespace == ns && id.ServiceAccount == sa {
			return true
		}
	}
	return false
}

func (r *Rules) serviceAccounts(ns string) []string {
	var out []string
	for _, id := range r.cfg.Identities {
		if id.Namespace == ns {
			out = append(out, id.ServiceAccount)
		}
	}
	return out
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
