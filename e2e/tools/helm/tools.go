//go:build tools

// Package tools pins the commands e2e/tools/build.sh builds.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
