// Command check reads rendered Kubernetes resources (kubectl kustomize output) on stdin and decodes
// each one of a kind it knows into its Go type, refusing unknown fields, as the API server would
// (Deployment, ConfigMap, Namespace, and prometheus-operator's PodMonitor and PrometheusRule).
// It prints one line per resource: "ok KIND NAME", "FAIL KIND NAME: reason" or "skip KIND NAME"
// (a kind it has no type for, such as Strimzi's), and exits 1 if any failed.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func typed(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "monitoring.coreos.com/v1/PodMonitor":
		return &monitoringv1.PodMonitor{}
	case "monitoring.coreos.com/v1/PrometheusRule":
		return &monitoringv1.PrometheusRule{}
	}
	return nil
}

func main() {
	data, err := io.ReadAll(bufio.NewReader(os.Stdin))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	failed := false
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		if len(strings.TrimSpace(string(doc))) == 0 {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			fmt.Printf("FAIL ? ?: not YAML: %v\n", err)
			failed = true
			continue
		}
		obj := typed(head.APIVersion, head.Kind)
		if obj == nil {
			fmt.Printf("skip %s %s\n", head.Kind, head.Metadata.Name)
			continue
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			fmt.Printf("FAIL %s %s: %v\n", head.Kind, head.Metadata.Name, err)
			failed = true
			continue
		}
		fmt.Printf("ok %s %s\n", head.Kind, head.Metadata.Name)
	}
	if failed {
		os.Exit(1)
	}
}
