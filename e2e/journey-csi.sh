# shellcheck shell=bash
# journey-csi: steps of the PersistentVolumeClaim journey for the real node, sourced after
# e2e/journey.sh: an application pod that has only the CacheCluster's claim (no hostPath, no
# privilege) reads through the CSI plugin's bind mount, and keeps reading with fio while the FUSE
# pod is deleted or its process killed (the CSI plugin's keeper holds the /dev/fuse connection).
#
#   . e2e/journey.sh; . e2e/journey-csi.sh
#   journey_fio_files "$dataset/fio"                  # fio-written files with verify headers
#   journey_pvc_pod "$app" fio ipoib "$(e2e/node/app-image.sh)"
#   journey_fio "$app" fio 60 >"$out" & ...           # JSON; errors and verify failures in it
#   journey_fio_ok "$out"                              # 0 errors, bytes read by both jobs
#
# Needs KUBECONFIG, kubectl, jq, fio on the host.

# journey_csinode_has <node> <driver>: the kubelet registered the driver (CSINode).
journey_csinode_has() {
  kubectl get csinode "$1" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null | tr ' ' '\n' | grep -qx "$2"
}

# journey_pvc_bound <namespace> <claim>
journey_pvc_bound() {
  [ "$(kubectl -n "$1" get pvc "$2" -o jsonpath='{.status.phase}' 2>/dev/null)" = Bound ]
}

# journey_fio_files <dir>: seq.dat (256 MiB in 1 MiB blocks) and rand.dat (64 MiB in 4 KiB
# blocks), written by fio with crc32c verify headers in every block, so fio reading them through
# the cache checks every block it reads. World-readable.
journey_fio_files() {
  mkdir -p "$1"
  fio --output=/dev/null --verify=crc32c --do_verify=0 --rw=write \
    --name=seq --filename="$1/seq.dat" --bs=1M --size=256M \
    --name=rand --filename="$1/rand.dat" --bs=4k --size=64M
  journey_world_readable "$1"
}

# journey_pvc_pod <namespace> <pod> <claim> <image>: an application pod on the real node whose
# only volume is the claim; non-root, no capabilities, RuntimeDefault seccomp ("restricted").
journey_pvc_pod() {
  kubectl -n "$1" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $2, labels: {app: rcache-pvc-reader}}
spec:
  nodeSelector: {$JOURNEY_NODE_LABEL: $JOURNEY_NODE_VALUE}
  tolerations: [$(journey_real_node_toleration)]
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: app
      image: $4
      imagePullPolicy: IfNotPresent
      command: [sleep, infinity]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: dataset, mountPath: /data, readOnly: true}]
  volumes:
    - name: dataset
      persistentVolumeClaim: {claimName: $3, readOnly: true}
YAML
  kubectl -n "$1" wait --for=condition=Ready --timeout=120s "pod/$2" >/dev/null
}

# journey_fio <namespace> <pod> <seconds>: fio in the pod over /data/fio for <seconds>: 1 MiB
# sequential and 4 KiB random reads with O_DIRECT (every read reaches the FUSE client), each
# block checked against its crc32c header; prints fio's JSON.
journey_fio() {
  kubectl -n "$1" exec "$2" -- fio --output-format=json --readonly --direct=1 --time_based \
    --runtime="$3" --verify=crc32c --verify_fatal=1 \
    --name=seq --filename=/data/fio/seq.dat --rw=read --bs=1M --size=256M \
    --name=rand --filename=/data/fio/rand.dat --rw=randread --bs=4k --size=64M
}

# journey_fio_ok <fio json file>: both jobs ran without an error (a failed read or a verify
# mismatch is an error) and read something; prints what they did.
journey_fio_ok() {
  jq -r '.jobs[] | "\(.jobname): error \(.error), \(.read.io_bytes / 1048576 | floor) MiB in \(.read.total_ios) reads, \(.read.bw_bytes / 1048576 * 10 | floor / 10) MiB/s, longest read \(.read.clat_ns.max / 1e6 | floor) ms"' "$1" 2>/dev/null || {
    echo "no fio JSON:"; head -c 2000 "$1"; return 1
  }
  # -s: an empty or non-JSON output (fio never ran) is a failure, not "no output, exit 0".
  jq -se 'length == 1 and ([.[0].jobs[] | select(.error == 0 and .read.io_bytes > 0)] | length == 2)' "$1" >/dev/null
}

# journey_fuse_pod <namespace> <cluster> [not <pod>]: the name of the cluster's Running FUSE
# pod (other than <pod>).
journey_fuse_pod() {
  kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2,app.kubernetes.io/component=fuse" \
    -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' |
    grep -vx "${3:-}" | head -n1
}
