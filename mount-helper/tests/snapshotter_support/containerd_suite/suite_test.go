// containerd's own snapshotter test suite (snapshots/testsuite, from Debian's
// golang-github-containerd-containerd-dev) run against stratafs-snapshotter through
// containerd's proxy client (snapshots/proxy), the client containerd itself uses for a
// proxy plugin. Each of the suite's tests gets a new snapshotter on its own root.
//
// Built and run by mount-helper/tests/snapshotter_containerd.rs
// (containerds_own_snapshotter_suite_passes_through_the_proxy_client), in GOPATH mode
// against Debian's Go sources: nothing is downloaded.
//
// STRATAFS_SNAPSHOTTER names the snapshotter binary; the stratafs daemon must be on PATH
// (the suite mounts through mount.fuse3).
package suite

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func newSnapshotter(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
	bin := os.Getenv("STRATAFS_SNAPSHOTTER")
	sock := filepath.Join(root, "grpc.sock")
	cmd := exec.Command(bin, "--root", filepath.Join(root, "snapshotter"), "--address", sock, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			return fmt.Errorf("the snapshotter did not stop on SIGTERM")
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, nil, fmt.Errorf("the snapshotter did not come up on %s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.Dial("unix://"+sock, grpc.WithInsecure())
	if err != nil {
		stop()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "stratafs")
	return sn, func() error {
		conn.Close()
		return stop()
	}, nil
}

func TestStratafsSnapshotter(t *testing.T) {
	testsuite.SnapshotterSuite(t, "stratafs", newSnapshotter)
}
