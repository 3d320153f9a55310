// rcache-standin-device-plugin: a STAND-IN for the RDMA device plugins of a GPU/IB node (the RDMA
// shared device plugin's rdma/hca_shared_devices_a, SR-IOV's nvidia.com/<pool>). The machines
// rcache is developed on have no RDMA hardware, so this plugin advertises devices that do not
// exist, through the real kubelet device-plugin API (v1beta1): it registers each resource with
// the kubelet, lists N healthy devices, and answers Allocate with an environment variable naming
// the device IDs (a real plugin mounts /dev/infiniband/uverbsN and rdma_cm there). Pods that
// request the resource are scheduled and admitted by the kubelet exactly as on a fabric node.
//
// Usage: rcache-standin-device-plugin [--dir /var/lib/kubelet/device-plugins] name=count ...
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	resource string
	count    int
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, s pluginapi.DevicePlugin_ListAndWatchServer) error {
	devs := make([]*pluginapi.Device, p.count)
	for i := range devs {
		devs[i] = &pluginapi.Device{ID: fmt.Sprintf("standin-%d", i), Health: pluginapi.Healthy}
	}
	if err := s.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (p *plugin) Allocate(_ context.Context, r *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range r.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"RCACHE_STANDIN_RDMA_DEVICES": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// serve starts the plugin's gRPC server on its socket and registers it with the kubelet.
func serve(dir string, p *plugin) (*grpc.Server, string, error) {
	name := "rcache-standin-" + strings.NewReplacer("/", "-", ".", "-").Replace(p.resource) + ".sock"
	sock := filepath.Join(dir, name)
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return nil, "", fmt.Errorf("listen on %s: %w", sock, err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(l) }()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		return nil, "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: name, ResourceName: p.resource,
	})
	if err != nil {
		srv.Stop()
		return nil, "", fmt.Errorf("register %s with the kubelet: %w", p.resource, err)
	}
	log.Printf("registered %s (%d stand-in devices) on %s", p.resource, p.count, sock)
	return srv, sock, nil
}

func main() {
	dir := flag.String("dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory")
	flag.Parse()
	var plugins []*plugin
	for _, a := range flag.Args() {
		name, n, ok := strings.Cut(a, "=")
		count, err := strconv.Atoi(n)
		if !ok || err != nil || count < 1 || !strings.Contains(name, "/") {
			log.Fatalf("bad argument %q: want <vendor-domain/resource>=<count>, e.g. rdma/hca_shared_devices_a=10", a)
		}
		plugins = append(plugins, &plugin{resource: name, count: count})
	}
	if len(plugins) == 0 {
		log.Fatal("no resources given: rcache-standin-device-plugin rdma/hca_shared_devices_a=10 ...")
	}
	servers := make([]*grpc.Server, len(plugins))
	socks := make([]string, len(plugins))
	// The kubelet removes plugin sockets when it restarts: re-serve and re-register then.
	for {
		for i, p := range plugins {
			if servers[i] != nil {
				if _, err := os.Stat(socks[i]); err == nil {
					continue
				}
				log.Printf("%s: socket gone (kubelet restarted?), registering again", p.resource)
				servers[i].Stop()
				servers[i] = nil
			}
			srv, sock, err := serve(*dir, p)
			if err != nil {
				log.Printf("%s: %v (retrying)", p.resource, err)
				continue
			}
			servers[i], socks[i] = srv, sock
		}
		time.Sleep(2 * time.Second)
	}
}
