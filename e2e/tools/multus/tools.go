//go:build tools

// Package tools pins the Multus thin plugin e2e/tools/build.sh builds for the real node.
package tools

import (
	_ "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus"
)
