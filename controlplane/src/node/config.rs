//! The node's configuration files: the CNI network, containerd's and the kubelet's.

use std::path::Path;

use super::{BRIDGE, NODE_ADDRESS, PAUSE_IMAGE, POD_SUBNET, RUN_DIR};

pub(super) fn cni_config() -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "tether-node",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_SUBNET}", "gateway": "{NODE_ADDRESS}"}}]],
        "dataDir": "{RUN_DIR}/ipam"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {{"type": "loopback"}}
  ]
}}
"#
    )
}

pub(super) fn containerd_config_toml() -> String {
    format!(
        r#"version = 2
root = "{RUN_DIR}/root"
state = "{RUN_DIR}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{RUN_DIR}/containerd.sock"
[ttrpc]
  address = "{RUN_DIR}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{RUN_DIR}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#
    )
}

pub(super) fn kubelet_config_yaml(socket: &Path, dir: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{socket}
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
address: {NODE_ADDRESS}
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
tlsCertFile: ""
enforceNodeAllocatable: []
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podCIDR: {POD_SUBNET}
resolvConf: /etc/resolv.conf
staticPodPath: ""
registerNode: true
maxPods: 50
serializeImagePulls: false
cgroupRoot: /
localStorageCapacityIsolation: false
logging:
  format: text
certDirectory: {cert}
"#,
        socket = socket.display(),
        cert = dir.join("kubelet-pki").display(),
    )
}
